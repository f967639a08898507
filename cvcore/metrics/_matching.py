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
group choose at once, in NumPy, for all 10 thresholds together (one area range at a time). The
number of steps is the largest number of overlapping detections in one group, not the number
of boxes. Only candidate pairs (IoU >= 0.5) are kept after the IoU pass, so memory follows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

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
MAX_CANDIDATES = 250_000  # candidate pairs greedily matched at once (x 10 thresholds per area range)
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
        return ((self.matched[None, :] >> shifts) & one).astype(bool), ((self.ignored[None, :] >> shifts) & one).astype(
            bool
        )


def match_coco(inputs: DetectionInputs, *, max_det: int = COCO_MAX_DETS[-1]) -> Matches:
    """pycocotools' evaluateImg() matching for all IoU thresholds and area ranges at once."""
    thresholds = COCO_IOU_THRESHOLDS
    lo, hi = COCO_AREA_RANGES[:, :1], COCO_AREA_RANGES[:, 1:]
    w = inputs.dt_box[:, 2] - inputs.dt_box[:, 0]
    h = inputs.dt_box[:, 3] - inputs.dt_box[:, 1]
    dt_area = w * h  # what pycocotools' loadRes stores as a detection's area
    dt_in_range = (dt_area >= lo) & (dt_area <= hi)
    gt_regular = ~inputs.gt_crowd & (inputs.gt_area >= lo) & (inputs.gt_area <= hi)

    K = inputs.num_categories
    dt_key = inputs.dt_img * K + inputs.dt_cat
    kept = np.flatnonzero(inputs.dt_rank < max_det)
    found = []  # candidate pairs: only these are kept, all other pairs are dropped chunk by chunk
    for chunk in iter_pairs(dt_key[kept], inputs.gt_img * K + inputs.gt_cat):
        d, g = kept[chunk.det], chunk.gt
        iou = coco_box_iou(inputs.dt_box[d], inputs.gt_box[g], inputs.gt_crowd[g])
        ok = iou >= thresholds[0]
        found.append((d[ok], g[ok], iou[ok]))
    d, g, iou = (np.concatenate(parts) for parts in zip(*found)) if found else (np.zeros(0, dtype=np.int64),) * 3
    # group the candidates by (image, category), detections in rank order inside a group
    order = np.lexsort((d, dt_key[d]))
    d, g, iou = d[order], g[order], iou[order]
    out = _Bits(inputs.dt_score.size)
    for start, stop in _group_chunks(dt_key[d], MAX_CANDIDATES):
        _greedy(d[start:stop], g[start:stop], iou[start:stop], dt_key[d[start:stop]], inputs.gt_crowd, gt_regular, out)
    return Matches(
        iou_thresholds=thresholds, dt_in_range=dt_in_range, gt_regular=gt_regular, **out.sparse(), max_det=max_det
    )


def coco_box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xyxy ``dt[P, 4]`` and ``gt[P, 4]``, computed as pycocotools' C code does.

    pycocotools works on xywh boxes and forms the right edge as ``x + w``; repeating its exact
    float operations (rather than calling torchvision's box_iou) keeps IoUs that sit on a
    threshold on the same side of it. Crowd ground truth uses intersection / detection area.
    One limit: the ``w`` here is ``x2 - x1`` of the xyxy box, which can be one rounding step
    away from the file's ``w`` (``x + w - x != w`` for some floats), so an IoU exactly on a
    threshold can land on the other side of it than in pycocotools (module docstring of
    cvcore.metrics.detection). A match at threshold ``t`` is ``IoU >= t``, as pycocotools'
    ``if ious[dind, gind] < iou: continue``.
    """
    dw, dh = dt[:, 2] - dt[:, 0], dt[:, 3] - dt[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    iw = np.minimum(dw + dt[:, 0], gw + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    ih = np.minimum(dh + dt[:, 1], gh + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = iw * ih
    da = dw * dh
    union = np.where(crowd, da, gw * gh + da - inter)
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


class _Bits:
    """Per-detection accumulators of the match bits (dense while matching, sparse at the end).

    Each (detection, combination) matches at most once, so adding ``2.0 ** c`` sets bit c; the
    sums stay below 2**40, exact in float64.
    """

    def __init__(self, n: int):
        self.matched = np.zeros(n)
        self.ignored = np.zeros(n)
        self.gt_first = np.full(n, -1, dtype=np.int64)

    def add(self, det: np.ndarray, combo: np.ndarray, gt: np.ndarray, ignored: np.ndarray) -> None:
        bit = np.ldexp(1.0, combo)
        np.add.at(self.matched, det, bit)
        np.add.at(self.ignored, det[ignored], bit[ignored])
        first = combo == 0
        self.gt_first[det[first]] = gt[first]

    def sparse(self) -> dict[str, np.ndarray]:
        pos = np.flatnonzero(self.matched)
        return {
            "pos": pos,
            "matched": self.matched[pos].astype(np.uint64),
            "ignored": self.ignored[pos].astype(np.uint64),
            "gt_first": self.gt_first[pos],
        }


def _group_chunks(keys: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of the sorted ``keys`` holding whole groups, about ``budget`` rows each."""
    if keys.size == 0:
        return
    bounds = np.append(np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]), keys.size)
    i, n_groups = 0, bounds.size - 1
    while i < n_groups:
        j = int(np.searchsorted(bounds, bounds[i] + budget, side="right")) - 1
        j = min(max(j, i + 1), n_groups)
        yield int(bounds[i]), int(bounds[j])
        i = j


