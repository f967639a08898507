"""cvflow against real servers on loopback: a Prefect server (SQLite) and an MLflow tracking server.

1. ``deploy/serve.py`` serves the flows; a run of ``train-pipeline/train`` is started through the
   API the dashboard's Run button uses (``POST /deployments/{id}/create_flow_run``, via
   ``run_deployment``) with the form's defaults plus a few edits, runs in the serve process and
   finishes Completed; the MLflow server's REST API (what its UI reads) then shows the run's
   params, per-epoch and final metrics, plot artifacts stored under the server's
   ``--artifacts-destination``, the logged model, and the registered version behind
   ``@champion``.
2. ``deploy/prefect.yaml`` deploys to the server as the README says (work pool, ``prefect
   deploy --all``), with the nightly cron schedule and the dashboard's parameter defaults.
3. ``cvflow ui --start`` beside the running dashboard starts only the MLflow UI, listening on
   127.0.0.1 alone, and stops cleanly on Ctrl-C.

Tiny data (the session's synthetic 32 px classification set), one epoch of ResNet-18.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from server_procs import BIN, LOOPBACK, MlflowRest, Servers, answers, clean_env, free_port, started, wait_until
from server_procs import deployment as _deployment
from server_procs import flow_run_logs as _flow_run_logs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGISTERED = "it-shapes-cls"


def _merge(base: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``edits`` applied key by key, recursively (what editing a form field does)."""
    out = dict(base)
    for key, value in edits.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_a_dashboard_run_of_the_served_train_pipeline_lands_in_mlflow(
    servers: Servers, shapes_classification, tmp_path
):
    api, snapshot = servers.prefect_api, shapes_classification
    home = tmp_path / "cvflow-home"
    env = clean_env(
        PREFECT_API_URL=api,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_RUNNER_POLL_FREQUENCY="2",  # pick the run up within 2 s (default 10)
        MLFLOW_TRACKING_URI=servers.mlflow.url,
        CVFLOW_HOME=str(home),
    )
    command = [
        sys.executable, "deploy/serve.py", "--data", str(snapshot.path), "--model", "resnet18", "--epochs", "1",
        "--registered-model", REGISTERED, "--timezone", "Europe/Paris",
    ]  # fmt: skip
    with started(
        "deploy/serve.py", command, url=servers.prefect.url, log=tmp_path / "serve.log", env=env, cwd=ROOT
    ) as serve:
        # serve registers its deployments (nightly, train, evaluate, ...) in order, then polls for runs.
        wait_until(
            lambda: answers(f"{api}/deployments/name/evaluate-pipeline/evaluate"),
            server=serve,
            timeout=120,
            what="deployments registered",
        )
        nightly = _deployment(api, "nightly-retrain/nightly")
        [schedule] = nightly["schedules"]
        assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"], schedule["active"]) == (
            "0 2 * * *",
            "Europe/Paris",
            True,
        )
        assert nightly["global_concurrency_limit"]["limit"] == 1
        evaluate = _deployment(api, "evaluate-pipeline/evaluate")
        assert evaluate["parameters"]["params"]["model"] == f"models:/{REGISTERED}@champion"

        deployment = _deployment(api, "train-pipeline/train")
        defaults = deployment["parameters"]["params"]
        # Only what serve.py was told: the model's registry defaults (32 px for resnet18) stay in force.
        assert defaults["config"] == {"model": {"name": "resnet18"}, "train": {"epochs": 1}}, defaults
        assert "params" in deployment["parameter_openapi_schema"]["properties"]  # the dashboard's run form
        # The dashboard's "Custom run": the form starts from the deployment's defaults; edit three fields.
        params = _merge(
            defaults, {"config": {"train": {"batch_size": 16}}, "eval_splits": ["val"], "preview_images": 2}
        )
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            flow_run = run_deployment(deployment["id"], parameters={"params": params}, timeout=300, poll_interval=2)
        flow_run_id = str(flow_run.id)
        assert flow_run.state is not None and flow_run.state.is_completed(), (
            f"flow run {flow_run_id} ended {flow_run.state}\n--- flow run logs:\n{_flow_run_logs(api, flow_run_id)}"
            f"\n--- serve log:\n{serve.log_tail(60)}"
        )

    mlflow = MlflowRest(servers.mlflow.url)
    experiment = mlflow.get("experiments/get-by-name", experiment_name="cvflow")["experiment"]
    found = mlflow.post(
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": f"tags.`cvflow.flow_run_id` = '{flow_run_id}'"},
    )
    [run] = found["runs"]  # exactly one MLflow run, linked to the Prefect flow run by tag
    run_id, data = run["info"]["run_id"], run["data"]
    assert run["info"]["status"] == "FINISHED"
    params_logged = {p["key"]: p["value"] for p in data["params"]}
    assert params_logged["model.name"] == "resnet18" and params_logged["train.epochs"] == "1"
    assert (
        params_logged["train.batch_size"] == "16" and params_logged["data.img_size"] == "32"
    )  # edited / registry default
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    for key in ("final/val/accuracy", "final/val/macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))
    history = mlflow.get("metrics/get-history", run_id=run_id, metric_key="val/accuracy")["metrics"]
    assert len(history) == 1  # one epoch, one point on the UI's chart

    top = mlflow.artifact_paths(run_id)
    assert {"plots", "config.json", "training", "eval"} <= top, top
    pngs = sorted(p for p in mlflow.artifact_paths(run_id, "plots/val") if p.endswith(".png"))
    assert pngs, mlflow.artifact_paths(run_id, "plots/val")
    image = httpx.get(
        f"{servers.mlflow.url}/get-artifact", params={"path": pngs[0], "run_uuid": run_id}, timeout=30
    )  # the UI's viewer
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), (image.status_code, image.content[:80])
    # Uploaded through the server's artifact proxy into its --artifacts-destination, not into the
    # client's CVFLOW_HOME (which only a worker on this machine could see).
    assert list(servers.artifacts.rglob(Path(pngs[0]).name)), f"{pngs[0]} not under {servers.artifacts}"
    assert not (home / "mlartifacts").exists() and not (home / "mlflow.db").exists()

    version = mlflow.get("registered-models/alias", name=REGISTERED, alias="champion")["model_version"]
    assert (version["version"], version["run_id"]) == ("1", run_id)  # the first version is champion
    assert {"champion", "challenger"} <= set(version.get("aliases", []))
    registered = mlflow.get("registered-models/get", name=REGISTERED)["registered_model"]
    assert {a["alias"]: a["version"] for a in registered["aliases"]} == {"champion": "1", "challenger": "1"}
    # The version's source is the MLflow 3 logged model (models:/m-<id>), which the UI's model page shows.
    assert version["source"].startswith("models:/m-"), version
    logged = mlflow.get(f"logged-models/{version['source'].removeprefix('models:/')}")["model"]
    info = logged["info"]
    assert (info["source_run_id"], info["name"], info["status"]) == (run_id, "model", "LOGGED_MODEL_READY"), info
    mlmodel = httpx.get(
        f"{mlflow.url}/ajax-api/2.0/mlflow/logged-models/{info['model_id']}/artifacts/files",
        params={"artifact_file_path": "MLmodel"},
        timeout=30,
    )  # the UI's model page reads the MLmodel file (flavor, signature) this way
    assert mlmodel.status_code == 200 and b"python_function" in mlmodel.content and b"signature" in mlmodel.content, (
        mlmodel.text[:300]
    )


