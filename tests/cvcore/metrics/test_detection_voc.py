"""protocol="voc07" / "voc12": against a plain-loop PASCAL VOC devkit implementation, and hand cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from detection_sets import grid_sets, make_detection_set
from hypothesis import HealthCheck, given, settings

from cvcore import schema
from cvcore.metrics.detection import evaluate_detections


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# MATLAB's 0:0.1:1 as the devkit's VOCevaldet.m loops over it: the first half counted up from 0,
# the second half down from 1 (so 0.6 and 0.7 are the doubles nearest them, unlike np.arange's).
DEVKIT_07_POINTS = [0.0, 0.1, 2 * 0.1, 3 * 0.1, 4 * 0.1, 5 * 0.1, 1 - 4 * 0.1, 1 - 3 * 0.1, 1 - 2 * 0.1, 1 - 0.1, 1.0]


def _voc_ap(rec: list[float], prec: list[float], *, use_07: bool) -> float:
    """The devkit's VOCevaldet.m AP, loops instead of NumPy."""
    if use_07:
        ap = 0.0
        for t in DEVKIT_07_POINTS:
            p = max([p for r, p in zip(rec, prec) if r >= t], default=0.0)
            ap += p / 11.0
        return ap
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def voc_reference(annotations: pl.DataFrame, predictions: pl.DataFrame, *, use_07: bool) -> dict[int, float]:
    """AP per class with ground truth: the devkit's VOCevaldet.m loop (best IoU >= 0.5, best box
    only, difficult/crowd ignored, duplicates false), detections ranked by (-score, image_id, row)."""
    aps = {}
    for cid in sorted(set(annotations["category_id"].to_list())):
        gts: dict[int, list] = {}
        for r in annotations.filter(pl.col("category_id") == cid).iter_rows(named=True):
            gts.setdefault(r["image_id"], []).append(
                ((r["x1"], r["y1"], r["x2"], r["y2"]), r["difficult"] or r["iscrowd"])
            )
        npos = sum(not ign for boxes in gts.values() for _, ign in boxes)
        if npos == 0:
            continue
        dets = [(r["image_id"], i, r["score"], (r["x1"], r["y1"], r["x2"], r["y2"]))
                for i, r in enumerate(predictions.iter_rows(named=True)) if r["category_id"] == cid]  # fmt: skip
        dets.sort(key=lambda d: (-d[2], d[0], d[1]))
        taken = {img: [False] * len(boxes) for img, boxes in gts.items()}
        tp = fp = 0
        rec, prec = [], []
        for img, _, _, box in dets:
            best, j = -math.inf, -1
            for k, (gt_box, _) in enumerate(gts.get(img, [])):
                ov = _iou(box, gt_box)
                if ov > best:
                    best, j = ov, k
            if best >= 0.5:  # VOCevaldet.m: if ovmax>=VOCopts.minoverlap
                if gts[img][j][1]:
                    continue  # difficult: neither true nor false
                if not taken[img][j]:
                    taken[img][j] = True
                    tp += 1
                else:
                    fp += 1
            else:
                fp += 1
            rec.append(tp / npos)
            prec.append(tp / max(tp + fp, np.finfo(np.float64).eps))
        aps[cid] = _voc_ap(rec, prec, use_07=use_07)
    return aps


