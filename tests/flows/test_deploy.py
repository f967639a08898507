"""deploy/: the Prefect deployments are valid for the flows they name; every port is local only."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def test_prefect_yaml_deployments_name_real_flows_with_valid_parameters():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import Flow

    raw = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    project = PrefectYamlModel.model_validate(raw)
    names = {d.name for d in project.deployments}
    assert {"nightly", "train", "evaluate"} <= names
    for deployment in project.deployments:
        flow = _flow(deployment.entrypoint)
        assert isinstance(flow, Flow), deployment.entrypoint
        flow.validate_parameters(deployment.parameters)  # raises on parameters the flow would refuse
        assert deployment.work_pool.name == "cvflow"
    [nightly] = [d for d in project.deployments if d.name == "nightly"]
    assert nightly.entrypoint == "flows/nightly.py:nightly_retrain"
    [schedule] = nightly.schedules
    CronSchedule(cron=schedule.cron, timezone=schedule.timezone)  # a valid cron in a known time zone
    assert schedule.cron == "0 2 * * *"


def test_serve_builds_the_nightly_schedule_and_on_demand_deployments(tmp_path):
    sys.path.insert(0, str(DEPLOY))
    try:
        serve = importlib.import_module("serve")
    finally:
        sys.path.remove(str(DEPLOY))
    deployments = serve.deployments(
        data=tmp_path / "shapes", fmt="snapshot", model="yolov1", registered_model="shapes-detector", cron="30 3 * * *", timezone="Europe/Paris", epochs=5
    )
    by_name = {d.name: d for d in deployments}
    assert set(by_name) == {"nightly", "train", "evaluate"}
    [schedule] = by_name["nightly"].schedules
    assert schedule.schedule.cron == "30 3 * * *" and schedule.schedule.timezone == "Europe/Paris"
    params = by_name["nightly"].parameters["params"]
    assert params["train"]["config"]["train"]["epochs"] == 5 and params["train"]["registered_model"] == "shapes-detector"
    assert by_name["evaluate"].parameters["params"]["model"] == "models:/shapes-detector@champion"


def test_compose_binds_every_port_to_localhost():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    ports = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports
    assert {"prefect-server", "mlflow", "worker"} <= set(compose["services"])
    build = compose["services"]["deploy"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()

