"""One undecodable val image fails neither the train pipeline nor `evaluate`: it is reported (file and
reason: in the metric tables and on the MLflow run) and left out of the evaluated images."""

from __future__ import annotations

import math
import shutil

import mlflow
import polars as pl
import pytest
from mlflow import MlflowClient

from cvcore.config import RunConfig
from cvcore.data.snapshot import read_snapshot
from flows.evaluate import evaluate_pipeline
from flows.params import DataSource, EvaluatePipelineParams, TrainPipelineParams
from flows.train import train_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("cvflow-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVFLOW_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        yield home
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def broken(shapes_classification, tmp_path_factory):
    """The classification snapshot with its first val image overwritten by bytes that are no image."""
    dst = tmp_path_factory.mktemp("broken") / "shapes-cls"
    shutil.copytree(shapes_classification.path, dst)
    snap = read_snapshot(dst)
    first = snap.split_images("val").sort("image_id").row(0, named=True)
    snap.image_path(first["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated by a failed copy")
    return snap, first


@pytest.fixture(scope="module")
def trained(env, broken):
    snap, _ = broken
    params = TrainPipelineParams(
        data=DataSource(path=snap.path),
        config=RunConfig.model_validate(
            {"data": {"img_size": 16}, "model": {"name": "resnet18"}, "train": {"epochs": 1, "batch_size": 16}}
        ),
        registered_model="broken-classifier",
        eval_splits=("val",),
        preview_images=0,
    )
    state = train_pipeline(params, return_state=True)
    return state, state.result(raise_on_failure=False)


def _check_reported(client: MlflowClient, run_id: str, tables_dir, bad: dict, n_val: int) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final/val/unreadable_images"] == 1.0
    note = run.data.tags["cvflow.unreadable.val"]
    assert note.startswith("1 image(s) could not be read and were left out") and bad["file_name"] in note
    table = pl.read_parquet(tables_dir / "unreadable.parquet")
    assert table.select("image_id", "file_name").rows() == [(bad["image_id"], bad["file_name"])]
    assert table["reason"][0]  # the decoder's message
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval/val")}
    assert {"eval/val/unreadable.parquet", "eval/val/unreadable.json"} <= artifacts
    # the MLflow UI: the run's description has its headline numbers, the experiment opens in the training view
    accuracy = run.data.metrics["final/val/accuracy"]
    assert f"- val (classification): accuracy {accuracy:.4f}, **macro_f1" in run.data.tags["mlflow.note.content"]
    assert "1 unreadable image(s) left out" in run.data.tags["mlflow.note.content"]
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # the evaluated universe is the readable images: the confusion matrix counts one image fewer
    assert pl.read_parquet(tables_dir / "confusion.parquet")["count"].sum() == n_val - 1


def test_the_train_pipeline_reports_and_leaves_out_an_unreadable_val_image(trained, broken):
    state, result = trained
    snap, bad = broken
    assert state.is_completed(), state.message
    assert result.model.version == "1"  # evaluated and registered despite the bad image
    n_val = snap.split_images("val").height
    _check_reported(MlflowClient(), result.run_id, result.checkpoint.parent / "eval" / "val", bad, n_val)
    assert result.predictions["val"].num_rows == n_val - 1


def test_evaluate_reports_it_too_and_gives_the_pipelines_numbers(trained, broken, env):
    _, result = trained
    snap, bad = broken
    state = evaluate_pipeline(
        EvaluatePipelineParams(model=str(result.checkpoint), data=DataSource(path=snap.path), split="val"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    evaluated = state.result()
    _check_reported(
        MlflowClient(),
        evaluated.run_id,
        env / "evaluations" / evaluated.run_id / "val",
        bad,
        snap.split_images("val").height,
    )
    for key, value in evaluated.metrics.items():
        expected = result.metrics["val"][key]
        assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected, abs=1e-9), key
