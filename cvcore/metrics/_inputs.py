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
    gt_rows = _rows_on(ann, image_ids)
    dt_rows = _rows_on(pred, image_ids)
    if gt_rows.size < ann.height or dt_rows.size < pred.height:
        log.debug("left out %d annotation(s) and %d prediction(s) on images outside the %d evaluated",
                  ann.height - gt_rows.size, pred.height - dt_rows.size, image_ids.size)  # fmt: skip
    if categories is None:
        seen = np.concatenate([_column(ann, "category_id", gt_rows), _column(pred, "category_id", dt_rows)])
        category_ids = np.sort(pl.Series(seen).unique().to_numpy()).astype(np.int32)

    # Detections: gather every column straight from the frame's buffers in evaluation order.
    dt_img = np.searchsorted(image_ids, _column(pred, "image_id", dt_rows))
    dt_cat = np.searchsorted(category_ids, _column(pred, "category_id", dt_rows))
    score = _column(pred, "score", dt_rows) + 0.0  # + 0.0 turns -0.0 into 0.0: one score, as for pycocotools
    order = evaluation_order(dt_cat, score, dt_img)
    take = dt_rows[order]
    dt_box = _boxes(pred, take)
    del pred  # a collected LazyFrame's buffers can go before the rank temporaries arrive
    dt_img, dt_cat, score = dt_img[order], dt_cat[order], score[order]
    return DetectionInputs(
        image_ids=image_ids,
        category_ids=category_ids,
        gt_img=np.searchsorted(image_ids, _column(ann, "image_id", gt_rows)),
        gt_cat=np.searchsorted(category_ids, _column(ann, "category_id", gt_rows)),
        gt_box=_boxes(ann, gt_rows),
        gt_area=_column(ann, "area", gt_rows),
        gt_crowd=_column(ann, "iscrowd", gt_rows),
        gt_difficult=_column(ann, "difficult", gt_rows),
        dt_img=dt_img,
        dt_cat=dt_cat,
        dt_score=score,
        dt_box=dt_box,
        dt_rank=rank_within(dt_img * category_ids.size + dt_cat),
        dt_row=take,
        n_pred=np.bincount(dt_cat, minlength=category_ids.size).astype(np.int64),
    )


def _rows_on(frame: pl.DataFrame, image_ids: np.ndarray) -> np.ndarray:
    """int64 row numbers of ``frame`` whose image is in the sorted ``image_ids``."""
    ids = frame.get_column("image_id").to_numpy()
    if image_ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    at = np.minimum(np.searchsorted(image_ids, ids), image_ids.size - 1)
    return np.flatnonzero(image_ids[at] == ids)


def _column(frame: pl.DataFrame, name: str, rows: np.ndarray) -> np.ndarray:
    """``frame[name][rows]`` as NumPy, gathered from the column's buffer (no copy of the frame)."""
    return frame.get_column(name).to_numpy()[rows]


def _boxes(frame: pl.DataFrame, rows: np.ndarray) -> np.ndarray:
    """float64 [len(rows), 4] xyxy, one column at a time (no [N, 4] copy of the whole frame)."""
    out = np.empty((rows.size, 4))
    for j, name in enumerate(("x1", "y1", "x2", "y2")):
        out[:, j] = _column(frame, name, rows)
    return out


def evaluation_order(cat: np.ndarray, score: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Permutation sorting detections by (category, score descending, image, input position).

    Three stable argsorts, least significant key first: NumPy's stable sort is a radix sort for
    16-bit keys and runs in linear time on already ordered input (predictions usually come
    image by image), which beats a general 4-key lexsort here.
    """
    order = np.argsort(img, kind="stable")
    order = order[np.argsort(-score[order], kind="stable")]
    small = cat.astype(np.int16) if cat.size and cat.max() < np.iinfo(np.int16).max else cat
    return order[np.argsort(small[order], kind="stable")]


def rank_within(key: np.ndarray) -> np.ndarray:
    """int64 [N]: position of each element among the elements with the same ``key``, in array order."""
    n = key.size
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    group_start = np.arange(n)
    if n:
        # position of the first element of each run of equal keys, carried forward
        group_start[1:][sorted_key[1:] == sorted_key[:-1]] = 0
        np.maximum.accumulate(group_start, out=group_start)
    del sorted_key
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


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