def test_prefect_yaml_deploys_to_the_server_as_the_readme_says(servers: Servers, tmp_path):
    api = servers.prefect_api
    env = clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"))
    steps = [
        [str(BIN / "prefect"), "work-pool", "create", "cvflow", "--type", "process"],
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"],
    ]
    for command in steps:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, (
            f"{' '.join(command[1:])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )

    nightly = _deployment(api, "nightly-retrain/nightly")
    assert (
        nightly["work_pool_name"] == "cvflow" and nightly["global_concurrency_limit"]["limit"] == 1
    )  # one nightly at a time
    [schedule] = nightly["schedules"]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"], schedule["active"]) == (
        "0 2 * * *",
        "UTC",
        True,
    )
    # Without a pull step in the file, workers run the code from where `prefect deploy` ran.
    assert nightly["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    for name in ("train-pipeline/train", "evaluate-pipeline/evaluate"):
        deployment = _deployment(api, name)
        assert deployment["work_pool_name"] == "cvflow" and not deployment["schedules"], name
        assert deployment["parameters"]["params"]["data"]["path"], name  # a default the run form shows


def test_cvflow_ui_starts_the_mlflow_ui_on_loopback_beside_a_running_dashboard(servers: Servers, tmp_path):
    """`cvflow ui --start` as a user runs it with the dashboard already up: it starts only the
    MLflow UI (on the embedded store of CVFLOW_HOME), bound to 127.0.0.1, and Ctrl-C stops it."""
    port, prefect_port = free_port(), urlsplit(servers.prefect.url).port
    env = clean_env(CVFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-home"))
    command = [str(BIN / "cvflow"), "ui", "--start", "--mlflow-port", str(port), "--prefect-port", str(prefect_port)]
    with started("cvflow ui --start", command, url=f"http://{LOOPBACK}:{port}", log=tmp_path / "ui.log", env=env) as ui:
        wait_until(lambda: answers(ui.url + "/health"), server=ui, timeout=150, what="the MLflow UI answers")
        experiments = httpx.get(f"{ui.url}/api/2.0/mlflow/experiments/search", params={"max_results": 5}, timeout=30)
        assert experiments.status_code == 200 and experiments.json()["experiments"][0]["name"] == "Default"
        listening = {
            c.laddr.ip
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert listening == {LOOPBACK}, listening
        # cvflow reports the URL after its own health poll (every 0.5 s), which may come after ours.
        ready = f"MLflow UI: http://{LOOPBACK}:{port}"
        wait_until(lambda: ready in ui.log.read_text(), server=ui, timeout=30, what="cvflow ui reports the MLflow UI")
        os.killpg(ui.process.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert ui.process.wait(timeout=60) == 0, ui.log_tail()
    log = ui.log.read_text()
    assert f"Prefect dashboard: {servers.prefect.url} (already running)" in log, log[-2000:]
    assert f"MLflow UI: http://{LOOPBACK}:{port}" in log
    assert answers(servers.prefect.url + "/api/health")  # the dashboard it did not start is still up
