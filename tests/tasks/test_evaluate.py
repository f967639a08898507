"""Evaluation tasks: hand-checked scores from the snapshot's own ground truth, tables, comparisons."""

from __future__ import annotations

import polars as pl
import pytest
from sklearn.metrics import f1_score

from cvcore.config import EvalConfig
from tasks.evaluate import compare_models, score_split, write_table
from tasks.ingest import snapshot_ref
from tasks.refs import PredictionsRef


def _truth_as_detections(snapshot, split: str) -> pl.DataFrame:
    ids = snapshot.split_images(split)["image_id"]
    anns = snapshot.annotations.filter(pl.col("image_id").is_in(ids.implode()))
    return anns.select("image_id", "category_id", pl.lit(1.0).alias("score"), "x1", "y1", "x2", "y2")


def test_perfect_detections_score_one_and_no_detections_zero(shapes_detection):
    perfect = score_split(
        shapes_detection.path, _truth_as_detections(shapes_detection, "val"), split="val", protocol="coco"
    )
    assert perfect.metrics["map"] == pytest.approx(1.0) and perfect.metrics["map_50"] == pytest.approx(1.0)
    assert perfect.metrics["macro_f1"] == pytest.approx(1.0)
    assert {"pr_curve", "f1_curve", "per_class", "errors", "errors_per_class"} <= set(perfect.tables)
    assert perfect.tables["per_class"]["name"].to_list() == shapes_detection.class_names
    assert all(
        perfect.metrics[f"ap/{n}"] == pytest.approx(1.0)
        for n in shapes_detection.class_names
        if f"ap/{n}" in perfect.metrics
    )

    nothing = _truth_as_detections(shapes_detection, "val").head(0)
    empty = score_split(shapes_detection.path, nothing, split="val", protocol="voc07")
    assert empty.protocol == "voc07" and empty.metrics["map_50"] == 0.0


