"""Readers of real dataset formats (COCO, VOC, YOLO, ImageFolder) and the COCO writer.

Each reader turns a source in the layout its users know into a :class:`RawSource` of canonical
tables (xyxy float64 pixel boxes, contiguous category ids) without opening any image;
cvcore.data.ingest then checks the images and writes the snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cvcore.data.formats._common import RawSource, canonical_split, unsafe_file_name
from cvcore.data.formats.coco import CocoFiles, read_coco, write_coco, write_coco_results
from cvcore.data.formats.imagefolder import read_imagefolder
from cvcore.data.formats.voc import read_voc
from cvcore.data.formats.yolo import read_yolo

Reader = Callable[..., RawSource]

READERS: dict[str, Reader] = {
    "coco": read_coco,
    "voc": read_voc,
    "yolo": read_yolo,
    "imagefolder": read_imagefolder,
}
FORMATS = tuple(READERS)


def read_source(source: str | Path, *, fmt: str, images: str | Path | None = None) -> RawSource:
    """Parse ``source`` with the reader of ``fmt`` (one of FORMATS); ValueError for unknown formats."""
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}") from None
    return reader(source, images=images)


__all__ = [
    "FORMATS",
    "READERS",
    "CocoFiles",
    "RawSource",
    "canonical_split",
    "read_coco",
    "read_imagefolder",
    "read_source",
    "read_voc",
    "read_yolo",
    "unsafe_file_name",
    "write_coco",
    "write_coco_results",
]