@pytest.mark.parametrize("protocol", ["voc07", "voc12"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_loop_devkit(protocol, seed):
    data = make_detection_set(seed, score_decimals=2 if seed else None)
    report = evaluate_detections(data.annotations, data.predictions, images=data.images, protocol=protocol)
    expected = voc_reference(data.annotations, data.predictions, use_07=protocol == "voc07")
    got = {r["category_id"]: r["ap"] for r in report.per_class.filter(pl.col("ap").is_not_null()).iter_rows(named=True)}
    assert got.keys() == expected.keys()
    for cid, ap in expected.items():
        assert got[cid] == pytest.approx(ap, abs=1e-12), cid
    assert report.summary == {"map_50": pytest.approx(np.mean(list(expected.values())), abs=1e-12)}


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_sets())
def test_grid_sets_match_plain_loop_devkit(data):
    """Integer boxes put IoUs exactly on 0.5 (a match: >= 0.5), few scores make many ties."""
    for protocol in ("voc07", "voc12"):
        report = evaluate_detections(data.annotations, data.predictions, images=data.images, protocol=protocol)
        expected = voc_reference(data.annotations, data.predictions, use_07=protocol == "voc07")
        got = {
            r["category_id"]: r["ap"] for r in report.per_class.filter(pl.col("ap").is_not_null()).iter_rows(named=True)
        }
        assert got == pytest.approx(expected, abs=1e-12)


def _frames(gt: list[tuple], dt: list[tuple]):
    ann = pl.DataFrame(gt, schema=["image_id", "category_id", "x1", "y1", "x2", "y2", "difficult"], orient="row")
    ann = ann.with_columns(area=(pl.col("x2") - pl.col("x1")) * (pl.col("y2") - pl.col("y1"))).with_row_index(
        "ann_id", 1
    )
    pred = pl.DataFrame(dt, schema=["image_id", "category_id", "score", "x1", "y1", "x2", "y2"], orient="row")
    return schema.validate(ann, "annotations"), schema.validate(pred, "detections")


def test_hand_computed_07_and_12():
    """Two objects; TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.

    VOC12 = 0.5 * 1 + 0.5 * 2/3; VOC07 = (6 * 1 + 5 * 2/3) / 11 (recall points 0..0.5 and 0.6..1).
    """
    ann, pred = _frames(
        [(1, 0, 0.0, 0.0, 10.0, 10.0, False), (1, 0, 20.0, 20.0, 30.0, 30.0, False)],
        [(1, 0, 0.9, 0.0, 0.0, 10.0, 10.0), (1, 0, 0.8, 50.0, 50.0, 60.0, 60.0), (1, 0, 0.7, 20.0, 20.0, 30.0, 31.0)],
    )
    v12 = evaluate_detections(ann, pred, images=[1], protocol="voc12").summary["map_50"]
    v07 = evaluate_detections(ann, pred, images=[1], protocol="voc07").summary["map_50"]
    assert v12 == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert v07 == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc_rules_differ_from_coco_where_the_devkit_does():
    """A difficult box is ignored; IoU exactly 0.5 is a match (the devkit's >= 0.5, as COCO's
    first threshold); a detection whose best box is taken is a duplicate even when another free
    box overlaps it enough (COCO would take it)."""
    ann, pred = _frames(
        [
            (1, 0, 0.0, 0.0, 10.0, 10.0, False),
            (1, 0, 4.0, 0.0, 14.0, 10.0, False),
            (1, 0, 40.0, 40.0, 50.0, 50.0, True),
        ],
        [
            (1, 0, 0.9, 0.0, 0.0, 10.0, 10.0),  # takes box 0
            (1, 0, 0.8, 1.0, 0.0, 11.0, 10.0),  # best is box 0 (taken, IoU .82); box 1 has IoU .54
            (1, 0, 0.7, 40.0, 40.0, 50.0, 50.0),  # on the difficult box: ignored
        ],
    )
    voc = evaluate_detections(ann, pred, images=[1], protocol="voc12")
    assert voc.per_class.row(0, named=True)["n_gt"] == 2 and voc.per_class.row(0, named=True)["n_ignored"] == 1
    assert voc.summary["map_50"] == pytest.approx(0.5)  # TP then duplicate: recall stops at 1/2
    coco = evaluate_detections(ann.head(2), pred.head(2), images=[1], protocol="coco")
    assert coco.summary["map_50"] == pytest.approx(1.0)  # COCO gives the second detection box 1
    # IoU exactly 0.5: [0,0,10,10] vs [0,0,10,20] -> 100 / 200
    ann2, pred2 = _frames([(1, 0, 0.0, 0.0, 10.0, 10.0, False)], [(1, 0, 0.9, 0.0, 0.0, 10.0, 20.0)])
    assert evaluate_detections(ann2, pred2, images=[1], protocol="voc07").summary["map_50"] == pytest.approx(1.0)
    assert evaluate_detections(ann2, pred2, images=[1], protocol="coco").summary["map_50"] == pytest.approx(1.0)


def test_voc_pr_curve_and_f1_columns():
    data = make_detection_set(3)
    report = evaluate_detections(data.annotations, data.predictions, images=data.images, protocol="voc12")
    assert report.pr_curve["iou_threshold"].unique().to_list() == [0.5]
    assert {"ap", "n_gt", "n_ignored", "n_pred", "f1", "f1_threshold", "f1_precision", "f1_recall"} <= set(
        report.per_class.columns
    )
    assert "ap_50" not in report.per_class.columns


def test_iou_exactly_one_half_is_a_true_positive_as_in_the_devkit():
    """Objects A and B; detections: A exactly (TP), one at IoU exactly 0.5 with B (100 / 200), one far away.

    Devkit (>= 0.5): TP, TP, FP -> recall 1/2, 1, 1 at precision 1, 1, 2/3: VOC12 = VOC07 = 1.
    (py-faster-rcnn's > 0.5 would make it TP, FP, FP: VOC12 = 1/2, VOC07 = 6/11.)
    """
    ann, pred = _frames(
        [(1, 0, 0.0, 0.0, 10.0, 10.0, False), (1, 0, 20.0, 0.0, 30.0, 10.0, False)],
        [(1, 0, 0.9, 0.0, 0.0, 10.0, 10.0), (1, 0, 0.8, 20.0, 0.0, 30.0, 20.0), (1, 0, 0.7, 60.0, 60.0, 70.0, 70.0)],
    )
    for protocol in ("voc07", "voc12"):
        report = evaluate_detections(ann, pred, images=[1], protocol=protocol)
        assert report.summary["map_50"] == pytest.approx(1.0), protocol


def test_a_best_match_exactly_on_one_half_with_a_difficult_box_is_ignored():
    """The first detection's best box is the difficult one, at IoU exactly 0.5: ignored (neither TP
    nor FP), so the second detection's TP has precision 1: VOC12 = VOC07 = 1 (with > 0.5 it would
    be a FP first: precision 1/2 at recall 1, VOC12 = 1/2)."""
    ann, pred = _frames(
        [(1, 0, 0.0, 0.0, 10.0, 10.0, False), (1, 0, 40.0, 40.0, 50.0, 50.0, True)],
        [(1, 0, 0.9, 40.0, 40.0, 50.0, 60.0), (1, 0, 0.8, 0.0, 0.0, 10.0, 10.0)],
    )
    for protocol in ("voc07", "voc12"):
        assert evaluate_detections(ann, pred, images=[1], protocol=protocol).summary["map_50"] == pytest.approx(1.0), (
            protocol
        )


def test_the_11_point_grid_is_the_devkits_so_a_recall_of_exactly_0_6_counts_at_0_6():
    """Five objects, three found first (precision 1 up to recall 3/5 = 0.6), then only false positives.

    The devkit's points 0, 0.1, ..., 0.6 see precision 1: VOC07 = 7/11. np.arange(0, 1.1, 0.1)'s
    sixth point is 0.6000000000000001 > 3/5, which would give 6/11.
    """
    gts = [(1, 0, 20.0 * i, 0.0, 20.0 * i + 10.0, 10.0, False) for i in range(5)]
    dets = [(1, 0, 0.9 - 0.1 * i, 20.0 * i, 0.0, 20.0 * i + 10.0, 10.0) for i in range(3)]
    dets += [(1, 0, 0.3, 200.0, 200.0, 210.0, 210.0)]
    ann, pred = _frames(gts, dets)
    assert (
        3 / 5 >= DEVKIT_07_POINTS[6] and 3 / 5 < np.arange(0.0, 1.1, 0.1)[6]
    )  # the case really sits on the difference
    assert evaluate_detections(ann, pred, images=[1], protocol="voc07").summary["map_50"] == pytest.approx(
        7 / 11, abs=1e-15
    )
    assert evaluate_detections(ann, pred, images=[1], protocol="voc12").summary["map_50"] == pytest.approx(3 / 5)


def test_the_devkit_grid_is_matlabs_colon():
    from cvcore.metrics._protocols import VOC07_RECALL_THRESHOLDS, matlab_colon

    assert VOC07_RECALL_THRESHOLDS.tolist() == DEVKIT_07_POINTS  # bit for bit
    assert matlab_colon(0.0, 0.25, 1.0).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert matlab_colon(1.0, 0.5, 2.5).tolist() == [1.0, 1.5, 2.0, 2.5]
