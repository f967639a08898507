"""From matches to precision/recall: the part of pycocotools' accumulate() that builds PR curves.

Everything works on *true-positive events*. Precision only rises at a true positive, and the
first detection reaching a recall level is always a true positive, so the interpolated
precision (the running maximum from the right) and every recall-threshold lookup only need the
cumulative TP/FP counts at the true positives. False positives are counted with one cumulative
sum over the ranked detections. That keeps memory at O(detections + matches), instead of
pycocotools' (thresholds x detections) arrays per category.

The same events, with integer weights per image, give the bootstrap: an image drawn w times
contributes each of its detections w times in a row, which changes counts, not matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from cvcore.metrics._inputs import DetectionInputs
from cvcore.metrics._matching import Matches

EPS = np.spacing(1)  # pycocotools' precision denominator guard


@dataclass(frozen=True)
class Events:
    """True positives of one (area range, max detections) setting, for T thresholds x K categories.

    Events are sorted by segment ``t * K + k``, then by rank; ``tp``/``fp`` are the cumulative
    counts (as float64, like pycocotools) inside the segment up to and including the event.
    """

    segment: np.ndarray  # int64 [P]
    tp: np.ndarray  # float64 [P]
    fp: np.ndarray  # float64 [P]
    det: np.ndarray  # int64 [P] detection index (evaluation order)
    n_pos: np.ndarray  # int64 [K] ground truth counted in recall
    tp_total: np.ndarray  # float64 [T * K]
    num_thresholds: int
    num_categories: int

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.n_pos[self.segment % self.num_categories]


@dataclass(frozen=True)
class EventPlan:
    """The weight-independent part of :func:`true_positive_events` (the bootstrap reuses it)."""

    countable_img: np.ndarray  # int64 [C] image code of each detection that is a false positive unless matched
    upto_event: np.ndarray  # int64 [P] countable detections ranked at or before each matched detection
    upto_category: np.ndarray  # int64 [K] countable detections ranked before each category's first one
    segment: np.ndarray  # int64 [P] t * K + k of each (threshold, matched detection)
    det: np.ndarray  # int64 [P]
    det_img: np.ndarray  # int64 [P]
    is_tp: np.ndarray  # bool [P] matched to counted (not ignored) ground truth
    is_countable: np.ndarray  # bool [P]
    gt_img: np.ndarray  # int64 [G'] counted ground truth
    gt_cat: np.ndarray  # int64 [G']
    num_thresholds: int
    num_categories: int


def plan_events(
    inputs: DetectionInputs,
    matches: Matches,
    *,
    area: int,
    max_det: int,
    drop_dets: np.ndarray | None = None,
    drop_gts: np.ndarray | None = None,
) -> EventPlan:
    """Prepare area range ``area``, keeping detections of rank < ``max_det`` per (image, category).

    ``drop_dets`` bool [N] / ``drop_gts`` bool [G]: detections / ground truth removed from the
    counts (the error analysis' oracles).
    """
    T, K = matches.num_thresholds, inputs.num_categories
    kept = inputs.dt_rank < max_det
    countable = kept & matches.dt_in_range[area]  # unmatched ones of these are false positives
    if drop_dets is not None:
        countable &= ~drop_dets
    upto = np.cumsum(countable, dtype=np.int64)
    starts = inputs.category_starts
    upto_category = np.concatenate([[0], upto])[starts[:-1]]

    sel = kept[matches.pos]
    hit, ign = matches.bits(area)
    hit, ign = hit[:, sel], ign[:, sel]
    t_idx, e_idx = np.nonzero(hit)  # ordered by threshold, then rank: segments come out sorted
    det = matches.pos[sel][e_idx]
    counted = matches.gt_regular[area] if drop_gts is None else matches.gt_regular[area] & ~drop_gts
    return EventPlan(
        countable_img=inputs.dt_img[countable],
        upto_event=upto[det],
        upto_category=upto_category,
        segment=t_idx * K + inputs.dt_cat[det],
        det=det,
        det_img=inputs.dt_img[det],
        is_tp=~ign[t_idx, e_idx],
        is_countable=countable[det],
        gt_img=inputs.gt_img[counted],
        gt_cat=inputs.gt_cat[counted],
        num_thresholds=T,
        num_categories=K,
    )


def true_positive_events(plan: EventPlan, *, image_weights: np.ndarray | None = None) -> Events:
    """TP events of a plan; ``image_weights`` int64 [I]: how often each image counts (bootstrap)."""
    T, K = plan.num_thresholds, plan.num_categories
    if image_weights is None:
        w = np.ones(plan.det.size, dtype=np.int64)
        upto_event, upto_category = plan.upto_event, plan.upto_category
        n_pos = np.bincount(plan.gt_cat, minlength=K).astype(np.int64)
    else:
        w = image_weights[plan.det_img]
        cum = np.concatenate([[0], np.cumsum(image_weights[plan.countable_img], dtype=np.int64)])
        upto_event, upto_category = cum[plan.upto_event], cum[plan.upto_category]
        n_pos = np.bincount(plan.gt_cat, weights=image_weights[plan.gt_img], minlength=K).astype(np.int64)
    k = plan.segment % K
    tp_step = w * plan.is_tp
    cum_tp = segmented_cumsum(plan.segment, tp_step)
    cum_matched_countable = segmented_cumsum(plan.segment, w * plan.is_countable)
    fp = (upto_event - upto_category[k]) - cum_matched_countable
    event = tp_step > 0
    return Events(
        segment=plan.segment[event],
        tp=cum_tp[event].astype(np.float64),
        fp=fp[event].astype(np.float64),
        det=plan.det[event],
        n_pos=n_pos,
        tp_total=np.bincount(plan.segment, weights=tp_step, minlength=T * K),
        num_thresholds=T,
        num_categories=K,
    )


def segmented_cumsum(segment: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Cumulative sum of int ``values`` restarting at each new value of the sorted ``segment``."""
    cum = np.cumsum(values, dtype=np.int64)
    if cum.size == 0:
        return cum
    starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    offset = cum[starts] - values[starts]
    return cum - np.repeat(offset, np.diff(np.r_[starts, cum.size]))


def envelope(segment: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Interpolated precision: the maximum of ``precision`` from each event to its segment's end.

    A segmented reverse cumulative maximum; polars does it exactly in one pass (NumPy has no
    segmented ``maximum.accumulate``).
    """
    if precision.size == 0:
        return precision
    frame = pl.DataFrame({"s": segment, "p": precision})
    return frame.select(pl.col("p").cum_max(reverse=True).over("s")).to_series().to_numpy()


def coco_precision(events: Events) -> np.ndarray:
    """pycocotools' raw precision ``tp / (fp + tp + eps)`` at each event."""
    return events.tp / (events.fp + events.tp + EPS)


def voc_precision(events: Events) -> np.ndarray:
    """The VOC devkit's raw precision ``tp / max(tp + fp, eps)`` at each event."""
    return events.tp / np.maximum(events.tp + events.fp, np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Interpolated:
    """Interpolated precision at fixed recall thresholds, per (threshold, category) segment."""

    precision: np.ndarray  # float64 [T * K, R]; 0 beyond the reached recall
    event: np.ndarray  # int64 [T * K, R] index of the event giving each value, -1 if none


def interpolate(events: Events, env: np.ndarray, recall_thresholds: np.ndarray) -> Interpolated:
    """Precision at each recall threshold r: the envelope at the first event with recall >= r.

    Same as pycocotools' ``np.searchsorted(rc, recThrs, side='left')`` lookup: event i answers
    the thresholds r with recall[i-1] < r <= recall[i].
    """
    S, R = events.num_thresholds * events.num_categories, recall_thresholds.size
    out = np.zeros(S * R)
    which = np.full(S * R, -1, dtype=np.int64)
    if events.tp.size:
        reached = np.searchsorted(recall_thresholds, events.recall, side="right")
        seg = events.segment
        new = np.r_[True, seg[1:] != seg[:-1]]
        previous = np.where(new, 0, np.r_[0, reached[:-1]])
        counts = reached - previous
        total = int(counts.sum())
        src = np.repeat(np.arange(seg.size), counts)
        first = np.cumsum(counts) - counts
        j = np.arange(total) - np.repeat(first, counts) + np.repeat(previous, counts)
        flat = seg[src] * R + j
        out[flat] = env[src]
        which[flat] = src
    return Interpolated(precision=out.reshape(S, R), event=which.reshape(S, R))


def all_point_ap(events: Events, env: np.ndarray) -> np.ndarray:
    """VOC2010+ AP per segment: area under the interpolated curve, ``sum(Δrecall * envelope)``."""
    S = events.num_thresholds * events.num_categories
    if events.tp.size == 0:
        return np.zeros(S)
    rec = events.recall
    seg = events.segment
    step = rec - np.where(np.r_[True, seg[1:] != seg[:-1]], 0.0, np.r_[0.0, rec[:-1]])
    return np.bincount(seg, weights=step * env, minlength=S)