def test_classification_scores_match_scikit_learn(shapes_classification):
    truth = shapes_classification.labels.join(
        shapes_classification.split_images("val").select("image_id"), on="image_id"
    )
    # every third prediction is shifted to the next class
    pred = truth.with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0)
        .then((pl.col("category_id") + 1) % 4)
        .otherwise(pl.col("category_id"))
        .alias("category_id")
    ).with_columns(pl.lit(0.9).alias("score"))
    scores = score_split(shapes_classification.path, pred, split="val", protocol="coco")
    y, p = truth.sort("image_id")["category_id"].to_numpy(), pred.sort("image_id")["category_id"].to_numpy()
    assert scores.protocol == "classification"
    assert scores.metrics["accuracy"] == pytest.approx((y == p).mean())
    assert scores.metrics["macro_f1"] == pytest.approx(
        f1_score(y, p, average="macro", labels=range(4), zero_division=0)
    )
    assert scores.metrics["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
    assert scores.tables["confusion"]["count"].sum() == truth.height


def test_a_classification_split_with_a_missing_prediction_is_an_error(shapes_classification):
    truth = shapes_classification.labels.join(
        shapes_classification.split_images("val").select("image_id"), on="image_id"
    ).sort("image_id")
    pred = truth.slice(1).with_columns(pl.lit(1.0).alias("score"))
    with pytest.raises(ValueError, match=f"image_id {truth['image_id'][0]}"):
        score_split(shapes_classification.path, pred, split="val", protocol="coco")


def test_write_table_is_atomic_and_leaves_no_temporary(tmp_path):
    path = write_table(pl.DataFrame({"a": [1, 2]}), tmp_path / "t" / "x.parquet")
    assert pl.read_parquet(path)["a"].to_list() == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["x.parquet"]


def _write_preds(frame: pl.DataFrame, folder, split: str, task: str) -> PredictionsRef:
    folder.mkdir(parents=True)
    frame.write_parquet(folder / "part-00000.parquet")
    return PredictionsRef(
        dir=folder, split=split, task=task, num_images=frame["image_id"].n_unique(), num_rows=frame.height
    )


def test_a_worse_candidate_is_not_better_and_a_better_one_is(shapes_detection, tmp_path):
    perfect = _truth_as_detections(shapes_detection, "val")
    half = perfect.filter(pl.int_range(pl.len()) % 2 == 0)  # misses every other object
    good = _write_preds(perfect, tmp_path / "good", "val", "detection")
    poor = _write_preds(half, tmp_path / "poor", "val", "detection")
    ref = snapshot_ref(shapes_detection)
    worse = compare_models.fn(ref, good, poor, protocol="coco", n_boot=100, confidence=0.95)
    assert worse.difference < 0 and not worse.candidate_is_better and worse.baseline == pytest.approx(1.0)
    better = compare_models.fn(ref, poor, good, protocol="coco", n_boot=100, confidence=0.95)
    assert better.difference > 0 and better.low > 0 and better.candidate_is_better


def test_eval_config_protocol_names_the_headline():
    from tasks.evaluate import HEADLINE

    assert {HEADLINE[p] for p in EvalConfig.model_fields["protocol"].annotation.__args__} == {"map", "map_50"}


def test_an_unreadable_detection_image_is_left_out_not_counted_as_missed(shapes_detection):
    """Perfect detections on every val image but one that could not be read: left out, the split
    scores 1.0 and the image is listed with its snapshot file name; counted, it would cost recall."""
    val = shapes_detection.split_images("val").sort("image_id")
    bad = val.filter(pl.col("image_id").is_in(shapes_detection.annotations["image_id"].implode())).row(0, named=True)
    dets = _truth_as_detections(shapes_detection, "val").filter(pl.col("image_id") != bad["image_id"])
    unreadable = pl.DataFrame(
        {
            "image_id": [bad["image_id"]],
            "file_name": ["/abs/path/as/the/worker/saw/it.png"],
            "reason": ["OSError: truncated"],
        }
    )
    scores = score_split(shapes_detection.path, dets, split="val", protocol="coco", unreadable=unreadable)
    assert scores.metrics["map"] == pytest.approx(1.0) and scores.metrics["mar_100"] == pytest.approx(1.0)
    assert scores.tables["unreadable"].rows() == [(bad["image_id"], bad["file_name"], "OSError: truncated")]
    counted = score_split(shapes_detection.path, dets, split="val", protocol="coco")
    assert counted.metrics["mar_100"] < 1.0 and counted.tables["unreadable"].is_empty()


def test_a_run_description_names_each_splits_headline_numbers(tmp_path):
    from tasks.evaluate import describe_run
    from tasks.refs import EvalSummary

    val = EvalSummary(split="val", task="detection", protocol="coco", headline="map", tables_dir=tmp_path,
                      metrics={"map": 0.51234, "map_50": 0.8, "map_75": 0.5, "mar_100": 0.6, "ap/circle": 0.4})  # fmt: skip
    test = EvalSummary(
        split="test",
        task="detection",
        protocol="coco",
        headline="map",
        tables_dir=tmp_path,
        metrics={"map": 0.5, "map_50": 0.75},
        unreadable=2,
    )
    text = describe_run(
        "yolov1 on shapes (detection), 30 epoch(s)",
        {"val": val, "test": test},
        lines=["Registered as `shapes-yolov1` version 3."],
    )
    assert text == (
        "**yolov1 on shapes (detection), 30 epoch(s)**\n\n"
        "- val (coco): **map 0.5123**, map_50 0.8000, map_75 0.5000\n"
        "- test (coco): **map 0.5000**, map_50 0.7500; 2 unreadable image(s) left out\n\n"
        "Registered as `shapes-yolov1` version 3."
    )
    cls = EvalSummary(split="val", task="classification", protocol="classification", headline="macro_f1", tables_dir=tmp_path,
                      metrics={"accuracy": 0.99, "macro_f1": 0.98})  # fmt: skip
    assert describe_run("resnet18", {"val": cls}).endswith(
        "- val (classification): accuracy 0.9900, **macro_f1 0.9800**"
    )
