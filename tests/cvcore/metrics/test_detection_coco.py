"""protocol="coco": equal to pycocotools on random sets, and small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from detection_sets import grid_sets, make_detection_set, pycocotools_eval
from hypothesis import HealthCheck, given, settings

from cvcore import schema
from cvcore.metrics._inputs import load_detection_inputs
from cvcore.metrics._protocols import curves, match
from cvcore.metrics.detection import COCO_SUMMARY_KEYS, evaluate_detections

RANDOM_SETS = [
    pytest.param({"seed": 0}, id="default"),
    pytest.param({"seed": 1, "score_decimals": 1}, id="many-ties"),
    pytest.param({"seed": 2, "score_decimals": None}, id="no-ties"),
    pytest.param({"seed": 3, "crowd_p": 0.3, "image_size": 120.0, "n_images": 15}, id="crowded-small-images"),
    pytest.param({"seed": 4, "n_categories": 3, "n_images": 25}, id="few-categories"),
]


def _ours(data, **kw):
    return evaluate_detections(
        data.annotations, data.predictions, images=data.images, categories=data.category_ids, **kw
    )


@pytest.mark.parametrize("params", RANDOM_SETS)
def test_the_12_numbers_equal_pycocotools(params):
    data = make_detection_set(**params)
    report = _ours(data)
    reference = pycocotools_eval(data).stats
    for key, ref in zip(COCO_SUMMARY_KEYS, reference):
        if ref == -1:
            assert math.isnan(report.summary[key]), key
        else:
            assert report.summary[key] == pytest.approx(ref, abs=1e-9, rel=0), key


@pytest.mark.parametrize("seed", [10, 11])
def test_precision_recall_and_score_arrays_equal_pycocotools(seed):
    """Every cell of COCOeval.eval (T x R x K x A x M), not only the means."""
    data = make_detection_set(seed, n_images=15, n_categories=4, image_size=150.0, crowd_p=0.2)
    ref = pycocotools_eval(data).eval
    inputs = load_detection_inputs(data.annotations, data.predictions, images=data.images, categories=data.category_ids)
    matches = match(inputs, "coco")
    for a in range(4):
        for m, max_dets in enumerate((1, 10, 100)):
            c = curves(inputs, matches, "coco", area=a, max_dets=max_dets)
            np.testing.assert_array_equal(c.precision, ref["precision"][:, :, :, a, m])
            np.testing.assert_array_equal(c.recall, ref["recall"][:, :, a, m])
            np.testing.assert_array_equal(c.score, ref["scores"][:, :, :, a, m])


def test_per_class_ap_is_pycocotools_precision_mean():
    data = make_detection_set(5)
    precision = pycocotools_eval(data).eval["precision"][:, :, :, 0, 2]
    per_class = _ours(data).per_class
    for k, cid in enumerate(data.category_ids):
        block = precision[:, :, k]
        row = per_class.filter(pl.col("category_id") == cid).row(0, named=True)
        if (block == -1).all():
            assert row["ap"] is None and row["n_gt"] == 0
        else:
            assert row["ap"] == pytest.approx(block.mean(), abs=1e-12)
            assert row["ap_50"] == pytest.approx(block[0].mean(), abs=1e-12)


def _frames(gt: list[tuple], dt: list[tuple], images=(1,)):
    ann = pl.DataFrame(gt, schema=["image_id", "category_id", "x1", "y1", "x2", "y2", "iscrowd"], orient="row")
    ann = ann.with_columns(area=(pl.col("x2") - pl.col("x1")) * (pl.col("y2") - pl.col("y1"))).with_row_index(
        "ann_id", 1
    )
    pred = pl.DataFrame(dt, schema=["image_id", "category_id", "score", "x1", "y1", "x2", "y2"], orient="row")
    return (
        schema.validate(ann, "annotations"),
        schema.validate(pred, "detections"),
        pl.DataFrame({"image_id": list(images)}),
    )


def test_hand_computed_case():
    """Two objects; a hit, a duplicate, and a hit at IoU 2/3.

    IoU <= 0.65: TP, FP, TP -> precision 1 up to recall 0.5, then 2/3: AP = (51 + 50 * 2/3) / 101.
    IoU >= 0.70: TP, FP, FP -> AP = 51 / 101. Recall: 1 at 4 thresholds, 0.5 at 6.
    """
    ann, pred, images = _frames(
        [(1, 0, 0.0, 0.0, 10.0, 10.0, False), (1, 0, 20.0, 20.0, 30.0, 30.0, False)],
        [(1, 0, 0.9, 0.0, 0.0, 10.0, 10.0), (1, 0, 0.8, 0.0, 0.0, 10.0, 10.0), (1, 0, 0.7, 20.0, 20.0, 30.0, 35.0)],
    )
    report = evaluate_detections(ann, pred, images=images)
    low, high = (51 + 50 * (2 / 3)) / 101, 51 / 101
    assert report.summary["map_50"] == pytest.approx(low, abs=1e-12)
    assert report.summary["map_75"] == pytest.approx(high, abs=1e-12)
    assert report.summary["map"] == pytest.approx((4 * low + 6 * high) / 10, abs=1e-12)
    assert report.summary["mar_100"] == pytest.approx((4 * 1.0 + 6 * 0.5) / 10)
    assert report.summary["mar_1"] == pytest.approx(0.5)
    assert report.summary["map_small"] == pytest.approx(report.summary["map"])  # both objects < 32² px
    assert math.isnan(report.summary["map_large"])
    # F1 at IoU 0.5: thresholds 0.9 (P 1, R .5), 0.8 (P .5, R .5), 0.7 (P 2/3, R 1, F1 0.8)
    best = report.per_class.row(0, named=True)
    assert (best["f1_threshold"], best["f1"]) == (0.7, pytest.approx(0.8))
    assert best["f1_precision"] == pytest.approx(2 / 3) and best["f1_recall"] == 1.0
    assert report.f1_curve["score"].to_list() == [0.9, 0.8, 0.7]


def test_crowd_box_absorbs_detections_by_intersection_over_detection_area():
    """A detection inside a crowd region is ignored however small its IoU (IoD = 1), even twice."""
    ann, pred, images = _frames(
        [(1, 0, 0.0, 0.0, 100.0, 100.0, True), (1, 0, 200.0, 200.0, 210.0, 210.0, False)],
        [
            (1, 0, 0.9, 10.0, 10.0, 20.0, 20.0),
            (1, 0, 0.8, 30.0, 30.0, 40.0, 40.0),
            (1, 0, 0.7, 200.0, 200.0, 210.0, 210.0),
        ],
    )
    report = evaluate_detections(ann, pred, images=images)
    assert report.summary["map"] == pytest.approx(1.0)  # the two crowd hits are neither TP nor FP
    assert report.per_class.row(0, named=True)["n_gt"] == 1
    assert report.per_class.row(0, named=True)["n_ignored"] == 1


def test_detections_on_images_without_ground_truth_are_false_positives_and_others_are_left_out():
    ann, pred, _ = _frames(
        [(1, 0, 0.0, 0.0, 10.0, 10.0, False)],
        [(2, 0, 0.9, 0.0, 0.0, 10.0, 10.0), (1, 0, 0.8, 0.0, 0.0, 10.0, 10.0), (3, 0, 0.95, 0.0, 0.0, 10.0, 10.0)],
    )
    with_fp = evaluate_detections(ann, pred, images=[1, 2])  # image 3 is not evaluated
    assert with_fp.summary["map_50"] == pytest.approx((51 * 0.5 + 50 * 0.5) / 101)
    assert with_fp.per_class["n_pred"].to_list() == [2]
    alone = evaluate_detections(ann, pred, images=[1])
    assert alone.summary["map_50"] == pytest.approx(1.0)


def test_lazy_parquet_shards_give_the_same_report(tmp_path):
    data = make_detection_set(6)
    preds = data.predictions.with_row_index("i")
    for part in range(3):
        preds.filter(pl.col("i") % 3 == part).drop("i").write_parquet(tmp_path / f"part-{part}.parquet")
    data.annotations.write_parquet(tmp_path / "ann.parquet")
    lazy = evaluate_detections(
        pl.scan_parquet(tmp_path / "ann.parquet"),
        pl.scan_parquet(tmp_path / "part-*.parquet"),
        images=data.images.lazy(),
        categories=data.category_ids,
    )
    # the shards' row order decides ties between equal scores, so compare with the same order
    reordered = pl.concat([pl.read_parquet(tmp_path / f"part-{p}.parquet") for p in range(3)])
    direct = evaluate_detections(data.annotations, reordered, images=data.images, categories=data.category_ids)
    assert lazy.summary == direct.summary
    assert lazy.per_class.equals(direct.per_class)


def test_no_predictions_and_no_ground_truth():
    ann, _, images = _frames([(1, 0, 0.0, 0.0, 10.0, 10.0, False)], [])
    empty_pred = schema.empty("detections")
    report = evaluate_detections(ann, empty_pred, images=images)
    assert report.summary["map"] == 0.0 and report.summary["mar_100"] == 0.0
    nothing = evaluate_detections(schema.empty("annotations"), empty_pred, images=images)
    assert all(math.isnan(v) for v in nothing.summary.values())
    assert nothing.pr_curve.is_empty() and nothing.per_class.is_empty()


def test_pr_curve_layout():
    report = _ours(make_detection_set(7))
    curve = report.pr_curve
    assert curve.columns == ["category_id", "iou_threshold", "recall", "precision", "score"]
    counted = report.per_class.filter(pl.col("n_gt") > 0).height
    assert curve.height == counted * 10 * 101
    # interpolated precision never rises with recall
    diffs = curve.group_by("category_id", "iou_threshold").agg(pl.col("precision").diff().max().alias("d"))
    assert (diffs["d"] <= 0).all()


def test_bad_inputs_are_named():
    ann, pred, images = _frames([(1, 0, 0.0, 0.0, 10.0, 10.0, False)], [(1, 0, 0.9, 5.0, 0.0, 1.0, 10.0)])
    with pytest.raises(ValueError, match=r"predictions: 1 row\(s\) with box .* first at row 0"):
        evaluate_detections(ann, pred, images=images)
    nan_score = pred.with_columns(score=pl.lit(float("nan")), x2=pl.lit(10.0))
    with pytest.raises(ValueError, match="non-finite score"):
        evaluate_detections(ann, nan_score, images=images)
    with pytest.raises(schema.SchemaError, match="missing column 'score'"):
        evaluate_detections(ann, pred.drop("score"), images=images)
    with pytest.raises(ValueError, match="category_id outside the given categories"):
        evaluate_detections(ann, pred.with_columns(x2=pl.lit(10.0)), images=images, categories=[1, 2])
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_detections(ann, pred, images=images, protocol="coco2017")


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_sets())
def test_grid_sets_equal_pycocotools(data):
    """Integer boxes put IoUs exactly on the thresholds; few scores make many ties."""
    if data.predictions.is_empty():  # pycocotools' loadRes cannot take an empty result list
        return
    report = _ours(data)
    for key, ref in zip(COCO_SUMMARY_KEYS, pycocotools_eval(data).stats):
        got = report.summary[key]
        assert (math.isnan(got) and ref == -1) or got == pytest.approx(ref, abs=1e-12, rel=0), key
