"""End to end: the Prefect flows on tiny data, a temporary Prefect server and a temporary MLflow store.

These are the slowest tests of the suite, so the trained pipelines are made once per module and
shared: one detector through ``train_pipeline`` and one classifier through ``nightly_retrain``
(its first night). Everything runs in a temporary CVFLOW_HOME with a SQLite MLflow store.
"""

from __future__ import annotations

import math
import shutil

import mlflow
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from cvcore import schema
from cvcore.config import RunConfig
from flows.evaluate import evaluate_pipeline
from flows.nightly import TAG_DECISION, TAG_REASON, nightly_retrain
from flows.params import DataSource, EvaluatePipelineParams, NightlyParams, TrainPipelineParams
from flows.train import load_data, train_pipeline

pytestmark = pytest.mark.slow

DETECTOR = "test-detector"
CLASSIFIER = "test-classifier"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A temporary CVFLOW_HOME + SQLite MLflow store for this module (the Prefect server is conftest's)."""
    home = tmp_path_factory.mktemp("cvflow-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVFLOW_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        yield home
    mlflow.set_tracking_uri(None)


def _config(**sections) -> RunConfig:
    return RunConfig.model_validate(sections)


@pytest.fixture(scope="module")
def detector_run(env, shapes_detection):
    """yolov1, one epoch on 24 images of 64 px, evaluated on val and registered."""
    params = TrainPipelineParams(
        data=DataSource(path=shapes_detection.path),
        config=_config(data={"img_size": 64}, model={"name": "yolov1"}, train={"epochs": 1, "batch_size": 8}),
        registered_model=DETECTOR,
        eval_splits=("val",),
        preview_images=4,
    )
    state = train_pipeline(params, return_state=True)
    return state, state.result(raise_on_failure=False)


@pytest.fixture(scope="module")
def classifier_first_night(env, shapes_classification):
    """The first nightly run of a classifier: 2 epochs of resnet18 on 64 images of 32 px."""
    params = NightlyParams(
        train=TrainPipelineParams(
            data=DataSource(path=shapes_classification.path),
            config=_config(model={"name": "resnet18"}, train={"epochs": 2, "batch_size": 16}),
            registered_model=CLASSIFIER,
            eval_splits=("val",),
            preview_images=0,
        ),
        bootstrap_samples=200,
    )
    state = nightly_retrain(params, return_state=True)
    return params, state, state.result(raise_on_failure=False)


def test_detection_pipeline_writes_predictions_and_fills_mlflow(detector_run, shapes_detection):
    state, result = detector_run
    assert state.is_completed(), state.message

    # Predictions: Parquet in the DETECTIONS schema, under <home>/predictions/<run_id>/val/.
    files = sorted(result.predictions["val"].dir.glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet"]
    table = pq.read_table(files[0])
    assert table.schema.equals(schema.arrow_schema("detections"))
    frame = pl.from_arrow(table)
    val_ids = set(shapes_detection.split_images("val")["image_id"].to_list())
    assert set(frame["image_id"].unique().to_list()) <= val_ids
    assert frame.group_by("image_id").len()["len"].max() <= 100  # max_detections per image

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "yolov1" and run.data.params["train.epochs"] == "1"
    # the logged config is the resolved one, and says where each value came from
    from cvcore.models import model_spec

    assert (
        run.data.params["train.lr"] == str(model_spec("yolov1").defaults.train.lr)
        and run.data.params["train.momentum"] == "0.9"
    )
    origin = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/config_sources.json")
    assert (origin["train.epochs"], origin["train.lr"], origin["train.momentum"], origin["model.num_classes"]) == (
        "user",
        "model",
        "cvflow",
        "data",
    )
    assert run.data.tags["cvflow.dataset_digest"] == shapes_detection.digest
    assert run.data.tags["cvflow.flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.data.tags["cvflow.code_version"]
    # per-epoch (step = epoch) and final metrics: the twelve COCO numbers and per-class AP
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [1]
    coco = [
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        "mar_1",
        "mar_10",
        "mar_100",
        "mar_small",
        "mar_medium",
        "mar_large",
    ]
    assert all(f"final/val/{k}" in run.data.metrics for k in coco)
    assert any(k.startswith("final/val/ap/") for k in run.data.metrics)
    # the dataset as an MLflow input with the snapshot's digest
    inputs = run.inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"shapes/train", "shapes/val"}
    assert all(i.dataset.digest == shapes_detection.digest[:16] for i in inputs)
    # artifacts: augmentation preview, training history, evaluation tables, plots
    artifacts = _artifact_paths(client, result.run_id)
    for expected in (
        "augment/augment_preview.png",
        "training/history.parquet",
        "eval/val/per_class.parquet",
        "eval/val/pr_curve.parquet",
    ):
        assert expected in artifacts, sorted(artifacts)
    assert any(a.startswith("plots/val/") and a.endswith(".png") for a in artifacts), sorted(artifacts)

    # registry: the first version is both challenger and champion; the pyfunc model predicts
    mv = client.get_model_version_by_alias(DETECTOR, "champion")
    assert str(mv.version) == result.model.version == "1" and set(mv.aliases) == {"champion", "challenger"}
    model = mlflow.pyfunc.load_model(f"models:/{DETECTOR}@champion")
    out = model.predict(np.full((2, 3, 64, 64), 0.5, dtype=np.float32))
    assert list(out.columns) == ["image_index", "category_id", "category", "score", "x1", "y1", "x2", "y2"]
    assert set(out["image_index"]) <= {0, 1}


def test_evaluate_pipeline_on_champion_reproduces_logged_metrics(detector_run, shapes_detection):
    _, trained = detector_run
    params = EvaluatePipelineParams(
        model=f"models:/{DETECTOR}@champion", data=DataSource(path=shapes_detection.path), split="val"
    )
    state = evaluate_pipeline(params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    logged = MlflowClient().get_run(trained.run_id).data.metrics
    for key, value in result.metrics.items():
        expected = logged[f"final/val/{key}"]
        assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected, abs=1e-9), key
    assert sorted(p.name for p in result.predictions.glob("*.parquet")) == ["part-00000.parquet"]


def test_first_nightly_makes_the_classifier_champion(env, classifier_first_night, shapes_classification):
    _, state, decision = classifier_first_night
    assert state.is_completed(), state.message
    assert (
        decision.promoted
        and decision.champion_before is None
        and decision.champion_after == decision.challenger.version
    )
    # classification predictions: exactly one row per evaluated image
    run = MlflowClient().get_run(decision.challenger.run_id)
    preds = pl.read_parquet(sorted((env / "predictions" / run.info.run_id / "val").glob("*.parquet")))
    val = shapes_classification.split_images("val")
    assert sorted(preds["image_id"].to_list()) == sorted(val["image_id"].to_list())
    assert preds.schema == schema.CLASSIFICATIONS
    for key in ("final/val/accuracy", "final/val/macro_f1", "final/val/micro_f1"):
        assert key in run.data.metrics


def test_nightly_with_a_worse_model_keeps_the_champion_and_says_why(classifier_first_night):
    params, _, first = classifier_first_night
    # model_validate, not model_copy(update=): the config must be validated into the params' partial config type.
    worse = type(params.train).model_validate(
        {
            **params.train.model_dump(),
            "config": _config(model={"name": "resnet18"}, train={"epochs": 1, "batch_size": 16, "lr": 1e-7}),
        }
    )
    state = nightly_retrain(params.model_copy(update={"train": worse}), return_state=True)
    assert state.is_completed(), state.message
    decision = state.result()
    assert not decision.promoted
    assert decision.champion_before == decision.champion_after == first.challenger.version
    assert decision.ci_low is not None and not decision.ci_low > 0
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(CLASSIFIER, "champion").version) == first.challenger.version
    assert str(client.get_model_version_by_alias(CLASSIFIER, "challenger").version) == decision.challenger.version
    tags = client.get_run(decision.challenger.run_id).data.tags
    assert tags[TAG_DECISION] == "kept champion"
    assert "kept champion" in tags[TAG_REASON] and "interval" in tags[TAG_REASON]


def test_corrupt_checkpoint_fails_the_flow_and_the_mlflow_run_without_partial_parquet(
    env, detector_run, shapes_detection, tmp_path
):
    # A checkpoint cut short, as a crashed copy leaves it.
    good = detector_run[1].checkpoint.read_bytes()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good[: len(good) // 2])
    params = EvaluatePipelineParams(model=str(corrupt), data=DataSource(path=shapes_detection.path), split="val")
    state = evaluate_pipeline(params, return_state=True)
    assert state.is_failed()
    assert "corrupt.pt" in state.message and "checkpoint" in state.message
    client = MlflowClient()
    [run] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`cvflow.evaluated_model` = '{corrupt}'",
    )
    assert run.info.status == "FAILED"
    assert "corrupt.pt" in run.data.tags["cvflow.failure"]
    written = [
        p for p in (env / "predictions").rglob("*") if p.is_file() and p.stat().st_mtime >= run.info.start_time / 1000
    ]
    assert not written  # no prediction file, not even a temporary one, since the run started


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_ingest_is_cached_on_the_source_fingerprint(env, tmp_path):
    from PIL import Image
    from prefect import flow

    from tasks.ingest import ingest_source, source_fingerprint

    source = tmp_path / "folder"
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("dark", "light"):
            (source / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (20 * i, 0, 0) if cls == "dark" else (255, 255, 200 + i)).save(
                    source / split / cls / f"{i}.png"
                )

    @flow
    def ingest_twice(source):
        fingerprint = source_fingerprint(source)
        kw = {"fmt": "imagefolder", "home": env, "fingerprint": fingerprint, "name": "tiny"}
        return ingest_source(source, return_state=True, **kw), ingest_source(source, return_state=True, **kw)

    @flow
    def load(source):
        return load_data(DataSource(path=source, format="imagefolder", name="tiny"), home=env)

    first, second = ingest_twice(source)
    assert first.is_completed() and first.name == "Completed" and second.name == "Cached"
    ref = second.result()
    assert ref == first.result() and ref.path.is_relative_to(env / "snapshots" / "tiny")
    assert ref.splits == ("train", "val") and ref.task == "classification"

    shutil.rmtree(ref.path)  # the cache points at a deleted snapshot: the flow makes it again
    assert load(source) == ref and (ref.path / "manifest.json").is_file()

    Image.new("RGB", (16, 16), (1, 2, 3)).save(source / "train" / "dark" / "new.png")  # the data changed
    changed, _ = ingest_twice(source)
    assert changed.name == "Completed" and changed.result().path != ref.path and changed.result().digest != ref.digest


def test_demo_trains_both_models_and_prints_where_everything_is(env, capsys):
    from flows.commands.demo import print_summary
    from flows.demo import demo
    from flows.params import DemoParams

    params = DemoParams(
        detector_epochs=1, classifier_epochs=1, detection_images=(8, 4, 4), classification_images=(16, 8, 8),
        experiment="demo-test", progress=False,
    )  # fmt: skip
    result = demo(params)
    for r in (result.detector, result.classifier):
        assert set(r.metrics) == {"val", "test"} and set(r.model.aliases) == {"champion", "challenger"}
        assert all(any(p.dir.glob("part-*.parquet")) for p in r.predictions.values())
    # Transfer: the detector's backbone came from the classifier's registered version, fetched
    # from the MLflow registry into CVFLOW_HOME/models (the run's resolved config says which file).
    assert result.detector_backbone == result.classifier.model.uri
    detector_run = MlflowClient().get_run(result.detector.run_id).data
    pretrained = detector_run.params["model.pretrained"]
    assert pretrained.startswith(str(env / "models")) and pretrained.endswith("checkpoint.pt")
    assert detector_run.tags["cvflow.pretrained"] == result.classifier.model.uri  # the lineage, as given
    print_summary(result, elapsed=61.0)
    out = " ".join(capsys.readouterr().out.split())
    assert str(result.classifier.predictions["test"].dir) in out
    assert f"backbone started from {result.classifier.model.uri}" in out
    assert "mlflow ui --backend-store-uri" in out and "prefect server start --host 127.0.0.1" in out
    assert "done in 1.0 min" in out
