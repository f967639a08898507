"""train_run / resolve_run_config over registered models, and load_model back from a run folder."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
import torch
import yaml

from cvcore import schema
from cvcore.config import RunConfig, load_config
from cvcore.engine.checkpoint import load_checkpoint, load_model
from cvcore.engine.infer import predict
from cvcore.engine.run import prediction_dataset, resolve_run_config, train_run
from cvcore.models import model_spec


def test_model_defaults_fill_only_what_the_user_left_unset(shapes_classification):
    user = RunConfig.model_validate({"model": {"name": "resnet18"}, "train": {"epochs": 2}})
    resolved = resolve_run_config(user, snapshot=shapes_classification)
    defaults = model_spec("resnet18").defaults
    assert resolved.train.epochs == 2  # the user's choice wins
    assert resolved.train.lr == defaults.train.lr and resolved.data.img_size == defaults.data.img_size
    assert resolved.model.num_classes == shapes_classification.num_classes
    assert resolve_run_config(resolved, snapshot=shapes_classification) == resolved  # idempotent


def test_model_defaults_reach_every_section(shapes_detection):
    resolved = resolve_run_config(RunConfig.model_validate({"model": {"name": "rcnn"}}), snapshot=shapes_detection)
    assert resolved.augment.preset == model_spec("rcnn").defaults.augment.preset


@pytest.mark.parametrize(
    ("name", "fixture", "message"),
    [
        ("no_such_net", "shapes_classification", "unknown model 'no_such_net'"),
        ("yolov1", "shapes_classification", "is a detection model, but snapshot"),
        ("resnet18", "shapes_detection", "is a classification model, but snapshot"),
    ],
)
def test_model_and_data_must_agree(name, fixture, message, request):
    with pytest.raises(ValueError, match=message):
        resolve_run_config(
            RunConfig.model_validate({"model": {"name": name}}), snapshot=request.getfixturevalue(fixture)
        )


def test_num_classes_must_match_the_snapshot(shapes_classification):
    config = RunConfig.model_validate({"model": {"name": "resnet18", "num_classes": 7}})
    with pytest.raises(ValueError, match="has 4 classes"):
        resolve_run_config(config, snapshot=shapes_classification)


def test_yolov1_run_folder_round_trips_through_load_model(shapes_detection, tmp_path):
    config = RunConfig.model_validate(
        {
            "data": {"snapshot": str(shapes_detection.path), "img_size": 64},
            "model": {"name": "yolov1"},
            "train": {"epochs": 1, "batch_size": 8},
        }
    )
    result = train_run(config, tmp_path)
    assert {"config.yaml", "last.pt", "best.pt", "metrics.json", "history.parquet"} <= {
        p.name for p in tmp_path.iterdir()
    }
    saved = load_config(tmp_path / "config.yaml")  # the resolved config, loadable as a run.yaml
    assert (
        saved.model.name == "yolov1"
        and saved.train.epochs == 1
        and saved.train.lr == model_spec("yolov1").defaults.train.lr
    )
    assert "val/map_50" in result.final_metrics

    model, meta = load_model(tmp_path)
    assert (
        meta["model_name"] == "yolov1"
        and meta["class_names"] == shapes_detection.class_names
        and meta["img_size"] == 64
    )
    weights = load_checkpoint(tmp_path / "best.pt")["model"]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    ds = prediction_dataset(meta, shapes_detection, "val")
    df = schema.validate(
        pl.from_arrow(pa.Table.from_batches(predict(model, ds, task="detection", batch_size=4, device="cpu"))),
        "detections",
    )
    assert df.get_column("image_id").is_in(ds.image_ids.tolist()).all()
    assert (df.get_column("x2") <= 64).all() and (df.get_column("x1") >= 0).all()

    with pytest.raises(FileExistsError, match="already holds a run"):
        train_run(config, tmp_path)


def test_prediction_dataset_refuses_other_classes(shapes_detection, tmp_path):
    meta = {"task": "detection", "class_names": ["cat", "dog"], "img_size": 64, "config": yaml.safe_load("augment: {}")}
    with pytest.raises(ValueError, match="trained on classes"):
        prediction_dataset(meta, shapes_detection, "val")
    with pytest.raises(ValueError, match="is a classification model"):
        prediction_dataset(meta | {"task": "classification"}, shapes_detection, "val")
