"""The bake-off's recommendation (cvcore.metrics.tradeoff): quality first (within a tolerance of the best), then inference cost.

The Markdown that marks the pick is tests/tasks/test_bakeoff.py's."""

from __future__ import annotations

import math

import polars as pl

from cvcore.metrics.tradeoff import best_tradeoff

COLUMNS = {
    "model": pl.String,
    "map_50": pl.Float64,
    "map": pl.Float64,
    "infer_cpu_ms_per_image": pl.Float64,
}  # what best_tradeoff reads


def _table(rows: list[tuple[str, float, float]]) -> pl.DataFrame:
    """(model, mAP, CPU ms/image) rows; mAP@0.5 set 0.2 above mAP."""
    full = [{"model": m, "map": q, "map_50": q + 0.2, "infer_cpu_ms_per_image": c} for m, q, c in rows]
    return pl.DataFrame(full, schema=COLUMNS)


def test_fastest_model_close_to_the_best_quality_wins():
    table = _table([("fast_rcnn", 0.865, 69.0), ("yolov1", 0.86, 20.0), ("fcos", 0.92, 25.0), ("rcnn", 0.34, 188.0)])
    assert best_tradeoff(table) == "fcos"  # yolov1 is faster but 0.06 below the best
    assert best_tradeoff(table, tolerance=0.07) == "yolov1"
    # Judged on mAP@0.5 instead, where yolov1 is close to the best: the faster one.
    judged_50 = table.with_columns(
        pl.when(pl.col("model") == "yolov1").then(1.11).otherwise(pl.col("map_50")).alias("map_50")
    )
    assert best_tradeoff(judged_50, metric="map_50") == "yolov1"


def test_nan_scores_and_costs_are_not_chosen():
    table = _table([("a", math.nan, 1.0), ("b", 0.5, math.nan), ("c", 0.49, 10.0)])
    assert best_tradeoff(table) == "c"  # b has no measured cost: c, within 0.02, is measured
    assert best_tradeoff(_table([("a", math.nan, 1.0)])) is None
