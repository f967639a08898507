"""Fixtures of the integration tests: a real Prefect server and a real MLflow tracking server.

Both run as separate processes on free 127.0.0.1 ports, with every file they keep (Prefect's
SQLite database under PREFECT_HOME, MLflow's SQLite store and artifact folder) in a temporary
folder. They start together (start-up is mostly imports) and are stopped at the end of the
module whatever happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from server_procs import BIN, LOOPBACK, Servers, answers, clean_env, free_port, started, wait_until


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    artifacts = root / "mlartifacts"
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(prefect_port)]
    mlflow_cmd = [
        str(BIN / "mlflow"), "server", "--host", LOOPBACK, "--port", str(mlflow_port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(artifacts), "--serve-artifacts",
    ]  # fmt: skip
    # No MLflow job runner: it serves GenAI jobs cvflow never submits, and starts seven
    # consumer processes that would compete for the CI machine's two cores.
    mlflow_env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with contextlib.ExitStack() as stack:
        prefect = stack.enter_context(
            started("prefect server", prefect_cmd, url=f"http://{LOOPBACK}:{prefect_port}", log=root / "prefect.log",
                    env=clean_env(PREFECT_HOME=str(root / "prefect-home")))
        )  # fmt: skip
        mlflow = stack.enter_context(
            started(
                "mlflow server",
                mlflow_cmd,
                url=f"http://{LOOPBACK}:{mlflow_port}",
                log=root / "mlflow.log",
                env=mlflow_env,
            )
        )
        wait_until(
            lambda: answers(prefect.url + "/api/health"),
            server=prefect,
            timeout=150,
            what="GET /api/health answers 200",
        )
        wait_until(lambda: answers(mlflow.url + "/health"), server=mlflow, timeout=150, what="GET /health answers 200")
        yield Servers(prefect=prefect, mlflow=mlflow, artifacts=artifacts)
