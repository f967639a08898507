"""The three protocols as curves over matches: COCO (101-point, 10 IoUs), VOC07 (11-point), VOC12 (all-point).

Shared by the report (detection.py), the error analysis (errors.py) and the bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cvcore.metrics._accumulate import (
    EventPlan,
    Events,
    all_point_ap,
    coco_precision,
    envelope,
    interpolate,
    plan_events,
    true_positive_events,
    voc_precision,
)
from cvcore.metrics._inputs import DetectionInputs
from cvcore.metrics._matching import COCO_MAX_DETS, COCO_RECALL_THRESHOLDS, NO_LIMIT, Matches, match_coco, match_voc

Protocol = Literal["coco", "voc07", "voc12"]
PROTOCOLS: tuple[str, ...] = ("coco", "voc07", "voc12")


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """MATLAB's ``start:step:stop`` for a whole number of steps, float for float.

    MATLAB computes the first half of the elements from ``start`` (``start + k * step``) and the
    second half from ``stop`` (``stop - k * step``), so ``0:0.1:1`` holds 0.6 and 0.7 as the
    doubles nearest them, where ``np.arange(0, 1.1, 0.1)`` holds 0.6000000000000001 and
    0.7000000000000001 (and misses a recall of exactly 3/5 or 7/10 at those points).
    """
    n = int(round((stop - start) / step))
    out = np.empty(n + 1)
    k = np.arange(n // 2 + 1)
    out[k] = start + k * step
    out[n - k] = stop - k * step
    return out


# The devkit's 11 points: VOCevaldet.m's ``for t=0:0.1:1, p=max(prec(rec>=t)) ...``
VOC07_RECALL_THRESHOLDS = matlab_colon(0.0, 0.1, 1.0)


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def match(inputs: DetectionInputs, protocol: str) -> Matches:
    """Match once; everything after (curves, bootstrap, oracles) reuses the result."""
    check_protocol(protocol)
    return match_coco(inputs) if protocol == "coco" else match_voc(inputs)


def max_det(protocol: str) -> int:
    return COCO_MAX_DETS[-1] if protocol == "coco" else NO_LIMIT


@dataclass(frozen=True)
class Curves:
    """Interpolated PR curves of one setting: T IoU thresholds x R recall points x K categories.

    ``precision`` is -1 for categories without counted ground truth (pycocotools' convention,
    so the arrays compare directly with ``COCOeval.eval``); ``recall`` is the final recall.
    """

    precision: np.ndarray  # float64 [T, R, K]
    score: np.ndarray  # float64 [T, R, K] score of the detection where that recall is reached
    recall: np.ndarray  # float64 [T, K]
    n_pos: np.ndarray  # int64 [K]


def curves(
    inputs: DetectionInputs,
    matches: Matches,
    protocol: str,
    *,
    area: int = 0,
    max_dets: int | None = None,
    image_weights: np.ndarray | None = None,
    recall_thresholds: np.ndarray = COCO_RECALL_THRESHOLDS,
) -> Curves:
    """pycocotools' accumulate() for one (area range, max detections) setting, any protocol's precision."""
    limit = max_det(protocol) if max_dets is None else max_dets
    plan = plan_events(inputs, matches, area=area, max_det=limit)
    ev = true_positive_events(plan, image_weights=image_weights)
    env = envelope(ev.segment, _precision(ev, protocol))
    interp = interpolate(ev, env, recall_thresholds)
    T, K, R = ev.num_thresholds, ev.num_categories, recall_thresholds.size
    precision = interp.precision.reshape(T, K, R).transpose(0, 2, 1).copy()
    score = np.zeros(T * K * R)
    reached = interp.event.ravel() >= 0
    score[reached] = inputs.dt_score[ev.det[interp.event.ravel()[reached]]]
    score = score.reshape(T, K, R).transpose(0, 2, 1).copy()
    # pycocotools reports the top detection's score at recall 0 (its lookup index 0)
    starts = inputs.category_starts
    has_dets = starts[1:] > starts[:-1]
    score[:, 0, has_dets] = inputs.dt_score[starts[:-1][has_dets]]
    valid = ev.n_pos > 0
    precision[:, :, ~valid] = -1.0
    score[:, :, ~valid] = -1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(valid, ev.tp_total.reshape(T, K) / ev.n_pos, -1.0)
    return Curves(precision=precision, score=score, recall=recall, n_pos=ev.n_pos)


def class_ap(
    inputs: DetectionInputs,
    matches: Matches,
    protocol: str,
    *,
    image_weights: np.ndarray | None = None,
    drop_dets: np.ndarray | None = None,
    drop_gts: np.ndarray | None = None,
) -> np.ndarray:
    """AP per (IoU threshold, category), float64 [T, K]; NaN where a category has no counted ground truth.

    COCO: mean of the 101-point interpolated precision (area all, 100 detections); VOC07:
    11-point; VOC12: all-point area. ``drop_*``: see :func:`plan_events`.
    """
    plan = plan_events(inputs, matches, area=0, max_det=max_det(protocol), drop_dets=drop_dets, drop_gts=drop_gts)
    return plan_ap(plan, protocol, image_weights=image_weights)


def plan_ap(plan: EventPlan, protocol: str, *, image_weights: np.ndarray | None = None) -> np.ndarray:
    """:func:`class_ap` of a prepared plan (the bootstrap calls this once per replicate)."""
    ev = true_positive_events(plan, image_weights=image_weights)
    T, K = ev.num_thresholds, ev.num_categories
    env = envelope(ev.segment, _precision(ev, protocol))
    if protocol == "voc12":
        ap = all_point_ap(ev, env)
    elif protocol == "voc07":
        points = interpolate(ev, env, VOC07_RECALL_THRESHOLDS).precision
        ap = np.zeros(T * K)
        for j in range(points.shape[1]):  # the devkit's running sum, same float order
            ap = ap + points[:, j] / 11.0
    else:
        ap = interpolate(ev, env, COCO_RECALL_THRESHOLDS).precision.mean(axis=1)
    ap = ap.reshape(T, K)
    ap[:, ev.n_pos == 0] = np.nan
    return ap


def mean_ap(ap: np.ndarray) -> float:
    """Mean over the defined entries of a [T, K] AP table; NaN when none is defined."""
    defined = ap[~np.isnan(ap)]
    return float(defined.mean()) if defined.size else float("nan")


def _precision(ev: Events, protocol: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return coco_precision(ev) if protocol == "coco" else voc_precision(ev)
