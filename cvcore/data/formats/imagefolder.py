"""ImageFolder classification: ``<split>/<class>/<image>`` to canonical tables.

Layout read (torchvision's ``ImageFolder``, one level of splits above it)::

    train/cat/001.jpg   train/dog/002.png   val/cat/003.jpg ...

When the top-level folders are not all split names (train, val, test, trainval and their
spellings, see canonical_split) the source is read as ``<class>/<image>``: one split, ``train``.
Classes are the folder names in sorted order over all splits (as torchvision does), so
``category_id`` is the sorted rank and ``source_id`` the same rank. Images may sit in nested
folders below their class folder; image ids are 1..N in sorted file-name order. A file or
class folder whose name is not valid UTF-8 gets a quarantine row and is skipped.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cvcore.data.formats._common import (
    RawSource,
    canonical_split,
    ids_by_file_name,
    is_utf8,
    list_image_files,
    quarantine_frame,
    raw_images_frame,
    require_dir,
)

_SPLITS = {"train", "val", "test", "trainval"}


def read_imagefolder(source: str | Path, *, images: str | Path | None = None) -> RawSource:
    """Parse an ImageFolder tree (see the module docstring). ``images`` does not apply.

    Raises ValueError naming the folder when it does not exist or holds no class folders.
    """
    if images is not None:
        raise ValueError("--images does not apply to imagefolder: the images are the SOURCE tree")
    root = require_dir(Path(source), "ImageFolder source").resolve()
    quarantine: list[tuple[str, str, str]] = []
    top = _visible_dirs(root)
    if top and all(canonical_split(d.name) in _SPLITS for d in top):
        split_dirs = [(d, canonical_split(d.name)) for d in top]
    else:
        split_dirs = [(root, "train")]

    listed: list[tuple[str, str, str]] = []  # (file_name, split, class)
    for split_dir, split in split_dirs:
        for stray in sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            quarantine.append((str(stray), "file", "file is not inside a class folder: skipped"))
        for class_dir in _visible_dirs(split_dir):
            if not is_utf8(class_dir.name):
                quarantine.append(
                    (str(class_dir), "folder", "class folder name is not valid UTF-8: its images skipped, not opened")
                )
                continue
            listed += [(f, split, class_dir.name) for f in list_image_files(class_dir, root, quarantine)]
    classes = sorted(
        {c for _, _, c in listed} | {d.name for s, _ in split_dirs for d in _visible_dirs(s) if is_utf8(d.name)}
    )
    if not classes:
        raise ValueError(f"{root}: no class folders found; expected <split>/<class>/<image> or <class>/<image>")

    index = {c: i for i, c in enumerate(classes)}
    ids = ids_by_file_name([f for f, _, _ in listed])
    rows = sorted((ids[f], f, split, None, None, str(root), f) for f, split, _ in listed)
    labels = pl.DataFrame(
        {"image_id": [ids[f] for f, _, _ in listed], "category_id": [index[c] for _, _, c in listed]},
        schema={"image_id": pl.Int64, "category_id": pl.Int32},
    ).sort("image_id")
    categories = pl.DataFrame(
        {"category_id": list(range(len(classes))), "name": classes, "source_id": list(range(len(classes)))},
        schema={"category_id": pl.Int32, "name": pl.String, "source_id": pl.Int64},
    )
    return RawSource(
        format="imagefolder",
        task="classification",
        image_root=root,
        images=raw_images_frame(rows),
        categories=categories,
        annotations=None,
        labels=labels,
        quarantine=quarantine_frame(quarantine),
    )


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
