"""Matching detections to ground truth: COCO's greedy matching and the PASCAL VOC rule.

Both produce a :class:`Matches`: for every detection that matched anything, bit ``a * T + t``
of ``matched`` says it matched at IoU threshold ``t`` in area range ``a``, and the same bit of
``ignored`` says the ground truth it matched is ignored (crowd, difficult, or outside the area
range), so the detection is neither a true nor a false positive. Unmatched detections are false
positives when their own area is in range, and ignored otherwise (pycocotools' rule).

COCO matching is greedy per (image, category): detections in score order each take the best
still-free ground truth with IoU >= t, preferring non-ignored ground truth, then higher IoU,
then (pycocotools' ``<`` test) the later ground truth in input order; crowd ground truth can be
taken many times and uses intersection over the detection's area. The greedy loop is sequential
only *within* a group, so it is run as "steps": step s lets the s-th candidate detection of every
group choose at once, in NumPy, for all 10 thresholds x 4 area ranges together. The number of
steps is the largest number of overlapping detections in one group, not the number of boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvcore.metrics._inputs import DetectionInputs
from cvcore.metrics._pairs import iter_pairs

# The COCO parameters, written exactly as pycocotools' Params.setDetParams writes them, so the
# float values (e.g. 0.6000000000000001) are the same.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
COCO_AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
COCO_AREA_NAMES = ("all", "small", "medium", "large")
COCO_MAX_DETS = (1, 10, 100)

VOC_IOU_THRESHOLD = 0.5
NO_LIMIT = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Matches:
    """Which detections matched, per (area range, IoU threshold); see the module docstring."""

    iou_thresholds: np.ndarray  # float64 [T]
    dt_in_range: np.ndarray  # bool [A, N] detection area inside area range a
    gt_regular: np.ndarray  # bool [A, G] ground truth counted in recall for area range a
    pos: np.ndarray  # int64 [E] detection indices (evaluation order) that matched something, ascending
    matched: np.ndarray  # uint64 [E]
    ignored: np.ndarray  # uint64 [E]
    gt_first: np.ndarray  # int64 [E] ground truth taken at bit 0 (area all, lowest IoU threshold), -1 if none
    max_det: int  # detections beyond this rank in their (image, category) were not matched

    @property
    def num_thresholds(self) -> int:
        return int(self.iou_thresholds.size)

    def bits(self, area: int) -> tuple[np.ndarray, np.ndarray]:
        """bool [T, E] matched / matched-to-ignored for area range ``area``."""
        shifts = (np.uint64(area * self.num_thresholds) + np.arange(self.num_thresholds, dtype=np.uint64))[:, None]
        one = np.uint64(1)
        return ((self.matched[None, :] >> shifts) & one).astype(bool), ((self.ignored[None, :] >> shifts) & one).astype(bool)


def match_coco(inputs: DetectionInputs, *, max_det: int = COCO_MAX_DETS[-1]) -> Matches:
    """pycocotools' evaluateImg() matching for all IoU thresholds and area ranges at once."""
    thresholds = COCO_IOU_THRESHOLDS
    T, A = thresholds.size, len(COCO_AREA_RANGES)
    lo, hi = COCO_AREA_RANGES[:, :1], COCO_AREA_RANGES[:, 1:]
    w = inputs.dt_box[:, 2] - inputs.dt_box[:, 0]
    h = inputs.dt_box[:, 3] - inputs.dt_box[:, 1]
    dt_area = w * h  # what pycocotools' loadRes stores as a detection's area
    dt_in_range = (dt_area >= lo) & (dt_area <= hi)
    gt_regular = ~inputs.gt_crowd & (inputs.gt_area >= lo) & (inputs.gt_area <= hi)

    K = inputs.num_categories
    kept = np.flatnonzero(inputs.dt_rank < max_det)
    dt_key = inputs.dt_img[kept] * K + inputs.dt_cat[kept]
    gt_key = inputs.gt_img * K + inputs.gt_cat
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for chunk in iter_pairs(dt_key, gt_key):
        d, g = kept[chunk.det], chunk.gt
        iou = coco_box_iou(inputs.dt_box[d], inputs.gt_box[g], inputs.gt_crowd[g])
        ok = iou >= thresholds[0]
        if ok.any():
            found.append(_greedy(d[ok], g[ok], iou[ok], inputs, gt_regular, thresholds))
    return Matches(
        iou_thresholds=thresholds,
        dt_in_range=dt_in_range,
        gt_regular=gt_regular,
        **_combine(found),
        max_det=max_det,
    )


