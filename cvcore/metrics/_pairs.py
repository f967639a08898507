"""Candidate (detection, ground truth) pairs that share a key, generated in bounded chunks.

The key is ``image * K + category`` for matching, or the image alone for the error analysis.
Pairs are produced chunk by chunk, each chunk holding whole key groups, so that memory is
bounded by ``max_pairs`` plus what the caller keeps (only the pairs that overlap enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

MAX_PAIRS = 4_000_000  # pairs held at once: ~200 MB of temporaries in the callers


@dataclass(frozen=True)
class PairChunk:
    """Pairs of one chunk: ``det[i]`` and ``gt[i]`` share a key.

    Detections appear grouped by key, in their input order inside a group; the pairs of one
    detection are consecutive, with ground truth in input row order.
    """

    det: np.ndarray  # int64 [P] detection index
    gt: np.ndarray  # int64 [P] ground-truth index


def iter_pairs(dt_key: np.ndarray, gt_key: np.ndarray, *, max_pairs: int = MAX_PAIRS) -> Iterator[PairChunk]:
    """All (detection, ground truth) pairs with equal keys, in chunks of whole key groups."""
    if dt_key.size == 0 or gt_key.size == 0:
        return
    dt_order = np.argsort(dt_key, kind="stable")
    gt_order = np.argsort(gt_key, kind="stable")
    dk = dt_key[dt_order]
    gk = gt_key[gt_order]
    lo = np.searchsorted(gk, dk, side="left")
    n = np.searchsorted(gk, dk, side="right") - lo
    has = n > 0
    dt_order, dk, lo, n = dt_order[has], dk[has], lo[has], n[has]
    if n.size == 0:
        return
    for start, stop in _chunks(dk, n, max_pairs):
        counts = n[start:stop]
        total = int(counts.sum())
        first = np.cumsum(counts) - counts  # where each detection's pairs begin
        within = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
        det = np.repeat(dt_order[start:stop], counts)
        gt = gt_order[np.repeat(lo[start:stop], counts) + within]
        yield PairChunk(det=det, gt=gt)


def _chunks(keys: np.ndarray, counts: np.ndarray, max_pairs: int) -> Iterator[tuple[int, int]]:
    """Split sorted ``keys`` into [start, stop) ranges of whole key groups, ~``max_pairs`` pairs each.

    A single group larger than ``max_pairs`` gets a chunk of its own.
    """
    group_starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    cum = np.concatenate([[0], np.cumsum(counts)])
    bounds = np.append(cum[group_starts], cum[-1])  # pairs before each group, then the total
    g = 0
    while g < group_starts.size:
        h = int(np.searchsorted(bounds, bounds[g] + max_pairs, side="right")) - 1
        h = min(max(h, g + 1), group_starts.size)
        stop = int(group_starts[h]) if h < group_starts.size else keys.size
        yield int(group_starts[g]), stop
        g = h
