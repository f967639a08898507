"""The team stack without Docker, as ``make stack`` starts it, running the nightly deployment.

``deploy/stack/stack.py up`` (what ``make stack`` runs) starts PostgreSQL, a Prefect server and an
MLflow tracking server on it, deploys deploy/prefect.yaml and starts a process worker, on free
127.0.0.1 ports with every file in a temporary folder. Then:

1. every service listens on 127.0.0.1 alone, the deployments are registered on the ``cvflow``
   pool with the nightly cron schedule, and the worker is online;
2. the ``nightly`` deployment runs twice the way its schedule runs it: its parameters are edited
   on the server (tiny data, short training), then a Scheduled flow run of the deployment is
   created through the API with no parameters of its own (the scheduler's run takes the
   deployment's), and the worker picks it up. The first model becomes champion; the second, trained
   with a learning rate so small that it stays at its initial weights, is worse and is not promoted.
   MLflow's REST API shows both runs with their metrics, plots, decision and logged model, the
   artifacts in the server's artifact folder, and the aliases; PostgreSQL's own tables hold the
   flow runs and the aliases (no SQLite anywhere);
3. ``stack.py down`` (``make stack-down``) stops every process, and the ports close.

The stack is stopped whatever happens (the fixture's finalizer) and its folder deleted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image
from server_procs import LOOPBACK, MlflowRest, clean_env, deployment, flow_run_logs, free_port, log_tail

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "deploy" / "stack" / "stack.py")]
SERVICES = ("postgres", "prefect-server", "mlflow", "worker")
REGISTERED = "it-stack-cls"
FINISHED = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Stack:
    """The running stack: its folder, the environment its commands ran with, and its addresses."""

    root: Path
    env: dict[str, str]
    postgres_port: int
    prefect_url: str
    mlflow_url: str

    @property
    def api(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def folder(self) -> Path:
        return Path(self.env["CVFLOW_STACK_DIR"])

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        # --env-file: no settings from a developer's deploy/.env; the environment has them all.
        return subprocess.run(
            [*STACK, command, "--env-file", os.devnull],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self, service: str, lines: int = 40) -> str:
        return f"--- {service} log:\n{log_tail(self.folder / 'logs' / f'{service}.log', lines)}"

    def database(self, name: str):
        import psycopg

        password = (self.folder / "postgres.password").read_text().strip()
        return psycopg.connect(
            host=LOOPBACK, port=self.postgres_port, user="cvflow", password=password, dbname=name, connect_timeout=10
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not under pytest's basetemp: that is private to root (0700), and PostgreSQL runs as the
    # postgres user, which must be able to enter the folders above its data.
    root = Path(tempfile.mkdtemp(prefix="cvflow-stack-"))
    root.chmod(0o755)
    ports = {name: free_port() for name in ("POSTGRES_PORT", "PREFECT_PORT", "MLFLOW_PORT")}
    env = clean_env(
        CVFLOW_STACK_DIR=str(root / "stack"),
        CVFLOW_HOME=str(root / "home"),
        POSTGRES_PASSWORD=secrets.token_urlsafe(16),
        MLFLOW_WORKERS="1",  # two cores
        PREFECT_WORKER_QUERY_SECONDS="2",  # pick a run up within 2 s (default 10)
        # The test creates the nightly's runs as the scheduler does; the scheduler itself would add
        # one at the next 02:00 UTC with the file's parameters, which a test then could meet.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        **{name: str(port) for name, port in ports.items()},
    )
    stack = Stack(
        root=root, env=env, postgres_port=ports["POSTGRES_PORT"], prefect_url=f"http://{LOOPBACK}:{ports['PREFECT_PORT']}",
        mlflow_url=f"http://{LOOPBACK}:{ports['MLFLOW_PORT']}",
    )  # fmt: skip
    try:
        up = stack.run("up", timeout=420)
        assert up.returncode == 0, f"stack.py up failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-5000:]}"
        yield stack
    finally:
        try:
            stack.run("down", timeout=180)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """An ImageFolder source (``<split>/<class>/<image>.png``, 32 px) whose class is the dominant
    colour: red, green or blue on a noisy grey. 16 / 4 / 12 images per class in train / val / test:
    a dozen steps of ResNet-18 learn it (test macro-F1 1.0), so a trained model is clearly better
    than an untrained one (0.17: one class for every image)."""
    folder = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 4), ("test", 12)):
        for channel, colour in enumerate(("red", "green", "blue")):
            (folder / split / colour).mkdir(parents=True)
            for i in range(count):
                pixels = rng.uniform(20, 100, size=(32, 32, 3))
                pixels[..., channel] += rng.uniform(80, 150)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / split / colour / f"{i:03d}.png")
    return folder


def _listening(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _pids(stack: Stack) -> dict[str, int]:
    return {s: int((stack.folder / "run" / f"{s}.pid").read_text().split()[0]) for s in SERVICES}


def test_make_stack_serves_everything_on_loopback_with_the_deployments_and_a_worker(stack: Stack):
    status = stack.run("status", timeout=60)
    assert status.returncode == 0, status.stderr
    for port in (
        stack.postgres_port,
        int(stack.prefect_url.rsplit(":", 1)[1]),
        int(stack.mlflow_url.rsplit(":", 1)[1]),
    ):
        assert _listening(port) == {LOOPBACK}, (port, _listening(port))
    for name in (
        "nightly-retrain/nightly",
        "train-pipeline/train",
        "evaluate-pipeline/evaluate",
        "compare-pipeline/compare",
    ):
        assert deployment(stack.api, name)["work_pool_name"] == "cvflow", name
    [schedule] = deployment(stack.api, "nightly-retrain/nightly")["schedules"]
    assert (schedule["schedule"]["cron"], schedule["active"]) == ("0 2 * * *", True)
    limit = httpx.get(f"{stack.api}/concurrency_limits/tag/gpu", timeout=10)
    assert limit.status_code == 200 and limit.json()["concurrency_limit"] == 1, limit.text
    workers = httpx.post(f"{stack.api}/work_pools/cvflow/workers/filter", json={}, timeout=10).json()
    assert [w["status"] for w in workers] == ["ONLINE"], workers
    # The MLflow server's backend store is the PostgreSQL database (its schema is there).
    with stack.database("mlflow") as db:
        assert db.execute("SELECT name FROM experiments WHERE experiment_id = 0").fetchone() == ("Default",)


def _nightly(stack: Stack, params: dict[str, Any]) -> str:
    """Set the nightly deployment's parameters, then start a run of it as its schedule does: a
    Scheduled run of the deployment with no parameters of its own, which the worker picks up.
    Returns the flow run id once the run has finished Completed."""
    nightly = deployment(stack.api, "nightly-retrain/nightly")
    edited = httpx.patch(
        f"{stack.api}/deployments/{nightly['id']}", json={"parameters": {"params": params}}, timeout=30
    )
    assert edited.status_code == 204, edited.text
    now = datetime.now(timezone.utc)
    body = {
        "state": {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now.isoformat()}},
        "idempotency_key": f"scheduled {nightly['id']} {now.isoformat()}",
    }
    created = httpx.post(f"{stack.api}/deployments/{nightly['id']}/create_flow_run", json=body, timeout=30)
    assert created.status_code == 201, created.text
    flow_run = created.json()
    assert flow_run["parameters"] == {"params": params}  # the deployment's, as the scheduler's runs take them
    deadline = time.monotonic() + 240
    while (state := httpx.get(f"{stack.api}/flow_runs/{flow_run['id']}", timeout=10).json()["state"])[
        "type"
    ] not in FINISHED:
        assert time.monotonic() < deadline, (
            f"nightly run {flow_run['id']} still {state['type']} after 240 s\n{stack.logs('worker')}"
        )
        time.sleep(1)
    assert state["type"] == "COMPLETED", (
        f"nightly run {flow_run['id']} ended {state['type']}: {state.get('message')}\n--- flow run logs:\n"
        f"{flow_run_logs(stack.api, flow_run['id'])}\n{stack.logs('worker', 60)}"
    )
    return flow_run["id"]


def _mlflow_run(stack: Stack, mlflow: MlflowRest, nightly_run_id: str) -> dict[str, Any]:
    """The one MLflow run of a nightly run: its ``train-pipeline`` sub-flow's (tagged with that flow run id)."""
    children = {"flow_runs": {"parent_flow_run_id": {"any_": [nightly_run_id]}}}
    [train] = httpx.post(f"{stack.api}/flow_runs/filter", json=children, timeout=10).json()
    experiment = mlflow.get("experiments/get-by-name", experiment_name="cvflow")["experiment"]
    found = mlflow.post(
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": f"tags.`cvflow.flow_run_id` = '{train['id']}'"},
    )
    [run] = found["runs"]
    return run


