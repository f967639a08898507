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


def true_positive_events(
    inputs: DetectionInputs,
    matches: Matches,
    *,
    area: int,
    max_det: int,
    image_weights: np.ndarray | None = None,
    drop_dets: np.ndarray | None = None,
    drop_gts: np.ndarray | None = None,
) -> Events:
    """TP events for area range ``area`` keeping detections of rank < ``max_det`` per (image, category).

    ``image_weights`` int64 [I]: how many times each image counts (bootstrap); ``drop_dets``
    bool [N] / ``drop_gts`` bool [G]: detections / ground truth removed from the counts
    (error analysis oracles).
    """
    T, K = matches.num_thresholds, inputs.num_categories
    kept = inputs.dt_rank < max_det
    countable = kept & matches.dt_in_range[area]  # unmatched ones of these are false positives
    if drop_dets is not None:
        countable &= ~drop_dets
    dt_w = None if image_weights is None else image_weights[inputs.dt_img]
    cum_fp_candidates = np.cumsum(countable if dt_w is None else dt_w * countable, dtype=np.int64)
    starts = inputs.category_starts
    before_category = np.concatenate([[0], cum_fp_candidates])[starts[:-1]]

    gt_w = matches.gt_regular[area].astype(np.int64)
    if image_weights is not None:
        gt_w = gt_w * image_weights[inputs.gt_img]
    if drop_gts is not None:
        gt_w = np.where(drop_gts, 0, gt_w)
    n_pos = np.bincount(inputs.gt_cat, weights=gt_w, minlength=K).astype(np.int64)

    sel = kept[matches.pos]
    hit, ign = matches.bits(area)
    hit, ign = hit[:, sel], ign[:, sel]
    t_idx, e_idx = np.nonzero(hit)  # ordered by threshold, then rank: segments come out sorted
    det = matches.pos[sel][e_idx]
    k = inputs.dt_cat[det]
    w = np.ones(det.size, dtype=np.int64) if dt_w is None else dt_w[det]
    is_tp = ~ign[t_idx, e_idx]
    segment = t_idx * K + k
    tp_step = w * is_tp
    cum_tp = _segmented_cumsum(segment, tp_step)
    cum_matched_candidates = _segmented_cumsum(segment, w * countable[det])
    fp = (cum_fp_candidates[det] - before_category[k]) - cum_matched_candidates

    event = tp_step > 0
    return Events(
        segment=segment[event],
        tp=cum_tp[event].astype(np.float64),
        fp=fp[event].astype(np.float64),
        det=det[event],
        n_pos=n_pos,
        tp_total=np.bincount(segment, weights=tp_step, minlength=T * K),
        num_thresholds=T,
        num_categories=K,
    )


def _segmented_cumsum(segment: np.ndarray, values: np.ndarray) -> np.ndarray:
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
