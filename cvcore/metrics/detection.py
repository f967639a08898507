"""Detection metrics: AP / mAP under the COCO and PASCAL VOC protocols (docs/ARCHITECTURE.md §4).

``protocol="coco"`` reproduces pycocotools' bbox evaluation number for number (IoU 0.50:0.05:0.95,
101 recall points, 1/10/100 detections per image and category, area ranges from the ground
truth's ``area`` column, crowd boxes matched by intersection over the detection's area and
ignored, categories without ground truth left out of the means). ``difficult`` is not part of
the COCO protocol and is not used by it. ``"voc07"`` (11-point) and ``"voc12"`` (all-point)
follow the official devkit's ``VOCevaldet.m``: a detection matches when its best IoU is >= 0.5
(py-faster-rcnn's ``voc_eval.py`` and detectron2 use > 0.5 and differ from it exactly at 0.5),
with ``iscrowd`` and ``difficult`` ground truth ignored; IoU is in continuous coordinates (no
devkit "+1" pixel), as everywhere in cvflow.

Boxes are xyxy inside cvflow: a COCO ``[x, y, w, h]`` becomes ``x1 = x, x2 = x + w`` when read,
and the COCO IoU re-forms ``w = x2 - x1`` as pycocotools' C code would from ``w``. ``x + w - x``
is not always ``w`` in floating point, so an IoU can differ from pycocotools' by one rounding
step; where that IoU sits exactly on a threshold (0.5, 0.55, ...), the match (and so AP) can
differ. Integer or short-decimal boxes, as in COCO's files, are exact.

Inputs are polars DataFrames or LazyFrames in the cvcore.schema ANNOTATIONS / DETECTIONS /
IMAGES layouts; nothing here prints, plots or writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from cvcore.metrics._accumulate import segmented_cumsum
from cvcore.metrics._inputs import DetectionInputs, Frame, load_detection_inputs
from cvcore.metrics._matching import (
    COCO_IOU_THRESHOLDS,
    COCO_MAX_DETS,
    COCO_RECALL_THRESHOLDS,
    Matches,
)
from cvcore.metrics._protocols import Curves, check_protocol, class_ap, curves, match, max_det, mean_ap

log = logging.getLogger(__name__)

F1_CURVE_POINTS = 200  # points kept per class in DetectionReport.f1_curve

COCO_SUMMARY_KEYS = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip


@dataclass(frozen=True)
class DetectionReport:
    """Everything :func:`evaluate_detections` measures.

    - ``summary``: COCO: the 12 numbers of pycocotools' ``stats`` in order (``map``, ``map_50``,
      ``map_75``, ``map_small|medium|large``, ``mar_1|10|100``, ``mar_small|medium|large``); VOC:
      ``map_50``. NaN where pycocotools prints -1 (no ground truth to score against).
    - ``per_class``: category_id, ap (COCO: also ap_50, ap_75, ap_small, ap_medium, ap_large,
      ar_100), n_gt (counted ground truth), n_ignored (crowd / difficult), n_pred, and the score
      threshold that maximises F1 at IoU 0.5: f1, f1_threshold, f1_precision, f1_recall. AP
      columns are null for categories without counted ground truth.
    - ``pr_curve``: category_id, iou_threshold, recall (0, 0.01, ..., 1), precision (interpolated,
      i.e. the best precision at that recall or beyond), score (the score at which that recall is
      reached). COCO: area all, 100 detections, every IoU threshold.
    - ``f1_curve``: category_id, score, precision, recall, f1 at IoU 0.5, at achievable score
      thresholds (at most 200 per class, the best one always kept).
    """

    protocol: str
    summary: Mapping[str, float]
    per_class: pl.DataFrame
    pr_curve: pl.DataFrame
    f1_curve: pl.DataFrame
    num_images: int


def evaluate_detections(
    annotations: Frame,
    predictions: Frame,
    *,
    images: Frame | Sequence[int],
    protocol: str = "coco",
    categories: Frame | Sequence[int] | None = None,
) -> DetectionReport:
    """Score ``predictions`` against ``annotations`` on the ``images`` universe.

    ``images`` (a frame with ``image_id``, or ids) fixes the evaluated images: ground truth and
    predictions on other images are left out, and detections on evaluated images without ground
    truth are false positives. ``categories`` (frame with ``category_id``, or ids; default: all
    seen) fixes the categories listed in ``per_class``. Boxes are xyxy pixels.

    Raises SchemaError / ValueError naming the input, column and first bad row.
    """
    check_protocol(protocol)
    inputs = load_detection_inputs(annotations, predictions, images=images, categories=categories)
    matches = match(inputs, protocol)
    report = _coco_report(inputs, matches) if protocol == "coco" else _voc_report(inputs, matches, protocol)
    log.debug("evaluated %d images, %d detections: %s", inputs.num_images, inputs.dt_score.size, report.summary)
    return report


def _coco_report(inputs: DetectionInputs, matches: Matches) -> DetectionReport:
    all_, small, medium, large = range(4)
    m1, m10, m100 = COCO_MAX_DETS
    settings = [(all_, m100), (small, m100), (medium, m100), (large, m100), (all_, m1), (all_, m10)]
    c = {s: curves(inputs, matches, "coco", area=s[0], max_dets=s[1]) for s in settings}
    main = c[(all_, m100)]
    summary = {
        "map": _mean(main.precision),
        "map_50": _mean(main.precision[[0]]),
        "map_75": _mean(main.precision[[5]]),
        "map_small": _mean(c[(small, m100)].precision),
        "map_medium": _mean(c[(medium, m100)].precision),
        "map_large": _mean(c[(large, m100)].precision),
        "mar_1": _mean(c[(all_, m1)].recall),
        "mar_10": _mean(c[(all_, m10)].recall),
        "mar_100": _mean(main.recall),
        "mar_small": _mean(c[(small, m100)].recall),
        "mar_medium": _mean(c[(medium, m100)].recall),
        "mar_large": _mean(c[(large, m100)].recall),
    }
    ap_columns = {
        "ap": _class_mean(main.precision, axis=(0, 1)),
        "ap_50": _class_mean(main.precision[0], axis=0),
        "ap_75": _class_mean(main.precision[5], axis=0),
        **{
            f"ap_{name}": _class_mean(c[(a, m100)].precision, axis=(0, 1))
            for a, name in ((small, "small"), (medium, "medium"), (large, "large"))
        },
        "ar_100": _class_mean(main.recall, axis=0),
    }
    return DetectionReport(
        protocol="coco",
        summary=summary,
        per_class=_per_class(inputs, matches, "coco", main.n_pos, ap_columns),
        pr_curve=_pr_frame(inputs, main, COCO_IOU_THRESHOLDS),
        f1_curve=_f1_curve(inputs, matches, "coco", main.n_pos),
        num_images=inputs.num_images,
    )


def _voc_report(inputs: DetectionInputs, matches: Matches, protocol: str) -> DetectionReport:
    ap = class_ap(inputs, matches, protocol)[0]
    main = curves(inputs, matches, protocol)
    return DetectionReport(
        protocol=protocol,
        summary={"map_50": mean_ap(ap[None, :])},
        per_class=_per_class(
            inputs, matches, protocol, main.n_pos, {"ap": [None if np.isnan(v) else float(v) for v in ap]}
        ),
        pr_curve=_pr_frame(inputs, main, matches.iou_thresholds),
        f1_curve=_f1_curve(inputs, matches, protocol, main.n_pos),
        num_images=inputs.num_images,
    )


def _mean(values: np.ndarray) -> float:
    """pycocotools' ``np.mean(s[s > -1])``, same elements in the same order; NaN for its -1."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else float("nan")


