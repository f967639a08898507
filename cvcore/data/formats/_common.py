"""What every format reader returns, and the small helpers the readers share.

A reader parses a source (COCO JSON, VOC XML, YOLO text, an ImageFolder tree) into a
:class:`RawSource`: canonical categories, images with a split and a file name relative to the
image root, and annotations or labels — plus quarantine rows for the items it could not parse.
It never opens image files: header reads, checks, repairs and the snapshot are ingest's job
(cvcore.data.ingest), so every format gets exactly the same validation.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import polars as pl

from cvcore import schema
from cvcore.boxes import XYXY

# Images as a reader sees them: declared width/height may be null (YOLO, ImageFolder declare none);
# `source`/`item` say where the entry came from, for quarantine rows.
RAW_IMAGES = pl.Schema(
    {
        "image_id": pl.Int64,
        "file_name": pl.String,
        "split": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "source": pl.String,
        "item": pl.String,
    }
)

# Annotations as a reader sees them: canonical category ids, xyxy boxes (pixels, or fractions of
# the image size when RawSource.box_units == "normalized"), `area` null when the source has none.
RAW_ANNOTATIONS = pl.Schema(
    {
        "ann_id": pl.Int64,
        "image_id": pl.Int64,
        "category_id": pl.Int32,
        "x1": pl.Float64,
        "y1": pl.Float64,
        "x2": pl.Float64,
        "y2": pl.Float64,
        "area": pl.Float64,
        "iscrowd": pl.Boolean,
        "difficult": pl.Boolean,
        "source": pl.String,
        "item": pl.String,
    }
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_YEAR_SUFFIX = re.compile(r"^(.*?[a-z])(19|20)\d\d$")
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "testing": "test", "training": "train"}


@dataclass(frozen=True)
class RawSource:
    """A parsed source, before image checks. See the module docstring."""

    format: str
    task: Literal["detection", "classification"]
    image_root: Path  # absolute; every file_name is relative to it
    images: pl.DataFrame  # RAW_IMAGES
    categories: pl.DataFrame  # schema.CATEGORIES
    annotations: pl.DataFrame | None  # RAW_ANNOTATIONS (detection)
    labels: pl.DataFrame | None  # schema.LABELS (classification)
    quarantine: pl.DataFrame  # schema.QUARANTINE: items the reader could not parse
    # YOLO boxes are fractions of the image size until ingest has read the image headers.
    box_units: Literal["pixels", "normalized"] = "pixels"


def canonical_split(raw: str) -> str:
    """The split name cvflow uses for a source's split name.

    Lower-cased, a trailing year dropped (``train2017`` -> ``train``, ``val2012`` -> ``val``) and
    common spellings unified (``valid``/``validation`` -> ``val``), so that the run config's
    default ``train``/``val`` splits find COCO, VOC and Roboflow-style YOLO data as shipped.
    """
    name = raw.strip().lower()
    match = _YEAR_SUFFIX.match(name)
    if match:
        name = match.group(1)
    return _SPLIT_ALIASES.get(name, name)


def unsafe_file_name(name: object) -> str | None:
    """Why ``name`` may not be used as a file name inside the dataset root, or None when it may.

    Purely lexical (nothing is opened): rejects non-strings, empty names, absolute paths
    (POSIX or Windows drive/UNC), names whose normalised form climbs out with ``..``, names
    with backslashes (which cvcore.io.resolve_inside refuses at training time), NUL bytes (no
    file system takes them) and text that is not UTF-8 (an undecodable byte in a directory
    listing; a snapshot's tables hold UTF-8 only). Symlinks that
    lead outside are caught by the header read (cvcore.data.probe), still before any open.
    """
    # Fast path for the usual plain relative ASCII name (this runs once per image of large datasets).
    if (
        type(name) is str
        and name.isascii()
        and ".." not in name
        and "\\" not in name
        and "\0" not in name
        and name[:1] not in ("", "/")
        and name[1:2] != ":"
        and not name.isspace()
    ):
        return None
    if not isinstance(name, str) or not name.strip():
        return f"file name {shown(name)} is empty or not a string: rejected"
    if "\0" in name:
        return f"file name {shown(name)} contains a NUL byte: rejected, not opened"
    if not is_utf8(name):
        return f"file name {shown(name)} is not valid UTF-8: rejected, not opened"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"file name {shown(name)} is an absolute path outside the dataset root: rejected, not opened"
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return f"file name {shown(name)} escapes the dataset root: rejected, not opened"
    if "\\" in name:  # cvcore.io.resolve_inside refuses these too: one rule from ingest to training
        return f"file name {shown(name)} contains a backslash (a Windows path?): rejected, not opened"
    return None


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (file names from a listing may carry undecodable bytes
    as lone surrogates, which Parquet cannot store)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: object, limit: int = 80) -> str:
    """``value`` for a message: its repr, undecodable bytes escaped, cut to ``limit`` characters."""
    text = repr(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(text: str) -> str:
    """``text`` with undecodable bytes (lone surrogates) written as escapes, so a table can hold it."""
    return text if is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def as_int64(value: object) -> int | None:
    """An id as a 64-bit integer: ints and integral floats (some exporters write 3.0) in range;
    None for anything else (bool, 1.5, "3", 2**70, 1e300, inf, NaN)."""
    if type(value) is int:
        return value if INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, float) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    return None


def join_name(prefix: str, name: str) -> str:
    """``prefix/name`` as a POSIX relative path (prefix may be empty)."""
    return posixpath.normpath(f"{prefix}/{name}") if prefix else posixpath.normpath(name)


def quarantine_frame(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """Quarantine rows ``(source, item, reason)`` as a frame of schema.QUARANTINE."""
    if not rows:
        return schema.empty("quarantine")
    rows = [tuple(printable(v) for v in row) for row in rows]
    return pl.DataFrame(rows, schema=schema.QUARANTINE, orient="row")


def raw_images_frame(rows: list[tuple]) -> pl.DataFrame:
    """RAW_IMAGES from row tuples (image_id, file_name, split, width, height, source, item)."""
    return pl.DataFrame(rows, schema=RAW_IMAGES, orient="row")


def raw_annotations_frame(columns: dict[str, list], *, to_xyxy: Sequence[pl.Expr] | None = None) -> pl.DataFrame:
    """RAW_ANNOTATIONS from column lists (``area`` may hold None; iscrowd/difficult default False).

    Boxes come as ``x1, y1, x2, y2`` lists, or in the source's own format: its coordinate lists
    (every column not in RAW_ANNOTATIONS, read as float64: COCO's ``x, y, w, h``, VOC's
    ``xmin..ymax``) with ``to_xyxy``, the cvcore.boxes expressions that make ``x1..y2`` of them.
    """
    n = len(columns["ann_id"])
    columns = {"iscrowd": [False] * n, "difficult": [False] * n, "area": [None] * n} | columns
    if to_xyxy is None:
        return pl.DataFrame({k: columns[k] for k in RAW_ANNOTATIONS}, schema=RAW_ANNOTATIONS, strict=False)
    source = {k: pl.Float64 for k in columns if k not in RAW_ANNOTATIONS}
    frame_schema = {k: t for k, t in RAW_ANNOTATIONS.items() if k not in XYXY} | source
    frame = pl.DataFrame({k: columns[k] for k in frame_schema}, schema=frame_schema, strict=False)
    return frame.with_columns(to_xyxy).select(RAW_ANNOTATIONS.names())


def ids_by_file_name(file_names: list[str]) -> dict[str, int]:
    """Deterministic image ids 1..N in sorted file-name order (formats without their own ids).

    Re-ingesting unchanged data then gives the same ids and the same snapshot digest.
    """
    return {name: i for i, name in enumerate(sorted(set(file_names)), start=1)}


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else ValueError naming it and what was expected there."""
    if not path.exists():
        raise ValueError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path}: {what} is not a directory")
    return path


def list_image_files(folder: Path, root: Path, quarantine: list[tuple[str, str, str]]) -> list[str]:
    """Every non-hidden file under ``folder`` (recursively), as POSIX paths relative to ``root``.

    All entries but folders are returned, not only known image extensions and not only regular
    files, so that a stray non-image file, a FIFO or a dangling link is quarantined by the
    header check (cvcore.data.probe) rather than silently skipped. Hidden files (``.DS_Store``)
    and files inside hidden folders are not dataset items and are skipped. A name that is not
    valid UTF-8 gets a quarantine row here (a snapshot's tables cannot hold it) and is skipped.
    """
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        name = rel.as_posix()
        if not is_utf8(name):
            quarantine.append(
                (printable(str(path)), printable(name), "file name is not valid UTF-8: skipped, not opened")
            )
            continue
        out.append(name)
    return sorted(out)
