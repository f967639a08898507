"""The data contracts of cvflow (docs/ARCHITECTURE.md §3): one polars schema per table, and validation.

Boxes are xyxy, absolute pixels, float64 everywhere inside cvflow (``x2 - x1`` is the width).
COCO xywh, YOLO normalised cx/cy/w/h and VOC 1-based corners exist only at the format edges,
where cvcore.boxes converts them.

Every table has a name in :data:`TABLES`; :func:`validate` checks a frame against one and either
returns it conformed (columns in schema order, exact dtypes) or raises :class:`SchemaError` naming
the table, the column and what is wrong with it.
"""

from __future__ import annotations

from typing import Mapping

import polars as pl
import pyarrow as pa

SCHEMA_VERSION = 1

IMAGES = pl.Schema(
    {
        "image_id": pl.Int64,
        "file_name": pl.String,  # relative to the snapshot's image root, or a URI
        "width": pl.Int32,  # pixels, as displayed (EXIF orientation applied)
        "height": pl.Int32,
        "split": pl.String,
        "sha256": pl.String,  # hex digest of the image file's bytes
    }
)

CATEGORIES = pl.Schema(
    {
        "category_id": pl.Int32,  # contiguous 0..K-1
        "name": pl.String,
        "source_id": pl.Int64,  # the id in the source format
    }
)

# `difficult` comes from VOC (docs/ARCHITECTURE.md §3), which marks hard objects that its protocol ignores (neither
# true nor false positive); COCO's `iscrowd` plays that part there. Both are kept so no source
# information is lost.
ANNOTATIONS = pl.Schema(
    {
        "ann_id": pl.Int64,
        "image_id": pl.Int64,
        "category_id": pl.Int32,
        "x1": pl.Float64,
        "y1": pl.Float64,
        "x2": pl.Float64,
        "y2": pl.Float64,
        "area": pl.Float64,  # the source's area (COCO: segmentation area), pixels²
        "iscrowd": pl.Boolean,
        "difficult": pl.Boolean,
    }
)

LABELS = pl.Schema({"image_id": pl.Int64, "category_id": pl.Int32})

QUARANTINE = pl.Schema(
    {
        "source": pl.String,  # the file the problem was found in
        "item": pl.String,  # the image / annotation / line concerned
        "reason": pl.String,  # what is wrong, and what ingestion did about it
    }
)

DETECTIONS = pl.Schema(
    {
        "image_id": pl.Int64,
        "category_id": pl.Int32,
        "score": pl.Float64,
        "x1": pl.Float64,
        "y1": pl.Float64,
        "x2": pl.Float64,
        "y2": pl.Float64,
    }
)

CLASSIFICATIONS = pl.Schema(
    {
        "image_id": pl.Int64,
        "category_id": pl.Int32,  # top-1
        "score": pl.Float64,  # probability of the top-1 class
        "scores": pl.List(pl.Float32),  # probabilities of all K classes
    }
)

TABLES: Mapping[str, pl.Schema] = {
    "images": IMAGES,
    "categories": CATEGORIES,
    "annotations": ANNOTATIONS,
    "labels": LABELS,
    "quarantine": QUARANTINE,
    "detections": DETECTIONS,
    "classifications": CLASSIFICATIONS,
}

# Columns that may be filled in when a frame lacks them (everything else is required).
_DEFAULTS: Mapping[str, Mapping[str, object]] = {
    "annotations": {"iscrowd": False, "difficult": False},
}


class SchemaError(ValueError):
    """A frame does not match its table's schema; the message names the table and column."""


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of ``table`` (for pyarrow writers and record batches)."""
    return empty(table).to_arrow().schema


def empty(table: str) -> pl.DataFrame:
    """An empty frame of ``table``'s schema."""
    return pl.DataFrame(schema=_schema(table))


def validate(frame: pl.DataFrame | pl.LazyFrame, table: str, *, source: str = "") -> pl.DataFrame:
    """Check ``frame`` against ``table``'s schema and return it conformed.

    Conformed means: exactly the schema's columns, in its order, with its dtypes. A column of a
    different dtype is cast when the cast loses nothing (e.g. Int64 ids that fit Int32); optional
    columns with a default (``iscrowd``, ``difficult``) are added when missing. Columns outside
    the schema are dropped.

    Raises SchemaError naming the table (and ``source``, e.g. a file path), the column and the
    problem: missing, not castable, or holding nulls.
    """
    schema = _schema(table)
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    where = f"{table} table" + (f" from {source}" if source else "")
    defaults = _DEFAULTS.get(table, {})
    columns = []
    for name, dtype in schema.items():
        if name not in df.columns:
            if name in defaults:
                columns.append(pl.repeat(defaults[name], df.height, dtype=dtype, eager=True).alias(name))
                continue
            raise SchemaError(f"{where}: missing column {name!r} ({dtype}); it has {df.columns}")
        columns.append(_conform_column(df.get_column(name), dtype, where))
    return pl.DataFrame(columns)


def _schema(table: str) -> pl.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise SchemaError(f"unknown table {table!r}; known tables: {sorted(TABLES)}") from None


def _conform_column(col: pl.Series, dtype: pl.DataType, where: str) -> pl.Series:
    if col.null_count():
        first = col.is_null().arg_max()
        raise SchemaError(f"{where}: column {col.name!r} has {col.null_count()} null value(s), first at row {first}")
    if col.dtype == dtype:
        return col
    try:
        cast = col.cast(dtype, strict=True)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise SchemaError(f"{where}: column {col.name!r} has dtype {col.dtype}, expected {dtype} ({exc})") from None
    # A float column cast to an integer type must not have lost fractional parts.
    if col.dtype.is_float() and dtype.is_integer() and not (cast.cast(col.dtype) == col).all():
        raise SchemaError(f"{where}: column {col.name!r} has non-integer values, expected {dtype}")
    return cast
