"""cvcore.plots.bakeoff: a bake-off table's accuracy bars and accuracy-vs-speed panel, checked by value."""

from __future__ import annotations

import math

import polars as pl
from matplotlib.figure import Figure

from cvcore import plots

# the columns the figure (and best_tradeoff) read; the full table is tasks.bakeoff.TABLE_SCHEMA
COLUMNS = [
    "model",
    "map_50",
    "map",
    "map_small",
    "map_medium",
    "recall_crowded",
    "recall_isolated",
    "infer_cpu_ms_per_image",
]


def _table():
    rows = [("a", 0.8, 0.5, 0.4, 0.6, 0.7, 0.9, 300.0), ("b", 0.6, 0.3, 0.1, 0.5, 0.2, 0.8, 8.0)]
    return pl.DataFrame(rows, schema=COLUMNS, orient="row")


def test_bakeoff_figure():
    fig = plots.bakeoff(_table(), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    bars, speed = fig.axes
    assert fig.get_suptitle() == "t"
    assert (bars.get_title(), bars.get_ylabel()) == ("accuracy (one protocol)", "score")
    assert [t.get_text() for t in bars.get_xticklabels()] == ["a", "b"]
    legend = ["mAP@0.5", "mAP", "AP small", "AP medium", "recall crowded", "recall isolated"]
    assert [t.get_text() for t in bars.get_legend().get_texts()] == legend
    # six bars per model, grouped by metric: heights are the table's values (map_large is not drawn)
    assert [round(bar.get_height(), 6) for bar in bars.patches] == [
        0.8,
        0.6,
        0.5,
        0.3,
        0.4,
        0.1,
        0.6,
        0.5,
        0.7,
        0.2,
        0.9,
        0.8,
    ]
    assert (speed.get_title(), speed.get_ylabel(), speed.get_xscale()) == ("accuracy vs speed", "mAP@0.5", "log")
    assert speed.get_xlabel() == "inference CPU ms / image (log; left is faster)"
    points, ring = speed.collections
    assert points.get_offsets().tolist() == [[300.0, 0.8], [8.0, 0.6]]  # (CPU ms per image, mAP@0.5)
    assert ring.get_offsets().tolist() == [[300.0, 0.8]]  # the best trade-off, circled
    assert [t.get_text() for t in speed.get_legend().get_texts()] == ["best trade-off: a"]
    assert [(t.get_text(), t.xy) for t in speed.texts] == [("a", (300.0, 0.8)), ("b", (8.0, 0.6))]
    nan_row = plots.bakeoff(_table().with_columns(recall_crowded=pl.lit(math.nan)))
    assert [bar.get_height() for bar in nan_row.axes[0].patches][8:10] == [0.0, 0.0]  # NaN drawn as no bar