def _class_mean(values: np.ndarray, *, axis: int | tuple[int, ...]) -> list[float | None]:
    """Mean over ``axis`` of [..., K] values per category; None where undefined (-1)."""
    means = np.where(values > -1, values, np.nan)
    out = []
    for k in range(values.shape[-1]):
        column = means[..., k]
        out.append(None if np.isnan(column).all() else float(np.mean(column)))
    return out


def _per_class(
    inputs: DetectionInputs, matches: Matches, protocol: str, n_pos: np.ndarray, ap_columns: dict
) -> pl.DataFrame:
    n_ignored = np.bincount(inputs.gt_cat, weights=_ignored(inputs, protocol), minlength=inputs.num_categories)
    frame = pl.DataFrame(
        {
            "category_id": pl.Series(inputs.category_ids, dtype=pl.Int32),
            **{name: pl.Series(values, dtype=pl.Float64) for name, values in ap_columns.items()},
            "n_gt": pl.Series(n_pos, dtype=pl.Int64),
            "n_ignored": pl.Series(n_ignored.astype(np.int64), dtype=pl.Int64),
            "n_pred": pl.Series(inputs.n_pred, dtype=pl.Int64),
        }
    )
    return frame.join(_best_f1(inputs, matches, protocol, n_pos), on="category_id", how="left", maintain_order="left")


