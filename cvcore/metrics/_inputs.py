"""Turn ground-truth / prediction frames into the flat NumPy arrays the detection metrics work on.

One validated pass per frame: the inputs may be polars DataFrames or LazyFrames (for instance
``pl.scan_parquet`` over many prediction shards); only the needed columns are collected, and
from here on every box is a row of plain float64 arrays, never a Python object.

Detections are put in *evaluation order*: by category, score descending, image id ascending,
then input row. That is exactly the order pycocotools' accumulate() sees (a stable mergesort of
-score over per-image lists concatenated in ascending image id, each list itself stably sorted
by -score), so ties between equal scores are broken the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from cvcore import schema

log = logging.getLogger(__name__)

Frame = pl.DataFrame | pl.LazyFrame


@dataclass(frozen=True)
class DetectionInputs:
    """Ground truth and detections of one evaluation as flat arrays (internal to cvcore.metrics).

    Images and categories are dense codes: ``image_ids[code]`` / ``category_ids[code]`` give the
    real ids. G ground-truth boxes keep their input row order; N detections are in evaluation
    order (see module docstring). Boxes are xyxy float64 pixels.
    """

    image_ids: np.ndarray  # int64 [I], sorted
    category_ids: np.ndarray  # int32 [K], sorted
    gt_img: np.ndarray  # int64 [G] image code
    gt_cat: np.ndarray  # int64 [G] category code
    gt_box: np.ndarray  # float64 [G, 4] xyxy
    gt_area: np.ndarray  # float64 [G] the source's area (drives COCO's size ranges)
    gt_crowd: np.ndarray  # bool [G]
    gt_difficult: np.ndarray  # bool [G]
    dt_img: np.ndarray  # int64 [N]
    dt_cat: np.ndarray  # int64 [N]
    dt_score: np.ndarray  # float64 [N], non-increasing within a category
    dt_box: np.ndarray  # float64 [N, 4] xyxy
    dt_rank: np.ndarray  # int64 [N] rank of the detection within its (image, category), 0 = best
    dt_row: np.ndarray  # int64 [N] row in the predictions frame
    n_pred: np.ndarray  # int64 [K] detections per category on the evaluated images

    @property
    def num_images(self) -> int:
        return int(self.image_ids.size)

    @property
    def num_categories(self) -> int:
        return int(self.category_ids.size)

    @property
    def category_starts(self) -> np.ndarray:
        """int64 [K + 1]: detections of category code k are ``[starts[k], starts[k + 1])``."""
        return np.searchsorted(self.dt_cat, np.arange(self.num_categories + 1))


def load_detection_inputs(
    annotations: Frame,
    predictions: Frame,
    *,
    images: Frame | Sequence[int],
    categories: Frame | Sequence[int] | None = None,
) -> DetectionInputs:
    """Validate the three inputs and flatten them (see :class:`DetectionInputs`).

    ``images`` fixes the evaluated universe: ground truth and predictions on other images are
    left out (a split's predictions may come from a larger set). ``categories`` fixes the
    category universe; by default it is every category seen in the ground truth or predictions.
    Raises ``schema.SchemaError`` / ``ValueError`` naming the input and the offending row.
    """
    image_ids = _ids(images, "image_id", "images", pl.Int64)
    ann = _collect(annotations, "annotations")
    pred = _collect(predictions, "detections")
    _check_boxes(ann, "annotations")
    _check_boxes(pred, "predictions")
    _check_finite(pred, "score", "predictions")
    _check_finite(ann, "area", "annotations")

    if categories is not None:
        category_ids = _ids(categories, "category_id", "categories", pl.Int32)
        _check_known(ann, category_ids, "annotations")
        _check_known(pred, category_ids, "predictions")
    ann = ann.filter(pl.col("image_id").is_in(pl.Series(image_ids).implode()))
    pred = pred.with_row_index("row").filter(pl.col("image_id").is_in(pl.Series(image_ids).implode()))
    if categories is None:
        seen = pl.concat([ann.get_column("category_id"), pred.get_column("category_id")])
        category_ids = np.unique(seen.to_numpy()).astype(np.int32)

    # -0.0 and 0.0 are one score for pycocotools (it sorts -score); make them one value here too.
    pred = pred.with_columns(pl.when(pl.col("score") == 0).then(0.0).otherwise(pl.col("score")).alias("score"))
    pred = pred.sort(
        ["category_id", "score", "image_id", "row"], descending=[False, True, False, False]
    ).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(["category_id", "image_id"]).alias("rank"))

    dt_cat = _codes(pred.get_column("category_id"), category_ids)
    return DetectionInputs(
        image_ids=image_ids,
        category_ids=category_ids,
        gt_img=_codes(ann.get_column("image_id"), image_ids),
        gt_cat=_codes(ann.get_column("category_id"), category_ids),
        gt_box=ann.select(["x1", "y1", "x2", "y2"]).to_numpy().astype(np.float64, copy=False),
        gt_area=ann.get_column("area").to_numpy(),
        gt_crowd=ann.get_column("iscrowd").to_numpy(),
        gt_difficult=ann.get_column("difficult").to_numpy(),
        dt_img=_codes(pred.get_column("image_id"), image_ids),
        dt_cat=dt_cat,
        dt_score=pred.get_column("score").to_numpy(),
        dt_box=pred.select(["x1", "y1", "x2", "y2"]).to_numpy().astype(np.float64, copy=False),
        dt_rank=pred.get_column("rank").to_numpy(),
        dt_row=pred.get_column("row").cast(pl.Int64).to_numpy(),
        n_pred=np.bincount(dt_cat, minlength=category_ids.size).astype(np.int64),
    )


def _collect(frame: Frame, table: str) -> pl.DataFrame:
    """Collect only the table's columns and conform them to cvcore.schema (dtypes, no nulls)."""
    if isinstance(frame, pl.LazyFrame):
        wanted = [c for c in frame.collect_schema().names() if c in schema.TABLES[table]]
        frame = frame.select(wanted).collect()
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"{table}: expected a polars DataFrame or LazyFrame, got {type(frame).__name__}")
    return schema.validate(frame, table, source=f"{table} input of the detection metrics")


