"""Offline augmentation: N augmented copies of one split, written as a new snapshot.

The new snapshot keeps its pixels in its own ``images/`` folder (its image root, docs/ARCHITECTURE.md §3):
``images/<split>/c<copy>_<source image id>.png`` for the augmented copies, and
``images/source/<file_name>`` for the images of the other splits, which are carried over
unchanged (hard links where the file system allows, else copies) so the snapshot trains and
validates on its own. Ids of carried-over images and annotations are kept; augmented images and
their annotations get new ids above them. ``augment.json`` records the source snapshot (name,
digest), the split, the number of copies, the image size and the augmentation config.

Augmented boxes have no segmentation, so their ``area`` is the box area. Classification copies
keep their hard label: batch mixing (CutMix/MixUp) makes soft labels, which a labels table
cannot hold, so it is a training-time step only. Everything is written to a temporary sibling
folder and renamed into place by cvcore.data.snapshot.write_snapshot (atomic).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from rich.console import Console
from rich.progress import track

from cvcore.augment.preview import to_uint8
from cvcore.data.snapshot import Snapshot, SnapshotError, check_writable, write_snapshot

log = logging.getLogger(__name__)
INT64_MAX = int(np.iinfo(np.int64).max)  # image_id and ann_id are int64


def materialize_split(
    snapshot: Snapshot,
    dataset,
    *,
    split: str,
    copies: int,
    out: str | Path,
    provenance: dict[str, Any],
    name: str | None = None,
) -> Snapshot:
    """Write ``copies`` passes of ``dataset`` (augmented samples of ``split``) as a snapshot at ``out``.

    ``dataset`` yields pipeline outputs (``(float image[3, S, S], target)`` for detection,
    ``(image, label)`` for classification) and has ``set_epoch`` (copy c is epoch c) and
    ``.dataset.image_ids`` (MosaicDataset, SeededDataset). Returns the new Snapshot.
    """
    out = Path(out)
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    check_new_folder(out)
    _check_id_room(snapshot, "image_id", snapshot.images, copies * len(dataset))
    if snapshot.annotations is not None:
        _check_id_room(snapshot, "ann_id", snapshot.annotations, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.materialize.", dir=out.parent))
    try:
        image_dir = tmp / "images"
        kept = _carry_other_splits(snapshot, split=split, image_dir=image_dir)
        new = _write_copies(snapshot, dataset, split=split, copies=copies, image_dir=image_dir)
        (tmp / "augment.json").write_text(
            json.dumps(
                {
                    "source": {"name": snapshot.name, "digest": snapshot.digest, "path": str(snapshot.path)},
                    "split": split,
                    "copies": copies,
                    **provenance,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
        tables: dict[str, Any] = {"images": pl.concat([kept["images"], new["images"]], how="vertical_relaxed")}
        if snapshot.task == "detection":
            tables["annotations"] = pl.concat([kept["annotations"], new["annotations"]], how="vertical_relaxed")
        else:
            tables["labels"] = pl.concat([kept["labels"], new["labels"]], how="vertical_relaxed")
        return write_snapshot(
            out,
            name=name or f"{snapshot.name}-aug{copies}",
            task=snapshot.task,
            source_format="augmented",
            image_root="images",
            categories=snapshot.categories,
            quarantine=snapshot.quarantine,
            extra_files={"images": image_dir, "augment.json": tmp / "augment.json"},
            **tables,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _carry_other_splits(snapshot: Snapshot, *, split: str, image_dir: Path) -> dict[str, pl.DataFrame]:
    """Link or copy the other splits' images under ``source/``; their rows with new file names.

    An image goes to ``source/<its path relative to the image root, resolved>``: never the row's
    file name as text, whose ``..`` through a link inside the root would climb out of
    ``image_dir`` and replace a file beside the new snapshot. A row leading outside the root
    (cvcore.io.resolve_inside) is left out with a warning, as training skips it.
    """
    others = snapshot.images.filter(pl.col("split") != split)
    root = snapshot.image_root.resolve()
    names: list[str | None] = []
    for file_name in others.get_column("file_name"):
        try:
            src = snapshot.image_path(file_name)
        except ValueError as exc:
            log.warning("leaving out image %r: %s", file_name, exc)
            names.append(None)
            continue
        inner = src.relative_to(root).as_posix()
        dst = image_dir / "source" / inner
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():  # two rows naming one file share it
            try:
                os.link(src, dst)
            except OSError:  # another file system, or links not allowed: copy instead
                shutil.copy2(src, dst)
        names.append(f"source/{inner}")
    others = others.with_columns(file_name=pl.Series(names, dtype=pl.String)).drop_nulls("file_name")
    ids = others.get_column("image_id").implode()
    out = {"images": others}
    if snapshot.annotations is not None:
        out["annotations"] = snapshot.annotations.filter(pl.col("image_id").is_in(ids))
    if snapshot.labels is not None:
        out["labels"] = snapshot.labels.filter(pl.col("image_id").is_in(ids))
    return out


def check_new_folder(out: str | Path) -> None:
    """SnapshotError unless a new snapshot can be made at ``out``: nothing there (not even a
    dangling link), a file name within the limit and a writable folder above it."""
    out = Path(out)
    check_writable(out)  # a name too long, a read-only or missing place: one line, before any stat that would raise
    if out.exists() or out.is_symlink():
        raise SnapshotError(f"{out} already exists; choose another --out or remove it")


def _check_id_room(snapshot: Snapshot, column: str, table: pl.DataFrame, needed: int) -> None:
    """ValueError naming the snapshot when ``needed`` new ids above ``table``'s highest ``column``
    (plus one per new box, checked as they come for annotations) would pass int64's maximum."""
    top = table.get_column(column).max() if table.height else 0
    if int(top) > INT64_MAX - max(needed, 1):
        raise ValueError(
            f"{snapshot.path}: {column} values go up to {top}, leaving no room for {max(needed, 1)} new ids below "
            f"{INT64_MAX}; renumber the snapshot (re-ingest it) before materialising"
        )


