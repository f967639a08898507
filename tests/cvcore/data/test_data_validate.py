"""The vectorised checks against naive per-row loops, on random inputs (hypothesis)."""

from __future__ import annotations

import math

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from cvcore.data.formats._common import raw_annotations_frame
from cvcore.data.split import stratified_split
from cvcore.data.validate import CLIP_TOLERANCE_PX, check_annotations

COORD = st.one_of(st.floats(-20, 60), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 32.0, 24.0]))


def _naive(rows, sizes, dropped):
    """The rules of check_annotations, one box at a time: kept ann_id -> clipped box."""
    seen, kept = set(), {}
    for ann_id, image_id, x1, y1, x2, y2 in rows:
        first = ann_id not in seen
        seen.add(ann_id)
        if not first or image_id in dropped or image_id not in sizes:
            continue
        W, H = sizes[image_id]
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            continue
        if x1 >= W or y1 >= H or x2 <= 0 or y2 <= 0:
            continue
        kept[ann_id] = (min(max(x1, 0), W), min(max(y1, 0), H), min(max(x2, 0), W), min(max(y2, 0), H))
    return kept


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 12), st.integers(1, 4), COORD, COORD, COORD, COORD),
        max_size=25,
    )
)
def test_check_annotations_matches_a_naive_loop(rows):
    sizes = {1: (32, 24), 2: (10, 40)}  # image 3 was dropped, image 4 never existed
    anns = raw_annotations_frame(
        {
            "ann_id": [r[0] for r in rows],
            "image_id": [r[1] for r in rows],
            "category_id": [0] * len(rows),
            **{k: [r[i] for r in rows] for i, k in enumerate(("x1", "y1", "x2", "y2"), start=2)},
            "source": ["f"] * len(rows),
            "item": [f"row {i}" for i in range(len(rows))],
        }
    )
    images = pl.DataFrame({"image_id": [1, 2], "width": [32, 10], "height": [24, 40]})
    checked = check_annotations(anns, images, dropped_image_ids={3})
    expected = _naive(rows, sizes, {3})
    got = {r[0]: r[1:] for r in checked.table.select("ann_id", "x1", "y1", "x2", "y2").rows()}
    assert got == expected
    # Every row is accounted for: kept, silently gone with its dropped image, or quarantined;
    # a kept box is quarantined too (as repaired) when clipping moved it beyond the tolerance.
    seen, expected_rows = set(), 0
    for ann_id, image_id, *box in rows:
        first = ann_id not in seen
        seen.add(ann_id)
        if first and ann_id in expected:
            moved = max(abs(a - b) for a, b in zip(box, expected[ann_id]))
            expected_rows += moved > CLIP_TOLERANCE_PX
        elif not (first and image_id == 3):
            expected_rows += 1
    assert checked.quarantine.height == expected_rows
    assert (checked.table.get_column("area") > 0).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 3), min_size=1, max_size=40), st.floats(0.05, 0.95), st.integers(0, 5))
def test_stratified_split_shares_and_determinism(strata, fraction, seed):
    images = pl.DataFrame({"image_id": list(range(100, 100 + len(strata))), "split": ["all"] * len(strata)})
    s = pl.Series(strata)
    out = stratified_split(images, s, val_fraction=fraction, seed=seed)
    assert out.equals(stratified_split(images, s, val_fraction=fraction, seed=seed))
    is_val = (out.get_column("split") == "val").to_list()
    assert sum(is_val) == round(len(strata) * fraction)
    for value in set(strata):
        members = [v for v, st_ in zip(is_val, strata) if st_ == value]
        share = len(members) * fraction
        assert math.floor(share) <= sum(members) <= math.ceil(share)
