"""The pipeline commands without training: runs, promote, ui, and the clear errors of demo/evaluate."""

from __future__ import annotations

import shutil
import socket

import mlflow
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks import tracking

runner = CliRunner()


def _text(result) -> str:
    """The command's output (stdout and stderr) with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def _empty_store(tmp_path_factory):
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    mlflow.set_tracking_uri(None)
    return db


@pytest.fixture
def home(tmp_path, monkeypatch, _empty_store):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(_empty_store, home / "mlflow.db")
    monkeypatch.setenv("CVFLOW_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    yield home
    mlflow.set_tracking_uri(None)


def test_runs_lists_runs_with_their_headline_metrics(home):
    client = tracking.mlflow_client()
    exp = tracking.ensure_experiment(client, "exp-a")
    run_id = tracking.open_run(
        client, exp, run_name="yolov1-shapes",
        tags={tracking.TAG_MODEL: "yolov1", tracking.TAG_DATASET: "shapes", "cvflow.headline": "map",
              "cvflow.registered_model": "shapes-yolov1", "cvflow.model_version": "3"},
    )  # fmt: skip
    tracking.log_metrics(client, run_id, {"final/val/map": 0.4321, "final/test/map": 0.4123})
    tracking.close_run(client, run_id)
    result = runner.invoke(app, ["runs", "--limit", "5"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    for expected in ("yolov1-shapes", "exp-a", "yolov1", "shapes", "finished", "0.4321", "0.4123", "shapes-yolov1 v3"):
        assert expected in text


def test_runs_of_an_unknown_experiment_names_the_known_ones(home):
    tracking.ensure_experiment(tracking.mlflow_client(), "exp-a")
    result = runner.invoke(app, ["runs", "--experiment", "nope"])
    assert result.exit_code == 2 and "no MLflow experiment 'nope'" in _text(result) and "exp-a" in _text(result)


def test_an_unreachable_tracking_server_is_one_line_and_exit_code_2(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    result = runner.invoke(app, ["runs"])
    mlflow.set_tracking_uri(None)
    assert result.exit_code == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in _text(result)
    assert "Traceback" not in result.output


def test_promote_moves_the_champion_alias(home):
    client = tracking.mlflow_client()
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=(home / "model").as_uri())
    client.set_registered_model_alias("m", "champion", "1")
    result = runner.invoke(app, ["promote", "m", "2"])
    assert result.exit_code == 0, result.output
    assert "m@champion moved from version 1 to version 2" in _text(result)
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    missing = runner.invoke(app, ["promote", "m", "9"])
    assert missing.exit_code == 2 and "no version 9 of registered model 'm'" in _text(missing)


def test_ui_prints_both_commands_bound_to_localhost(home):
    result = runner.invoke(app, ["ui", "--mlflow-port", "5055"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert f"mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'} --host 127.0.0.1 --port 5055" in text
    assert "prefect server start --host 127.0.0.1 --port 4200" in text


def test_ui_opens_any_tracking_store_but_only_points_at_a_server(home, monkeypatch, tmp_path):
    other = f"sqlite:///{tmp_path / 'other.db'}"  # a store of the user's own, not the home's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    text = _text(runner.invoke(app, ["ui"]))
    assert f"mlflow ui --backend-store-uri {other} --host 127.0.0.1 --port 5000" in text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    text = _text(runner.invoke(app, ["ui"]))
    assert (
        f"http://127.0.0.1:{port} (tracking server from MLFLOW_TRACKING_URI, not answering)" in text
        and "mlflow ui" not in text
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--detector", "nope"], "unknown model 'nope'; known models:"),
        (["demo", "--detector", "resnet18"], "'resnet18' is a classification model; choose a detection model"),
        (["demo", "--classifier", "yolov1"], "'yolov1' is a detection model; choose a classification model"),
        (
            ["evaluate", "--model", "models:/m@champion", "--data", "/no/such/snapshot"],
            "/no/such/snapshot is not a snapshot",
        ),
    ],
)
def test_bad_arguments_fail_fast_with_exit_code_2(home, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in _text(result), result.output
