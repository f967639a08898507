"""The model to recommend from a comparison table: quality first, then inference cost."""

from __future__ import annotations

import polars as pl

TRADEOFF_TOLERANCE = 0.02  # score points a faster model may give up and still be "the best trade-off"
TRADEOFF_METRIC = "map"  # COCO's primary number: a box must also be tight, not only found (map_50)
COST_COLUMN = "infer_cpu_ms_per_image"  # inference cost, CPU milliseconds per image


def best_tradeoff(
    table: pl.DataFrame, *, metric: str = TRADEOFF_METRIC, tolerance: float = TRADEOFF_TOLERANCE
) -> str | None:
    """The model to recommend from a table with ``model``, ``metric`` and ``infer_cpu_ms_per_image`` columns.

    Among the models whose ``metric`` (default mAP@[.5:.95]) is within ``tolerance`` of the best
    one, the one with the lowest ``infer_cpu_ms_per_image`` (ties: the higher score, then table
    order; a NaN cost ranks last). None when no model has a finite score.
    """
    scored = table.filter(pl.col(metric).is_not_nan() & pl.col(metric).is_not_null())
    if scored.is_empty():
        return None
    best = float(scored.get_column(metric).max())
    close = scored.with_row_index("order").filter(pl.col(metric) >= best - tolerance - 1e-12)
    cost = pl.when(pl.col(COST_COLUMN).is_nan()).then(None).otherwise(pl.col(COST_COLUMN))
    ranked = close.with_columns(cost.alias("cost")).sort(
        ["cost", metric, "order"], descending=[False, True, False], nulls_last=True
    )
    return str(ranked.get_column("model")[0])