def _greedy(
    d: np.ndarray,
    g: np.ndarray,
    iou: np.ndarray,
    key: np.ndarray,
    gt_crowd: np.ndarray,
    gt_regular: np.ndarray,
    out: _Bits,
) -> None:
    """Greedy matching of candidate pairs (IoU >= the lowest threshold) of whole (image, category) groups.

    Pairs are grouped by ``key`` with detections in rank order; a detection's pairs are adjacent.
    """
    thresholds = COCO_IOU_THRESHOLDS
    T = thresholds.size
    ordinal = np.cumsum(np.r_[True, d[1:] != d[:-1]]) - 1  # candidate detection number
    group_first = np.maximum.accumulate(np.where(np.r_[True, key[1:] != key[:-1]], ordinal, 0))
    step = ordinal - group_first  # the detection's turn inside its (image, category)
    if step.max() < np.iinfo(np.int16).max:
        step = step.astype(np.int16)  # NumPy's stable sort is a linear radix sort for 16-bit keys
    n_det = int(ordinal[-1]) + 1
    gt_local, g_code = np.unique(g, return_inverse=True)
    crowd = gt_crowd[g]
    for a in range(gt_regular.shape[0]):  # one area range at a time bounds the replicated rows
        ignored = ~gt_regular[a, g]
        # a detection's preference: non-ignored first, then higher IoU, then the later ground truth
        order = np.lexsort((-g, -iou, ignored, ordinal))
        rows = [order[iou[order] >= thresholds[t]] for t in range(T)]
        pair = np.concatenate(rows)
        t_of = np.repeat(np.arange(T), [r.size for r in rows])
        by_step = np.argsort(step[pair], kind="stable")  # keeps (threshold, detection, preference) order
        pair, t_of = pair[by_step], t_of[by_step]
        chooser = t_of * n_det + ordinal[pair]
        slot = t_of * gt_local.size + g_code[pair]
        free_always = crowd[pair]
        bounds = np.searchsorted(step[pair], np.arange(int(step.max()) + 2))
        taken = np.zeros(T * gt_local.size, dtype=bool)
        won = []
        for s in range(bounds.size - 1):
            lo, hi = bounds[s], bounds[s + 1]
            free = np.flatnonzero(free_always[lo:hi] | ~taken[slot[lo:hi]])
            if free.size == 0:
                continue
            first = free[np.r_[True, np.diff(chooser[lo:hi][free]) != 0]]  # best free box per (threshold, detection)
            taken[slot[lo:hi][first]] = True
            won.append(lo + first)
        if won:
            rows_won = np.concatenate(won)
            p, t = pair[rows_won], t_of[rows_won]
            out.add(d[p], a * T + t, g[p], ignored[p])


def match_voc(inputs: DetectionInputs) -> Matches:
    """The PASCAL VOC devkit rule (``VOCevaldet.m``: ``ovmax >= VOCopts.minoverlap``) at IoU >= 0.5, per (image, category).

    Each detection looks only at the ground truth it overlaps most (the first such box on ties,
    difficult and crowd boxes included). If that IoU is >= 0.5: an ignored (difficult or crowd)
    box makes the detection ignored; a free box makes it a true positive and takes the box; a
    box already taken by a higher-ranked detection makes it a false positive (a duplicate).
    py-faster-rcnn's ``voc_eval.py`` and detectron2 test ``> 0.5``, which is not the devkit's
    rule: they differ for a best IoU of exactly 0.5. IoU is in continuous coordinates (no VOC
    "+1" pixel), as everywhere in cvflow.
    """
    regular = ~(inputs.gt_crowd | inputs.gt_difficult)
    N = inputs.dt_score.size
    K = inputs.num_categories
    best_d, best_g = [], []
    for chunk in iter_pairs(inputs.dt_img * K + inputs.dt_cat, inputs.gt_img * K + inputs.gt_cat):
        d, g = chunk.det, chunk.gt
        iou = box_iou_rows(inputs.dt_box[d], inputs.gt_box[g])
        ok = iou >= VOC_IOU_THRESHOLD
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
