"""The augment stage: preview PNG, statistics that add up, materialised snapshots."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest
from PIL import Image

from cvcore.augment.stage import run_augment_stage
from cvcore.augment.stats import LABEL_SCHEMA, STEP_SCHEMA
from cvcore.config import AugmentConfig
from cvcore.data.snapshot import SnapshotError, read_snapshot


@pytest.fixture(scope="module")
def detection_run(shapes_detection, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage-det")
    config = AugmentConfig(preset="strong", mosaic_p=0.5, seed=3)
    stats = run_augment_stage(
        shapes_detection,
        config,
        preview_path=tmp / "preview.png",
        n_preview=4,
        n_stats=16,
        img_size=48,
        materialize=2,
        out=tmp / "augmented",
    )
    return stats, config


def test_detection_statistics_add_up(detection_run, shapes_detection):
    stats, config = detection_run
    assert stats.task == "detection" and stats.n_samples == 16
    assert stats.steps.schema == STEP_SCHEMA and stats.labels.schema == LABEL_SCHEMA
    names = stats.steps.get_column("transform").to_list()
    assert names == [r["name"] for r in stats.pipeline]
    assert names[0] == "Mosaic" and names[-3:] == ["ClampBoundingBoxes", "SanitizeBoundingBoxes", "ToDtype"]
    rows = stats.steps.to_dicts()
    mosaic, pipeline = rows[0], rows[1:]
    assert mosaic["images"] == round(stats.summary["mosaic_fraction"] * 16) and 0 < mosaic["images"] < 16
    assert mosaic["boxes_in"] - mosaic["boxes_out"] == mosaic["invalidated"] >= 0
    assert all(r["images"] == 16 for r in pipeline)
    for prev, row in zip(pipeline, pipeline[1:]):
        assert row["boxes_in"] == prev["boxes_out"]  # steps chain
    removed = next(r for r in pipeline if r["transform"] == "SanitizeBoundingBoxes")
    assert removed["boxes_in"] - removed["boxes_out"] >= 0
    assert all(r["boxes_in"] == r["boxes_out"] for r in pipeline if r["transform"] != "SanitizeBoundingBoxes")
    # Label table: one row per class; "after" counts the boxes that came out of the pipeline.
    assert stats.labels.get_column("name").to_list() == shapes_detection.class_names
    assert stats.labels.get_column("after").sum() == pipeline[-1]["boxes_out"]
    assert stats.labels.get_column("before_share").sum() == pytest.approx(1.0)
    assert stats.summary["boxes_per_image_after"] == pytest.approx(pipeline[-1]["boxes_out"] / 16)


def test_preview_is_a_png_grid_of_before_after_pairs(detection_run):
    stats, _ = detection_run
    with Image.open(stats.preview_path) as im:
        assert im.format == "PNG"
        w, h = im.size
    # 4 pairs in one row of 8 tiles; tiles are enlarged to at least 192 px plus a caption.
    assert w >= 8 * 192 and 192 <= h < 2 * 192


def test_materialised_snapshot(detection_run, shapes_detection):
    stats, config = detection_run
    new = read_snapshot(stats.snapshot)
    train = new.split_images("train")
    assert stats.n_materialized == train.height == 2 * shapes_detection.split_images("train").height
    assert set(train.get_column("width").to_list()) == {48} and set(train.get_column("height").to_list()) == {48}
    # Other splits are carried over with their ids and annotations.
    val_old, val_new = shapes_detection.split_images("val"), new.split_images("val")
    assert val_new.get_column("image_id").to_list() == val_old.get_column("image_id").to_list()
    assert val_new.get_column("sha256").to_list() == val_old.get_column("sha256").to_list()
    old_val_anns = shapes_detection.annotations.filter(pl.col("image_id").is_in(val_old["image_id"].implode()))
    new_val_anns = new.annotations.filter(pl.col("image_id").is_in(val_new["image_id"].implode()))
    assert new_val_anns.equals(old_val_anns)
    # Augmented files exist, hash to their sha256, and their boxes are on the canvas.
    for row in train.head(5).iter_rows(named=True):
        assert hashlib.sha256(new.image_path(row["file_name"]).read_bytes()).hexdigest() == row["sha256"]
    anns = new.annotations.filter(pl.col("image_id").is_in(train["image_id"].implode()))
    assert anns.height > 0
    assert (
        anns.select((pl.col("x1") >= 0) & (pl.col("y1") >= 0) & (pl.col("x2") <= 48) & (pl.col("y2") <= 48))
        .to_series()
        .all()
    )
    assert anns.get_column("ann_id").n_unique() == anns.height
    assert not anns.get_column("ann_id").is_in(shapes_detection.annotations["ann_id"].implode()).any()
    record = json.loads((new.path / "augment.json").read_text())
    assert record["source"]["digest"] == shapes_detection.digest and record["copies"] == 2
    assert record["augment"] == config.model_dump(mode="json") and record["img_size"] == 48
    assert new.image_root == new.path / "images"


def test_stage_is_reproducible(shapes_detection, tmp_path):
    config = AugmentConfig(preset="default", mosaic_p=1.0, seed=9)
    a = run_augment_stage(
        shapes_detection, config, preview_path=tmp_path / "a.png", n_preview=2, n_stats=6, img_size=40
    )
    b = run_augment_stage(
        shapes_detection, config, preview_path=tmp_path / "b.png", n_preview=2, n_stats=6, img_size=40
    )
    assert a.steps.equals(b.steps) and a.labels.equals(b.labels)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_classification_stage_reports_mixing(shapes_classification, tmp_path):
    config = AugmentConfig(preset="light", cutmix_p=1.0, seed=2)
    stats = run_augment_stage(
        shapes_classification,
        config,
        preview_path=tmp_path / "p.png",
        n_preview=3,
        n_stats=20,
        img_size=32,
        batch_size=8,
        materialize=1,
        out=tmp_path / "aug",
    )
    assert stats.n_samples == 20
    cutmix = stats.steps.filter(pl.col("transform") == "CutMix").to_dicts()
    assert cutmix == [
        {
            "step": stats.steps.height - 1,
            "transform": "CutMix",
            "images": 20,
            "boxes_in": None,
            "boxes_out": None,
            "invalidated": None,
        }
    ]
    # Mixing moves label mass between images but keeps each class's total (pairs are a rotation).
    assert stats.labels.get_column("after").to_list() == pytest.approx(stats.labels.get_column("before").to_list())
    assert stats.labels.get_column("before").sum() == 20
    assert 0 < stats.summary["mixed_fraction"] <= 1 and stats.summary["mean_top_weight"] < 1
    new = read_snapshot(stats.snapshot)
    assert new.split_images("train").height == stats.n_materialized == 64
    assert new.labels.height == 64 + 16


def test_stage_errors(shapes_detection, tmp_path):
    with pytest.raises(ValueError, match="materialize=2 and out=None"):
        run_augment_stage(shapes_detection, AugmentConfig(), preview_path=tmp_path / "p.png", materialize=2)
    with pytest.raises(SnapshotError, match="no images in split 'test'"):
        run_augment_stage(shapes_detection, AugmentConfig(), preview_path=tmp_path / "p.png", split="test")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SnapshotError, match="already exists"):
        run_augment_stage(
            shapes_detection,
            AugmentConfig(),
            preview_path=tmp_path / "p.png",
            n_stats=2,
            materialize=1,
            out=tmp_path / "taken",
        )
