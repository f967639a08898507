"""MLflow plumbing: the embedded store, runs opened and closed by id, epochs, dataset inputs."""

from __future__ import annotations

import math
import socket

import mlflow
import pytest

from tasks import tracking


def test_embedded_store_lives_in_the_home_and_survives_mlflow_exporting_the_uri(home, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.cvflow_home() == home
    assert tracking.tracking_uri() == f"sqlite:///{home / 'mlflow.db'}"
    client = tracking.mlflow_client()  # exports MLFLOW_TRACKING_URI, like mlflow.set_tracking_uri does
    try:
        assert tracking.uses_embedded_store()
        experiment = client.get_experiment(tracking.ensure_experiment(client, "x"))
        assert experiment.artifact_location == (home / "mlartifacts").as_uri()
    finally:
        mlflow.set_tracking_uri(None)


def test_artifact_root_of_new_experiments_is_configurable(home, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv(tracking.ARTIFACT_ROOT_ENV, (tmp_path / "bucket").as_uri())  # s3://... in production
    client = tracking.mlflow_client()
    try:
        experiment = client.get_experiment(tracking.ensure_experiment(client, "elsewhere"))
        assert experiment.artifact_location == (tmp_path / "bucket").as_uri()
    finally:
        mlflow.set_tracking_uri(None)


def test_a_tracking_server_uri_is_respected_and_an_unreachable_one_is_named(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("CVFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri() == uri and tracking.artifact_root() is None
    with pytest.raises(tracking.TrackingUnavailable, match=f"127.0.0.1:{port} is unreachable"):
        tracking.mlflow_client()
    mlflow.set_tracking_uri(None)


def test_runs_are_closed_finished_or_failed_with_the_cause(home):
    client = tracking.mlflow_client()
    exp = tracking.ensure_experiment(client)
    ok = tracking.open_run(client, exp, run_name="ok", tags={"a": "b"})
    bad = tracking.open_run(client, exp, run_name="bad", tags={})
    tracking.close_run(client, ok)
    tracking.close_run(client, bad, error=ValueError("best.pt: not a loadable checkpoint"))
    assert client.get_run(ok).info.status == "FINISHED" and client.get_run(ok).data.tags["a"] == "b"
    failed = client.get_run(bad)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[tracking.TAG_FAILURE] == "ValueError: best.pt: not a loadable checkpoint"


def test_epoch_logger_logs_each_epoch_at_its_step_and_keeps_nan(home):
    client = tracking.mlflow_client()
    run_id = tracking.open_run(client, tracking.ensure_experiment(client), run_name="r", tags={})
    logger = tracking.EpochLogger(client, run_id)
    logger.on_epoch_end(1, {"train/loss": 2.0, "val/map_large": float("nan"), "lr": 0.1, "flag": True})
    logger.on_epoch_end(2, {"train/loss": 1.5, "val/map_large": 0.25, "lr": 0.05})
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert math.isnan(client.get_metric_history(run_id, "val/map_large")[0].value)
    assert "flag" not in client.get_run(run_id).data.metrics  # booleans are not metrics


def test_metric_keys_with_characters_mlflow_refuses_are_made_safe(home):
    client = tracking.mlflow_client()
    run_id = tracking.open_run(client, tracking.ensure_experiment(client), run_name="r", tags={})
    tracking.log_metrics(client, run_id, {"final/val/ap/traffic light (night)": 0.5, "ap/été": 0.25})
    assert set(client.get_run(run_id).data.metrics) == {"final/val/ap/traffic light _night_", "ap/été"}


def test_config_is_logged_once_as_flat_params(home):
    from cvcore.config import RunConfig, flatten

    client = tracking.mlflow_client()
    run_id = tracking.open_run(client, tracking.ensure_experiment(client), run_name="r", tags={})
    config = RunConfig.model_validate({"train": {"lr": 0.01}})
    tracking.log_config(client, run_id, config)
    assert client.get_run(run_id).data.params == flatten(config)


def test_dataset_splits_are_logged_as_inputs_with_the_snapshot_digest(home, shapes_classification):
    client = tracking.mlflow_client()
    run_id = tracking.open_run(client, tracking.ensure_experiment(client), run_name="r", tags={})
    tracking.log_dataset(client, run_id, shapes_classification.path, splits=["train", "val"])
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["shapes-cls/train", "shapes-cls/val"]
    assert {i.dataset.digest for i in inputs} == {shapes_classification.digest[:16]}
    assert sorted(t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context") == ["train", "val"]


def test_run_tags_name_dataset_model_flow_and_code_version(shapes_classification):
    tags = tracking.run_tags(
        shapes_classification, model_name="resnet18", flow_name="train_pipeline", flow_run_id="abc"
    )
    assert tags[tracking.TAG_DATASET_DIGEST] == shapes_classification.digest
    assert tags[tracking.TAG_MODEL] == "resnet18" and tags[tracking.TAG_FLOW_RUN] == "abc"
    assert tags[tracking.TAG_CODE_VERSION] == tracking.code_version() != "unknown"


def test_experiments_open_in_the_mlflow_ui_model_training_view(home):
    client = tracking.mlflow_client()
    made = client.get_experiment(tracking.ensure_experiment(client, "new"))
    assert made.tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-before")  # an experiment from before cvflow set the kind
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.ensure_experiment(client, "made-before") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    tracking.ensure_experiment(client, "chosen")
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"  # a user's choice is kept


def test_a_run_description_is_mlflows_note(home):
    client = tracking.mlflow_client()
    run_id = tracking.open_run(client, tracking.ensure_experiment(client), run_name="r", tags={})
    tracking.set_description(client, run_id, "**resnet18 on shapes**")
    assert client.get_run(run_id).data.tags["mlflow.note.content"] == "**resnet18 on shapes**"
