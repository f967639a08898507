"""detection_errors: one hand-made scene with every error type, and consistency on random sets."""

from __future__ import annotations

import polars as pl
import pytest
from detection_sets import make_detection_set

from cvcore import schema
from cvcore.metrics.detection import evaluate_detections
from cvcore.metrics.errors import ERROR_TYPES, detection_errors


def _scene():
    gt = [
        (0, 0.0, 0.0, 10.0, 10.0),  # A: found (d1), found again (d2: duplicate)
        (1, 100.0, 100.0, 110.0, 110.0),  # B: only seen as class 0 (d3): a classification error
        (0, 200.0, 200.0, 210.0, 210.0),  # C: nothing near it: missed
        (0, 300.0, 300.0, 310.0, 310.0),  # D: only a loose box (d4): a localization error
    ]
    dt = [
        (0, 0.95, 0.0, 0.0, 10.0, 10.0),  # d1 TP
        (0, 0.90, 0.0, 0.0, 10.0, 10.5),  # d2 duplicate of A
        (0, 0.85, 100.0, 100.0, 110.0, 110.0),  # d3 classification (IoU 1 with B, class 1)
        (0, 0.80, 300.0, 300.0, 310.0, 325.0),  # d4 localization (IoU 0.4 with D)
        (0, 0.99, 500.0, 500.0, 510.0, 510.0),  # d5 background, ranked first
        (1, 0.70, 0.0, 0.0, 10.0, 30.0),  # d6 both: class 1 on A (class 0) at IoU 1/3
    ]
    ann = pl.DataFrame(gt, schema=["category_id", "x1", "y1", "x2", "y2"], orient="row").with_columns(
        image_id=pl.lit(1), area=pl.lit(100.0), ann_id=pl.int_range(pl.len())
    )
    pred = pl.DataFrame(dt, schema=["category_id", "score", "x1", "y1", "x2", "y2"], orient="row").with_columns(
        image_id=pl.lit(1)
    )
    return schema.validate(ann, "annotations"), schema.validate(pred, "detections")


@pytest.mark.parametrize("protocol", ["coco", "voc12"])
def test_every_error_type_in_a_hand_made_scene(protocol):
    ann, pred = _scene()
    errors = detection_errors(ann, pred, images=[1], protocol=protocol)
    counts = dict(errors.summary.select("error", "count").iter_rows())
    assert counts == {e: 1 for e in ERROR_TYPES}
    by_row = dict(errors.false_positives.select("row", "error").iter_rows())
    assert by_row == {1: "duplicate", 2: "classification", 3: "localization", 4: "background", 5: "both"}
    assert errors.false_positives.filter(pl.col("error") == "background")["gt_category_id"].to_list() == [None]
    per_class = errors.per_class.filter(pl.col("category_id") == 0).row(0, named=True)
    assert per_class["missed"] == 1 and per_class["duplicate"] == 1 and per_class["both"] == 0


def test_dap_of_the_hand_made_scene():
    """Class 0: d5 (FP), d1 (TP), then only FPs; 3 counted boxes, so AP50 = 34/101 * 1/2 (101-point
    recall grid: 34 points reach recall 1/3). Class 1: no TP, AP 0. mAP50 = 17/202.
    Removing d5 doubles class 0's AP; removing the missed box C lifts its recall to 1/2 (51 points)."""
    ann, pred = _scene()
    errors = detection_errors(ann, pred, images=[1])
    dap = dict(errors.summary.select("error", "dap").iter_rows())
    assert errors.ap_50 == pytest.approx(17 / 202)
    assert errors.ap_50 == pytest.approx(evaluate_detections(ann, pred, images=[1]).summary["map_50"])
    assert dap["background"] == pytest.approx(17 / 202)
    assert dap["missed"] == pytest.approx((51 * 0.5 - 34 * 0.5) / 101 / 2)
    for error in ("duplicate", "classification", "localization", "both"):
        assert dap[error] == pytest.approx(0.0)  # ranked after the only true positive


def test_random_set_is_consistent():
    data = make_detection_set(4)
    errors = detection_errors(data.annotations, data.predictions, images=data.images)
    report = evaluate_detections(data.annotations, data.predictions, images=data.images)
    fp = errors.false_positives
    assert set(fp["error"].unique()) <= set(ERROR_TYPES)
    assert (errors.summary.filter(pl.col("error") != "missed")["dap"] >= -1e-12).all()
    assert errors.ap_50 == pytest.approx(report.summary["map_50"], abs=1e-12)
    # every labelled false positive is a ranked detection, counted once
    assert fp["row"].n_unique() == fp.height
    per_class_total = errors.per_class.select(pl.exclude("category_id", "missed")).sum_horizontal().sum()
    assert per_class_total == fp.height
