"""Real servers for the integration tests: start a command on a free loopback port, wait until it
answers, stop it (and everything it started) whatever happens.

Each server runs in its own session (process group) with its output in a log file; a server that
does not come up in time, or dies, fails the test with its command and the tail of that log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent  # prefect and mlflow of this environment


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A started process: its name in messages, base URL, the process and its log file."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)

    def describe(self) -> str:
        return f"{self.name} ({shlex.join(map(str, self.process.args))})"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Prefect/MLflow setting (a developer's
    PREFECT_API_URL or MLFLOW_TRACKING_URI must not leak into a test server), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


@dataclass(frozen=True)
class Servers:
    """The module's Prefect and MLflow servers."""

    prefect: Server
    mlflow: Server
    artifacts: Path  # where the MLflow server stores artifacts (--artifacts-destination)

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect.url}/api"


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist yet)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def answers(url: str) -> bool:
    """True when a GET of ``url`` answers 200; False on any other status or connection error."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(ready: Callable[[], bool], *, server: Server, timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll ``ready()`` until it is true; fail with the server's log when it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        code = server.process.poll()
        if code is not None:
            raise RuntimeError(
                f"{server.describe()} exited with code {code} before {what}; log {server.log}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{server.describe()} did not reach '{what}' within {timeout:.0f} s; log {server.log}:\n{server.log_tail()}"
            )
        time.sleep(interval)


@contextlib.contextmanager
def started(
    name: str, command: list[str], *, url: str, log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Iterator[Server]:
    """Run ``command`` (with exactly the environment ``env``) until the block ends.

    Output goes to ``log``. On leaving, normally or not, the process, its process group and every
    descendant still alive are stopped: SIGTERM, then SIGKILL after a grace period. Wait for
    readiness with :func:`wait_until`.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    try:
        yield Server(name=name, url=url, process=process, log=log)
    finally:
        stop(process)


def stop(process: subprocess.Popen, *, grace: float = 15) -> None:
    """Stop ``process``, its process group and all its descendants (some start their own session)."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace)


def deployment(api: str, name: str) -> dict[str, Any]:
    """The Prefect deployment ``<flow>/<deployment>`` as the API returns it (fails when absent)."""
    response = httpx.get(f"{api}/deployments/name/{name}", timeout=10)
    assert response.status_code == 200, f"deployment {name}: {response.status_code} {response.text}"
    return response.json()


def flow_run_logs(api: str, flow_run_id: str) -> str:
    """The first 200 log lines of a Prefect flow run (for failure messages)."""
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    logs = httpx.post(f"{api}/logs/filter", json=body, timeout=10).json()
    return "\n".join(f"{log['level']:>3} {log['message']}" for log in logs)


class MlflowRest:
    """The MLflow tracking server's REST API (``/api/2.0/mlflow/...``), as the MLflow UI reads it."""

    def __init__(self, url: str):
        self.url = url

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
        assert response.status_code == 200, f"GET {endpoint} {params}: {response.status_code} {response.text}"
        return response.json()

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/api/2.0/mlflow/{endpoint}", json=body, timeout=30)
        assert response.status_code == 200, f"POST {endpoint} {body}: {response.status_code} {response.text}"
        return response.json()

    def artifact_paths(self, run_id: str, path: str = "") -> set[str]:
        files = self.get("artifacts/list", run_id=run_id, path=path).get("files", [])
        return {f["path"] for f in files}