def coco_box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xyxy ``dt[P, 4]`` and ``gt[P, 4]``, computed as pycocotools' C code does.

    pycocotools works on xywh boxes and forms the right edge as ``x + w``; repeating its exact
    float operations (rather than calling torchvision's box_iou) keeps IoUs that sit on a
    threshold on the same side of it. Crowd ground truth uses intersection / detection area.
    """
    dw, dh = dt[:, 2] - dt[:, 0], dt[:, 3] - dt[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    iw = np.minimum(dw + dt[:, 0], gw + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    ih = np.minimum(dh + dt[:, 1], gh + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = iw * ih
    da, ga = dw * dh, gw * gh
    union = np.where(crowd, da, ga + da - inter)
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _greedy(
    d: np.ndarray, g: np.ndarray, iou: np.ndarray, inputs: DetectionInputs, gt_regular: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching of one chunk's candidate pairs (IoU >= the lowest threshold).

    Returns (detection, matched bit, ignored bit, ground truth if bit 0 else -1) per matched
    (detection, area, threshold).
    """
    T = thresholds.size
    K = inputs.num_categories
    key = inputs.dt_img[d] * K + inputs.dt_cat[d]
    ordinal = np.cumsum(np.r_[True, d[1:] != d[:-1]]) - 1  # candidate detection number
    group_first = np.maximum.accumulate(np.where(np.r_[True, key[1:] != key[:-1]], ordinal, 0))
    step = ordinal - group_first  # the detection's turn inside its (image, category)
    n_det = int(ordinal[-1]) + 1
    gt_local, g_code = np.unique(g, return_inverse=True)
    crowd = inputs.gt_crowd[g]

    steps, cds, gks, crowds, pair, combo = [], [], [], [], [], []
    for a in range(gt_regular.shape[0]):
        ignored = ~gt_regular[a, g]
        # a detection's preference: non-ignored first, then higher IoU, then the later ground truth
        order = np.lexsort((-g, -iou, ignored, ordinal))
        for t in range(T):
            sel = order[iou[order] >= thresholds[t]]
            c = a * T + t
            steps.append(step[sel])
            cds.append(c * n_det + ordinal[sel])
            gks.append(c * gt_local.size + g_code[sel])
            crowds.append(crowd[sel])
            pair.append(sel)
            combo.append(np.full(sel.size, c, dtype=np.int64))
    step_all = np.concatenate(steps)
    by_step = np.argsort(step_all, kind="stable")  # keeps (combo, detection, preference) order
    cd, gk, cr = np.concatenate(cds)[by_step], np.concatenate(gks)[by_step], np.concatenate(crowds)[by_step]
    bounds = np.searchsorted(step_all[by_step], np.arange(int(step_all.max()) + 2))

    taken = np.zeros(gt_regular.shape[0] * T * gt_local.size, dtype=bool)
    won: list[np.ndarray] = []
    for s in range(bounds.size - 1):
        lo, hi = bounds[s], bounds[s + 1]
        free = np.flatnonzero(cr[lo:hi] | ~taken[gk[lo:hi]])
        if free.size == 0:
            continue
        first = free[np.r_[True, np.diff(cd[lo:hi][free]) != 0]]  # best free choice per (combo, detection)
        taken[gk[lo:hi][first]] = True
        won.append(lo + first)
    rows = by_step[np.concatenate(won)] if won else np.zeros(0, dtype=np.int64)
    p, c = np.concatenate(pair)[rows], np.concatenate(combo)[rows]
    bit = np.left_shift(np.uint64(1), c.astype(np.uint64))
    ign = ~gt_regular[c // T, g[p]]
    return d[p], bit, np.where(ign, bit, np.uint64(0)), np.where(c == 0, g[p], -1)


def _combine(found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """OR together the bits of each detection, over chunks and combinations."""
    found = [f for f in found if f[0].size]
    if not found:
        empty = np.zeros(0, dtype=np.uint64)
        none = np.zeros(0, dtype=np.int64)
        return {"pos": none, "matched": empty, "ignored": empty, "gt_first": none}
    det = np.concatenate([f[0] for f in found])
    order = np.argsort(det, kind="stable")
    det = det[order]
    starts = np.flatnonzero(np.r_[True, det[1:] != det[:-1]])
    return {
        "pos": det[starts],
        "matched": np.bitwise_or.reduceat(np.concatenate([f[1] for f in found])[order], starts),
        "ignored": np.bitwise_or.reduceat(np.concatenate([f[2] for f in found])[order], starts),
        "gt_first": np.maximum.reduceat(np.concatenate([f[3] for f in found])[order], starts),
    }


def match_voc(inputs: DetectionInputs) -> Matches:
    """The PASCAL VOC devkit rule at IoU > 0.5, per (image, category).

    Each detection looks only at the ground truth it overlaps most (the first such box on ties,
    difficult and crowd boxes included). If that IoU is > 0.5: an ignored (difficult or crowd)
    box makes the detection ignored; a free box makes it a true positive and takes the box; a
    box already taken by a higher-ranked detection makes it a false positive (a duplicate).
    IoU is in continuous coordinates (no VOC "+1" pixel), as everywhere in cvflow.
    """
    regular = ~(inputs.gt_crowd | inputs.gt_difficult)
    N = inputs.dt_score.size
    K = inputs.num_categories
    best_d, best_g = [], []
    for chunk in iter_pairs(inputs.dt_img * K + inputs.dt_cat, inputs.gt_img * K + inputs.gt_cat):
        d, g = chunk.det, chunk.gt
        iou = box_iou_rows(inputs.dt_box[d], inputs.gt_box[g])
        ok = iou > VOC_IOU_THRESHOLD
        if not ok.any():
            continue
        d, g, iou = d[ok], g[ok], iou[ok]
        order = np.lexsort((g, -iou, d))  # per detection: highest IoU, then first ground truth
        d, g = d[order], g[order]
        first = np.r_[True, d[1:] != d[:-1]]
        best_d.append(d[first])
        best_g.append(g[first])
    d = np.concatenate(best_d) if best_d else np.zeros(0, dtype=np.int64)
    g = np.concatenate(best_g) if best_g else np.zeros(0, dtype=np.int64)
    # among detections whose best box is the same regular box, the highest-ranked one takes it
    order = np.lexsort((d, g))
    d, g = d[order], g[order]
    takes = np.r_[True, g[1:] != g[:-1]] & regular[g]
    matched = takes | ~regular[g]
    d, g, ign = d[matched], g[matched], ~regular[g[matched]]
    order = np.argsort(d)
    one = np.uint64(1)
    return Matches(
        iou_thresholds=np.array([VOC_IOU_THRESHOLD]),
        dt_in_range=np.ones((1, N), dtype=bool),
        gt_regular=regular[None, :],
        pos=d[order],
        matched=np.full(d.size, one, dtype=np.uint64),
        ignored=np.where(ign[order], one, np.uint64(0)),
        gt_first=g[order],
        max_det=NO_LIMIT,
    )


def box_iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xyxy boxes ``a[P, 4]`` and ``b[P, 4]`` (torchvision's formula, pairwise rows).

    torchvision.ops.box_iou computes the full [N, M] matrix; the metrics only need the P
    candidate pairs, so this is the same arithmetic on aligned rows.
    """
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(inter > 0, union, 1.0), 0.0)
