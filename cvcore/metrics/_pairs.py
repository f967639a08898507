"""Candidate (detection, ground truth) pairs that share a key, generated in bounded chunks.

The key is ``image * K + category`` for matching, or the image alone for the error analysis.
Detections are taken in their given order, a contiguous range of them per chunk, so nothing is
sorted but the (much smaller) ground truth; each chunk holds at most ``max_pairs`` pairs (a
detection with more pairs than that gets a chunk of its own). Callers keep only the pairs that
overlap enough, so memory is bounded by ``max_pairs`` plus those candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

MAX_PAIRS = 1_000_000  # pairs held at once: ~100 MB of temporaries in the callers
DENSE_KEYS = 1 << 25  # up to this many possible keys, look groups up in a table, not by bisection


@dataclass(frozen=True)
class PairChunk:
    """Pairs of one chunk: ``det[i]`` and ``gt[i]`` share a key.

    The pairs of one detection are consecutive, with ground truth in input row order, and
    detections come in their given order.
    """

    det: np.ndarray  # int64 [P] detection index
    gt: np.ndarray  # int64 [P] ground-truth index


def iter_pairs(dt_key: np.ndarray, gt_key: np.ndarray, *, max_pairs: int = MAX_PAIRS) -> Iterator[PairChunk]:
    """All (detection, ground truth) pairs with equal non-negative int keys, chunk by chunk."""
    if dt_key.size == 0 or gt_key.size == 0:
        return
    gt_order = np.argsort(gt_key, kind="stable")
    lo, n = _groups(gt_key[gt_order], dt_key)
    dets = np.flatnonzero(n)
    lo, n = lo[dets], n[dets]
    cum = np.cumsum(n)
    start = 0
    while start < dets.size:
        before = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, before + max_pairs, side="right")), start + 1)
        counts = n[start:stop]
        first = np.cumsum(counts) - counts  # where each detection's pairs begin
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
        yield PairChunk(
            det=np.repeat(dets[start:stop], counts),
            gt=gt_order[np.repeat(lo[start:stop], counts) + within],
        )
        start = stop


def _groups(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``keys``: where its group starts in ``sorted_keys`` and how many it holds."""
    top = int(sorted_keys[-1]) + 1
    if top <= DENSE_KEYS:  # a table lookup per detection instead of two bisections
        counts = np.bincount(sorted_keys, minlength=top)
        starts = np.cumsum(counts) - counts
        inside = keys < top
        safe = np.where(inside, keys, 0)
        return starts[safe], np.where(inside, counts[safe], 0)
    lo = np.searchsorted(sorted_keys, keys, side="left")
    return lo, np.searchsorted(sorted_keys, keys, side="right") - lo