def _write_copies(snapshot: Snapshot, dataset, *, split: str, copies: int, image_dir: Path) -> dict[str, pl.DataFrame]:
    source_ids = dataset.dataset.image_ids
    next_image = int(snapshot.images.get_column("image_id").max()) + 1
    anns = snapshot.annotations
    next_ann = int(anns.get_column("ann_id").max()) + 1 if anns is not None and anns.height else 1
    images, boxes, labels = [], [], []
    (image_dir / split).mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in range(copies) for i in range(len(dataset))]
    for c, i in track(
        jobs,
        description=f"materialising {split}",
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    ):
        if i == 0:
            dataset.set_epoch(c)
        sample = dataset[i]
        if sample is None:
            log.warning("copy %d: skipping image %d of split %s (undecodable)", c, int(source_ids[i]), split)
            continue
        image, target = sample
        pixels = to_uint8(image)
        data = _png_bytes(pixels)
        file_name = f"{split}/c{c:03d}_{int(source_ids[i])}.png"
        (image_dir / file_name).write_bytes(data)
        image_id = next_image + len(images)
        h, w = pixels.shape[-2:]
        images.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "width": w,
                "height": h,
                "split": split,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        if isinstance(target, dict):
            xyxy = target["boxes"].as_subclass(torch.Tensor).double().tolist()
            if next_ann + len(boxes) + len(xyxy) > INT64_MAX:
                _check_id_room(snapshot, "ann_id", anns, len(boxes) + len(xyxy))
            for (x1, y1, x2, y2), cat in zip(xyxy, target["labels"].tolist()):
                boxes.append(
                    {
                        "ann_id": next_ann + len(boxes),
                        "image_id": image_id,
                        "category_id": int(cat),
                        "x1": x1,
                        "y1": y1,
                        "x2": x2,
                        "y2": y2,
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": False,
                        "difficult": False,
                    }
                )
        else:
            labels.append({"image_id": image_id, "category_id": int(target)})
    images_frame = pl.DataFrame(images, schema=snapshot.images.schema)
    if snapshot.task == "detection":
        return {"images": images_frame, "annotations": pl.DataFrame(boxes, schema=snapshot.annotations.schema)}
    return {"images": images_frame, "labels": pl.DataFrame(labels, schema=snapshot.labels.schema)}


def _png_bytes(pixels: torch.Tensor) -> bytes:
    """PNG bytes of ``uint8[3, H, W]`` (PIL: torchvision.io's encoders are deprecated since 0.29)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()
