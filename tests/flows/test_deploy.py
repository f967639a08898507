"""deploy/: the Prefect deployments are valid for the flows they name, serve.py builds what the
dashboard shows, and the Docker Compose stack is wired together (Docker cannot run here, so its
structure is what is checked: services, loopback ports, health checks, start order, the URLs,
credentials and names each service uses to reach the others)."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


def test_prefect_yaml_deployments_name_real_flows_with_valid_parameters():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import Flow

    raw = _prefect_yaml()
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
    assert schedule.cron == "0 2 * * *" and schedule.timezone
    assert next(d for d in raw["deployments"] if d["name"] == "nightly")["concurrency_limit"] == 1  # one at a time
    # No hard-coded code location: `prefect deploy` records the folder it runs in.
    assert raw.get("pull") is None


def test_prefect_yaml_train_nightly_and_evaluate_share_one_registered_model():
    by_name = {d["name"]: d["parameters"]["params"] for d in _prefect_yaml()["deployments"]}
    registered = by_name["nightly"]["train"]["registered_model"]
    assert by_name["train"]["registered_model"] == registered
    assert by_name["evaluate"]["model"] == f"models:/{registered}@champion"
    assert by_name["train"]["data"] == by_name["nightly"]["train"]["data"] == by_name["evaluate"]["data"]


def _serve_module():
    sys.path.insert(0, str(DEPLOY))
    try:
        return importlib.import_module("serve")
    finally:
        sys.path.remove(str(DEPLOY))


def test_serve_builds_the_nightly_schedule_and_on_demand_deployments(tmp_path):
    serve = _serve_module()
    deployments = serve.deployments(
        data=tmp_path / "shapes",
        fmt="snapshot",
        model="yolov1",
        registered_model="shapes-detector",
        cron="30 3 * * *",
        timezone="Europe/Paris",
        epochs=5,
    )
    by_name = {d.name: d for d in deployments}
    assert set(by_name) == {"nightly", "train", "evaluate"}
    [schedule] = by_name["nightly"].schedules
    assert schedule.schedule.cron == "30 3 * * *" and schedule.schedule.timezone == "Europe/Paris"
    assert by_name["nightly"].concurrency_limit == 1
    params = by_name["nightly"].parameters["params"]
    assert (
        params["train"]["config"]["train"]["epochs"] == 5 and params["train"]["registered_model"] == "shapes-detector"
    )
    assert by_name["evaluate"].parameters["params"]["model"] == "models:/shapes-detector@champion"
    assert not by_name["train"].schedules and not by_name["evaluate"].schedules
    # Only the chosen settings: every other config field stays unset, so the model's registry
    # defaults (yolov1: 128 px, AdamW 2e-3 ...) apply, not RunConfig's generic ones.
    assert by_name["train"].parameters["params"]["config"] == {"model": {"name": "yolov1"}, "train": {"epochs": 5}}
    flows = {"nightly": serve.nightly_retrain, "train": serve.train_pipeline, "evaluate": serve.evaluate_pipeline}
    for name, deployment in by_name.items():
        flows[name].validate_parameters(deployment.parameters)  # what the run form is validated against


def test_serve_names_the_registered_model_after_the_snapshot(shapes_detection, tmp_path):
    serve = _serve_module()
    assert (
        serve.registered_name(shapes_detection.path, fmt="snapshot", model="yolov1")
        == f"{shapes_detection.name}-yolov1"
    )
    # Not there yet (the nightly run may be the first to find data) or a source to ingest: its name.
    assert serve.registered_name(tmp_path / "later", fmt="snapshot", model="yolov1") == "later-yolov1"
    assert serve.registered_name(tmp_path / "train.json", fmt="coco", model="resnet18") == "train-resnet18"
    [train] = [d for d in serve.deployments(
        data=shapes_detection.path, fmt="snapshot", model="yolov1", registered_model=None, cron="0 2 * * *", timezone="UTC", epochs=None
    ) if d.name == "train"]  # fmt: skip
    assert train.parameters["params"]["registered_model"] == f"{shapes_detection.name}-yolov1"


# --- docker-compose.yml --------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?([-?])([^}]*))?\}|\$(\w+)")
SERVICES = {"postgres", "minio", "create-bucket", "prefect-server", "mlflow", "deploy", "worker"}


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution (``${VAR:-default}``, ``${VAR:?error}``, ``${VAR}``, ``$VAR``, ``$$``) over a tree."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "?":
            raise ValueError(f"{name} is required: {arg}")
        return arg or ""

    return _VARIABLE.sub(sub, value)


def _variables(text: str) -> set[str]:
    return {m.group(1) or m.group(4) for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker compose sees it with only the secrets set: the rest at their defaults."""
    return _interpolate(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()), SECRETS)


SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_PASSWORD": "minio-secret"}


def test_compose_refuses_to_start_without_the_secrets():
    text = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name in SECRETS:
        with pytest.raises(ValueError, match=f"{name} is required"):
            _interpolate(text, {k: v for k, v in SECRETS.items() if k != name})


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else shlex.split(" ".join(command))


def _flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_compose_has_the_small_team_stack(compose):
    assert SERVICES <= set(compose["services"])


def test_compose_binds_every_published_port_to_loopback(compose):
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip = (
                port.get("host_ip") if isinstance(port, dict) else port.split(":")[0] if port.count(":") == 2 else None
            )
            published.append((name, port))
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
    assert {n for n, _ in published} >= {"prefect-server", "mlflow"}
    assert "postgres" not in {n for n, _ in published}  # the database is reached on the compose network only


def test_compose_health_checks_and_start_order(compose):
    services = compose["services"]
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert {"create-bucket", "deploy"} <= one_shot
    for name, service in services.items():
        if name not in one_shot:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )
            else:
                assert condition == "service_completed_successfully" and dependency in one_shot, (
                    name,
                    dependency,
                    condition,
                )
    needs = {name: set(s.get("depends_on", {})) for name, s in services.items()}
    assert needs["mlflow"] >= {"postgres", "create-bucket"} and needs["prefect-server"] >= {"postgres"}
    assert needs["worker"] >= {"prefect-server", "mlflow", "deploy"} and needs["create-bucket"] >= {"minio"}
    order: list[str] = []  # a start order exists (no cycle)
    while len(order) < len(needs):
        ready = sorted(n for n, deps in needs.items() if n not in order and deps <= set(order))
        assert ready, f"depends_on cycle among {set(needs) - set(order)}"
        order += ready