def _ignored(inputs: DetectionInputs, protocol: str) -> np.ndarray:
    """Ground truth ignored whatever its size: crowd (COCO), crowd or difficult (VOC)."""
    return inputs.gt_crowd if protocol == "coco" else inputs.gt_crowd | inputs.gt_difficult


def _pr_frame(inputs: DetectionInputs, c: Curves, iou_thresholds: np.ndarray) -> pl.DataFrame:
    T, R, K = c.precision.shape
    valid = np.flatnonzero(c.n_pos > 0)
    t, r, k = np.meshgrid(np.arange(T), np.arange(R), valid, indexing="ij")
    t, r, k = t.ravel(), r.ravel(), k.ravel()
    recall_thresholds = COCO_RECALL_THRESHOLDS
    frame = pl.DataFrame(
        {
            "category_id": pl.Series(inputs.category_ids[k], dtype=pl.Int32),
            "iou_threshold": iou_thresholds[t],
            "recall": recall_thresholds[r],
            "precision": c.precision[t, r, k],
            "score": c.score[t, r, k],
        }
    )
    return frame.sort(["category_id", "iou_threshold", "recall"])


def _f1_points(inputs: DetectionInputs, matches: Matches, protocol: str, n_pos: np.ndarray) -> pl.DataFrame:
    """Precision/recall/F1 at IoU 0.5 (area all) at every achievable score threshold.

    A threshold keeps every detection scoring at least it, so points are taken at the last
    detection of each run of equal scores, never between two equal scores.
    """
    kept = inputs.dt_rank < max_det(protocol)
    hit, ign = matches.bits(0)
    matched = np.zeros(kept.size, dtype=bool)
    matched[matches.pos[hit[0]]] = True
    tp = np.zeros(kept.size, dtype=bool)
    tp[matches.pos[hit[0] & ~ign[0]]] = True
    fp = kept & matches.dt_in_range[0] & ~matched
    idx = np.flatnonzero(kept)
    cat, score = inputs.dt_cat[idx], inputs.dt_score[idx]
    ctp = segmented_cumsum(cat, tp[idx].astype(np.int64))
    cfp = segmented_cumsum(cat, fp[idx].astype(np.int64))
    end = np.r_[(cat[1:] != cat[:-1]) | (score[1:] != score[:-1]), True] if idx.size else np.zeros(0, dtype=bool)
    end &= (ctp + cfp) > 0
    cat, score, ctp, cfp = cat[end], score[end], ctp[end], cfp[end]
    npos = n_pos[cat]
    ok = npos > 0
    cat, score, ctp, cfp, npos = cat[ok], score[ok], ctp[ok], cfp[ok], npos[ok]
    return pl.DataFrame(
        {
            "category_id": pl.Series(inputs.category_ids[cat], dtype=pl.Int32),
            "score": score,
            "precision": ctp / (ctp + cfp),
            "recall": ctp / npos,
            "f1": 2.0 * ctp / (ctp + cfp + npos),
        }
    )


def _best_f1(inputs: DetectionInputs, matches: Matches, protocol: str, n_pos: np.ndarray) -> pl.DataFrame:
    points = _f1_points(inputs, matches, protocol, n_pos)
    best = (
        points.filter(pl.col("f1") > 0)
        .sort(["category_id", "f1", "score"], descending=[False, True, True])
        .group_by("category_id", maintain_order=True)
        .first()
        .select(
            "category_id",
            "f1",
            pl.col("score").alias("f1_threshold"),
            pl.col("precision").alias("f1_precision"),
            pl.col("recall").alias("f1_recall"),
        )
    )
    counted = pl.DataFrame({"category_id": pl.Series(inputs.category_ids[n_pos > 0], dtype=pl.Int32)})
    # a class with ground truth but no true positive has F1 0 at every threshold
    return counted.join(best, on="category_id", how="left").with_columns(pl.col("f1").fill_null(0.0))


def _f1_curve(inputs: DetectionInputs, matches: Matches, protocol: str, n_pos: np.ndarray) -> pl.DataFrame:
    points = _f1_points(inputs, matches, protocol, n_pos)
    n = pl.len().over("category_id")
    i = pl.int_range(pl.len()).over("category_id")
    is_best = pl.col("f1") == pl.col("f1").max().over("category_id")
    every = (n // F1_CURVE_POINTS).clip(lower_bound=1)
    return points.filter((i % every == 0) | (i == n - 1) | is_best)