def test_the_nightly_deployment_promotes_a_first_model_and_keeps_it_over_a_worse_one(stack: Stack, colour_folder: Path):
    def params(epochs: int, lr: float) -> dict[str, Any]:
        config = {"model": {"name": "resnet18"}, "train": {"epochs": epochs, "batch_size": 8, "lr": lr}}
        data = {"path": str(colour_folder), "format": "imagefolder", "name": "colours"}  # ingested by the run
        train = {
            "data": data,
            "registered_model": REGISTERED,
            "config": config,
            "eval_splits": ["test"],
            "preview_images": 0,
        }
        return {"train": train, "compare_split": "test", "bootstrap_samples": 200}

    first = _nightly(stack, params(epochs=2, lr=2e-3))
    second = _nightly(stack, params(epochs=1, lr=1e-9))  # its weights stay where they started: worse

    mlflow = MlflowRest(stack.mlflow_url)
    runs = {"first": _mlflow_run(stack, mlflow, first), "second": _mlflow_run(stack, mlflow, second)}
    for (which, run), epochs in zip(runs.items(), ("2", "1")):
        run_id, data = run["info"]["run_id"], run["data"]
        assert run["info"]["status"] == "FINISHED", which
        logged = {p["key"]: p["value"] for p in data["params"]}
        assert (logged["model.name"], logged["train.epochs"], logged["train.batch_size"]) == (
            "resnet18",
            epochs,
            "8",
        ), which
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        assert 0.0 <= metrics["final/test/macro_f1"] <= 1.0, (which, metrics)
        history = mlflow.get("metrics/get-history", run_id=run_id, metric_key="val/accuracy")["metrics"]
        assert len(history) == int(epochs), (which, history)  # one point per epoch
        assert {"plots", "config.json", "training", "eval", "nightly"} <= mlflow.artifact_paths(run_id), which
        assert "nightly/decision.json" in mlflow.artifact_paths(run_id, "nightly"), which
        pngs = sorted(p for p in mlflow.artifact_paths(run_id, "plots/test") if p.endswith(".png"))
        assert pngs and list((stack.folder / "mlartifacts").rglob(Path(pngs[0]).name)), (
            which,
            pngs,
        )  # the server's artifact store

    tags = {which: {t["key"]: t["value"] for t in run["data"]["tags"]} for which, run in runs.items()}
    assert tags["first"]["cvflow.nightly.decision"] == "promoted", tags["first"]
    assert tags["first"]["cvflow.nightly.reason"].startswith(f"first model of {REGISTERED}")
    assert tags["second"]["cvflow.nightly.decision"] == "kept champion", tags["second"]
    scores = {which: {m["key"]: m["value"] for m in run["data"]["metrics"]} for which, run in runs.items()}
    # Measured: 1.0 for the trained model, 0.167 (one class for every image) for the untrained one.
    assert scores["first"]["final/test/macro_f1"] >= 0.8 > scores["second"]["final/test/macro_f1"], scores
    nightly = {k: v for k, v in scores["second"].items() if k.startswith("nightly/")}
    assert nightly["nightly/difference"] < 0.0 and nightly["nightly/ci_high"] < 0.0, (
        nightly,
        tags["second"]["cvflow.nightly.reason"],
    )
    assert "below zero, so the challenger is not better with confidence" in tags["second"]["cvflow.nightly.reason"]

    registered = mlflow.get("registered-models/get", name=REGISTERED)["registered_model"]
    assert {a["alias"]: a["version"] for a in registered["aliases"]} == {"champion": "1", "challenger": "2"}
    champion = mlflow.get("registered-models/alias", name=REGISTERED, alias="champion")["model_version"]
    assert champion["run_id"] == runs["first"]["info"]["run_id"] and champion["source"].startswith("models:/m-"), (
        champion
    )
    version2 = mlflow.get("model-versions/get", name=REGISTERED, version="2")["model_version"]
    assert version2["run_id"] == runs["second"]["info"]["run_id"]
    assert {t["key"]: t["value"] for t in version2["tags"]}["nightly.decision"] == "kept champion"

    # All of it is in PostgreSQL: Prefect's flow runs and MLflow's aliases, in their own databases.
    nightly_id = deployment(stack.api, "nightly-retrain/nightly")["id"]
    with stack.database("prefect") as db:
        states = db.execute(
            "SELECT id::text, state_type FROM flow_run WHERE deployment_id = %s", (nightly_id,)
        ).fetchall()
    assert {(first, "COMPLETED"), (second, "COMPLETED")} <= {(i, str(s).rsplit(".", 1)[-1]) for i, s in states}, states
    with stack.database("mlflow") as db:
        aliases = db.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (REGISTERED,)
        ).fetchall()
    assert sorted(aliases) == [("challenger", 2), ("champion", 1)]


