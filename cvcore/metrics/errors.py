"""Why AP is lost: a TIDE-like breakdown of false positives and missed objects.

Following TIDE (Bolya et al., ECCV 2020) with its thresholds (foreground IoU 0.5, background
0.1), every false positive at IoU 0.5 (area all, the protocol's matching) gets one label, tested
in TIDE's order:

- ``localization``: right class, best IoU with a box of its class in [0.1, 0.5);
- ``classification``: IoU >= 0.5 with a box of another class;
- ``duplicate``: right class, IoU >= 0.5, but that box was already taken by a better detection;
- ``background``: IoU < 0.1 with every box;
- ``both``: wrong class and poorly placed (IoU in [0.1, 0.5) with a box of another class);

and ground truth never matched is ``missed`` unless a localization / classification / both error
points at it (TIDE counts those under the error, not as missed).

``dap`` is the AP@0.5 (the protocol's interpolation, mean over classes) gained by an oracle that
removes the errors of one type: their false positives, or for ``missed`` the missed ground truth.
TIDE's own oracle also turns some classification / localization errors into true positives, so
its dAP for those can be larger than the removal oracle's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from cvcore.metrics._inputs import DetectionInputs, Frame, load_detection_inputs
from cvcore.metrics._matching import Matches, box_iou_rows
from cvcore.metrics._pairs import iter_pairs
from cvcore.metrics._protocols import check_protocol, class_ap, match, max_det, mean_ap

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")


@dataclass(frozen=True)
class ErrorBreakdown:
    """What :func:`detection_errors` finds.

    - ``summary``: error, count, dap (AP@0.5 gained by removing that error type), one row per type.
    - ``per_class``: category_id and one count column per error type.
    - ``false_positives``: row (in the predictions frame), image_id, category_id, score, error,
      iou (best IoU with any counted box), gt_category_id (that box's class; null for background).
    - ``ap_50``: the AP@0.5 the dAPs are measured from.
    """

    summary: pl.DataFrame
    per_class: pl.DataFrame
    false_positives: pl.DataFrame
    ap_50: float


def detection_errors(
    annotations: Frame,
    predictions: Frame,
    *,
    images: Frame | Sequence[int],
    protocol: str = "coco",
    categories: Frame | Sequence[int] | None = None,
) -> ErrorBreakdown:
    """Label every false positive and missed object at IoU 0.5 (see the module docstring)."""
    check_protocol(protocol)
    inputs = load_detection_inputs(annotations, predictions, images=images, categories=categories)
    matches = match(inputs, protocol)
    fp, taken = _false_positives_and_taken(inputs, matches, protocol)
    best = _best_overlaps(inputs, np.flatnonzero(fp), regular=matches.gt_regular[0])
    labels = _labels(best)
    missed = matches.gt_regular[0] & ~taken
    covered = best["target"][np.isin(labels, ("localization", "classification", "both"))]
    missed[covered[covered >= 0]] = False

    base_ap = class_ap(inputs, matches, protocol)[0]
    base = mean_ap(base_ap[None, :])
    rows = []
    for error in ERROR_TYPES:
        if error == "missed":
            fixed = class_ap(inputs, matches, protocol, drop_gts=missed)[0]
            count = int(missed.sum())
        else:
            drop = np.zeros(fp.size, dtype=bool)
            drop[best["det"][labels == error]] = True
            fixed = class_ap(inputs, matches, protocol, drop_dets=drop)[0]
            count = int((labels == error).sum())
        rows.append({"error": error, "count": count, "dap": mean_ap(fixed[None, :]) - base if count else 0.0})

    det = best["det"]
    # the box an error points at; background errors point at none
    target = np.where(labels == "background", -1, best["target"])
    points = target >= 0
    target_category = np.zeros(target.size, dtype=np.int32)
    target_category[points] = inputs.category_ids[inputs.gt_cat[target[points]]]
    false_positives = pl.DataFrame(
        {
            "row": pl.Series(inputs.dt_row[det], dtype=pl.Int64),
            "image_id": pl.Series(inputs.image_ids[inputs.dt_img[det]], dtype=pl.Int64),
            "category_id": pl.Series(inputs.category_ids[inputs.dt_cat[det]], dtype=pl.Int32),
            "score": pl.Series(inputs.dt_score[det], dtype=pl.Float64),
            "error": pl.Series(labels.tolist(), dtype=pl.String),
            "iou": pl.Series(best["iou"], dtype=pl.Float64),
            "gt_category_id": pl.Series(target_category, dtype=pl.Int32),
        }
    ).with_columns(pl.when(pl.Series(points)).then(pl.col("gt_category_id")).alias("gt_category_id"))
    return ErrorBreakdown(
        summary=pl.DataFrame(rows, schema={"error": pl.String, "count": pl.Int64, "dap": pl.Float64}),
        per_class=_per_class(inputs, false_positives, missed),
        false_positives=false_positives,
        ap_50=base,
    )


def _false_positives_and_taken(
    inputs: DetectionInputs, matches: Matches, protocol: str
) -> tuple[np.ndarray, np.ndarray]:
    """bool [N] false positives at IoU 0.5 (area all), and bool [G] ground truth taken there."""
    hit, ign = matches.bits(0)
    matched = np.zeros(inputs.dt_score.size, dtype=bool)
    matched[matches.pos[hit[0]]] = True
    fp = (inputs.dt_rank < max_det(protocol)) & matches.dt_in_range[0] & ~matched
    taken = np.zeros(inputs.gt_img.size, dtype=bool)
    taken[matches.gt_first[hit[0] & ~ign[0]]] = True
    return fp, taken


def _best_overlaps(inputs: DetectionInputs, fp: np.ndarray, *, regular: np.ndarray) -> dict[str, np.ndarray]:
    """For each false positive: best IoU with a counted box of its class and of another class."""
    n = fp.size
    same = np.zeros(n)
    other = np.zeros(n)
    same_gt = np.full(n, -1, dtype=np.int64)
    other_gt = np.full(n, -1, dtype=np.int64)
    counted = np.flatnonzero(regular)
    for chunk in iter_pairs(inputs.dt_img[fp], inputs.gt_img[counted]):
        i, g = chunk.det, counted[chunk.gt]
        iou = box_iou_rows(inputs.dt_box[fp[i]], inputs.gt_box[g])
        is_same = inputs.gt_cat[g] == inputs.dt_cat[fp[i]]
        for mask, best, best_gt in ((is_same, same, same_gt), (~is_same, other, other_gt)):
            ii, gg, vv = i[mask], g[mask], iou[mask]
            order = np.lexsort((-vv, ii))
            ii, gg, vv = ii[order], gg[order], vv[order]
            first = np.r_[True, ii[1:] != ii[:-1]] if ii.size else np.zeros(0, dtype=bool)
            better = vv[first] > best[ii[first]]
            best[ii[first][better]] = vv[first][better]
            best_gt[ii[first][better]] = gg[first][better]
    return {"det": fp, "same": same, "same_gt": same_gt, "other": other, "other_gt": other_gt}


def _labels(best: dict[str, np.ndarray]) -> np.ndarray:
    same, other = best["same"], best["other"]
    conditions = [
        (same >= BACKGROUND_IOU) & (same < FOREGROUND_IOU),
        other >= FOREGROUND_IOU,
        same >= FOREGROUND_IOU,
        np.maximum(same, other) < BACKGROUND_IOU,
    ]
    labels = np.select(conditions, ["localization", "classification", "duplicate", "background"], default="both")
    best["target"] = np.select(
        conditions[:3], [best["same_gt"], best["other_gt"], best["same_gt"]], default=best["other_gt"]
    )
    best["iou"] = np.maximum(same, other)
    return labels


def _per_class(inputs: DetectionInputs, false_positives: pl.DataFrame, missed: np.ndarray) -> pl.DataFrame:
    frame = pl.DataFrame({"category_id": pl.Series(inputs.category_ids, dtype=pl.Int32)})
    counts = false_positives.group_by("category_id", "error").len().pivot("error", index="category_id", values="len")
    frame = frame.join(counts, on="category_id", how="left", maintain_order="left")
    frame = frame.with_columns(
        pl.Series("missed", np.bincount(inputs.gt_cat[missed], minlength=inputs.num_categories), dtype=pl.Int64)
    )
    for error in ERROR_TYPES:
        if error not in frame.columns:
            frame = frame.with_columns(pl.lit(0, dtype=pl.Int64).alias(error))
    return frame.select("category_id", *[pl.col(e).fill_null(0).cast(pl.Int64) for e in ERROR_TYPES])