def test_compose_wires_prefect_and_mlflow_to_postgres_and_the_object_store(compose):
    services = compose["services"]
    pg = _env(services["postgres"])
    init = [v.split(":")[0] for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    created = {pg["POSTGRES_DB"]}
    for script in init:
        path = DEPLOY / script
        assert path.is_file(), f"{script} mounted into postgres does not exist"
        created |= set(re.findall(r"CREATE DATABASE (\w+)", path.read_text(), flags=re.IGNORECASE))

    def check_database(url: str, scheme: str) -> str:
        parts = urlsplit(url)
        assert parts.scheme == scheme and parts.hostname == "postgres" and parts.port == 5432, url
        assert (parts.username, parts.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"]), url
        database = parts.path.lstrip("/")
        assert database in created, f"{url}: database {database} is never created (have {created})"
        return database

    prefect_db = check_database(
        _env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"], "postgresql+asyncpg"
    )
    mlflow_args = _command(services["mlflow"])
    mlflow_db = check_database(_flag(mlflow_args, "--backend-store-uri"), "postgresql")
    assert prefect_db != mlflow_db  # both keep an alembic_version table

    minio = _env(services["minio"])
    mlflow_env = _env(services["mlflow"])
    assert urlsplit(mlflow_env["MLFLOW_S3_ENDPOINT_URL"])[:2] == ("http", "minio:9000")
    assert (mlflow_env["AWS_ACCESS_KEY_ID"], mlflow_env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter secrets
    bucket = urlsplit(_flag(mlflow_args, "--artifacts-destination"))
    assert bucket.scheme == "s3" and bucket.netloc
    make_bucket = " ".join(services["create-bucket"]["command"])
    assert "http://minio:9000" in make_bucket and re.search(rf"mc mb\b.*/{bucket.netloc}\b", make_bucket), make_bucket
    assert (
        _env(services["create-bucket"]).items()
        >= {k: minio[k] for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")}.items()
    )
    assert "--serve-artifacts" in mlflow_args  # clients upload through the server; only it holds S3 credentials


def test_compose_points_the_worker_at_the_servers_it_depends_on(compose):
    services = compose["services"]
    prefect_port = _flag(_command(services["prefect-server"]), "--port")
    mlflow_args = _command(services["mlflow"])
    mlflow_port = _flag(mlflow_args, "--port")
    assert "mlflow:" + mlflow_port in _flag(mlflow_args, "--allowed-hosts").split(
        ","
    )  # the Host header the worker sends
    for name in ("deploy", "worker"):
        env = _env(services[name])
        assert env["PREFECT_API_URL"] == f"http://prefect-server:{prefect_port}/api", name
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}", name
        assert env["CVFLOW_HOME"].startswith("/"), name
    worker = services["worker"]
    assert any(v.split(":")[1] == _env(worker)["CVFLOW_HOME"] for v in worker["volumes"]), "CVFLOW_HOME is not a volume"
    pools = {d["work_pool"]["name"] for d in _prefect_yaml()["deployments"]}
    assert pools == {_flag(_command(worker), "--pool")}
    deploy_job = " ".join(services["deploy"]["command"])
    assert (
        f"work-pool create {pools.pop()}" in deploy_job
        and "deploy --all --prefect-file deploy/prefect.yaml" in deploy_job
    )
    # The dashboard runs in the browser: it must call the API at the published loopback port.
    [published] = [p for p in services["prefect-server"]["ports"] if p.endswith(":" + prefect_port)]
    host_port = published.split(":")[1]
    assert _env(services["prefect-server"])["PREFECT_UI_API_URL"] == f"http://127.0.0.1:{host_port}/api"
    declared = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_compose_images_are_pinned_and_builds_exist(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            context = DEPLOY / build["context"]
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build}"
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} uses an unpinned image {image}"


def _arg_default(dockerfile: Path, name: str) -> str:
    [value] = re.findall(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), flags=re.MULTILINE)
    return value


def test_servers_and_clients_run_the_same_versions(compose):
    services = compose["services"]
    prefect = _arg_default(DEPLOY / "Dockerfile", "PREFECT_VERSION")
    mlflow = _arg_default(DEPLOY / "Dockerfile", "MLFLOW_VERSION")
    assert services["prefect-server"]["image"].startswith(f"prefecthq/prefect:{prefect}-")
    assert (
        services["mlflow"]["build"]["args"]["MLFLOW_VERSION"]
        == mlflow
        == _arg_default(DEPLOY / "mlflow.Dockerfile", "MLFLOW_VERSION")
    )
    for name in ("deploy", "worker"):
        assert services[name]["build"]["args"] == {"PREFECT_VERSION": prefect, "MLFLOW_VERSION": mlflow}, name


def test_env_example_documents_every_compose_variable():
    used = _variables((DEPLOY / "docker-compose.yml").read_text())
    documented = {
        line.split("=", 1)[0]
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used == documented, f"used but undocumented: {used - documented}; documented but unused: {documented - used}"


def test_worker_image_copies_what_exists_and_the_build_context_keeps_it():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    sources = [src for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert {"pyproject.toml", "cvcore", "tasks", "flows", "deploy"} <= set(sources)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"COPY {src} is excluded from the build context"
    secrets = [i for i, line in enumerate(ignore) if line in ("deploy/.env", "**/.env")]
    assert secrets and min(secrets) > ignore.index("!deploy/**"), "deploy/.env (passwords) must stay out of the image"