def _ids(frame: Frame | Sequence[int], column: str, what: str, dtype: pl.DataType) -> np.ndarray:
    if isinstance(frame, pl.LazyFrame):
        frame = frame.select(column).collect()
    if isinstance(frame, pl.DataFrame):
        if column not in frame.columns:
            raise schema.SchemaError(f"{what}: missing column {column!r}; it has {frame.columns}")
        series = frame.get_column(column)
    else:
        series = pl.Series(column, list(frame) if not isinstance(frame, np.ndarray) else frame)
    if series.null_count():
        raise schema.SchemaError(f"{what}: column {column!r} has {series.null_count()} null value(s)")
    try:
        series = series.cast(dtype, strict=True)
    except pl.exceptions.PolarsError as exc:
        raise schema.SchemaError(f"{what}: column {column!r} is not {dtype} ({exc})") from None
    return np.unique(series.to_numpy())


def _codes(values: pl.Series, universe: np.ndarray) -> np.ndarray:
    """Dense codes of ``values`` in the sorted ``universe`` (every value is known to be in it)."""
    return np.searchsorted(universe, values.to_numpy()).astype(np.int64)


def _check_boxes(frame: pl.DataFrame, what: str) -> None:
    for lo, hi in (("x1", "x2"), ("y1", "y2")):
        bad = ~(pl.col(lo).is_finite() & pl.col(hi).is_finite() & (pl.col(hi) >= pl.col(lo)))
        _raise_first(frame, bad, what, f"box with non-finite {lo}/{hi} or {hi} < {lo}")


def _check_finite(frame: pl.DataFrame, column: str, what: str) -> None:
    _raise_first(frame, ~pl.col(column).is_finite(), what, f"non-finite {column}")


def _check_known(frame: pl.DataFrame, category_ids: np.ndarray, what: str) -> None:
    bad = ~pl.col("category_id").is_in(pl.Series(category_ids).implode())
    _raise_first(frame, bad, what, "category_id outside the given categories")


def _raise_first(frame: pl.DataFrame, bad: pl.Expr, what: str, problem: str) -> None:
    flagged = frame.with_row_index("__row").filter(bad)
    if flagged.height:
        first = flagged.row(0, named=True)
        raise ValueError(f"{what}: {flagged.height} row(s) with {problem}; first at row {first.pop('__row')}: {first}")