def test_make_stack_down_stops_every_process_and_closes_the_ports(stack: Stack):
    pids = _pids(stack)
    done = stack.run("down", timeout=180)
    assert done.returncode == 0, done.stderr
    assert not [
        s for s, pid in pids.items() if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ], pids
    for port in (
        stack.postgres_port,
        int(stack.prefect_url.rsplit(":", 1)[1]),
        int(stack.mlflow_url.rsplit(":", 1)[1]),
    ):
        assert not _listening(port), port
    assert stack.run("status", timeout=60).returncode == 1  # all stopped


def _stack_module():
    spec = importlib.util.spec_from_file_location("cvflow_stack", ROOT / "deploy" / "stack" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_native_stack_and_the_compose_file_share_names_ports_and_settings(tmp_path):
    """Same user, databases, default ports and work pool as deploy/docker-compose.yml, and the
    settings read from compose's deploy/.env under the environment's."""
    stack_py = _stack_module()
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    postgres = compose["postgres"]["environment"]
    init_sql = (ROOT / "deploy" / "postgres" / "init-databases.sql").read_text()
    assert postgres["POSTGRES_USER"] == stack_py.USER
    assert {postgres["POSTGRES_DB"], *re.findall(r"CREATE DATABASE (\w+)", init_sql, flags=re.IGNORECASE)} == set(
        stack_py.DATABASES
    )
    assert (
        stack_py.DATABASES[0] == postgres["POSTGRES_DB"]
    )  # the one stack.py creates itself, before the shared SQL file
    assert f"--pool {stack_py.POOL} " in compose["worker"]["command"] + " "
    defaults = stack_py.Settings.load(env={}, env_file=None)
    assert "${PREFECT_PORT:-%d}:4200" % defaults.prefect_port in " ".join(compose["prefect-server"]["ports"])
    assert "${MLFLOW_PORT:-%d}:5000" % defaults.mlflow_port in " ".join(compose["mlflow"]["ports"])
    assert "${GPU_SLOTS:-%d}" % defaults.gpu_slots in " ".join(compose["deploy"]["command"])
    assert defaults.root == (Path.cwd() / ".cvflow" / "stack").resolve() and defaults.password is None

    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=from-file\nPREFECT_PORT=4300\nMLFLOW_PORT=5100\n")
    settings = stack_py.Settings.load(
        env={"MLFLOW_PORT": "5200", "CVFLOW_STACK_DIR": str(tmp_path / "s")}, env_file=env_file
    )
    assert (settings.password, settings.prefect_port, settings.mlflow_port, settings.root) == (
        "from-file",
        4300,
        5200,
        tmp_path / "s",
    )
    with pytest.raises(stack_py.StackError, match="PREFECT_PORT='x' is not a whole number"):
        stack_py.Settings.load(env={"PREFECT_PORT": "x"}, env_file=None)
