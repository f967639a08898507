"""Test helpers: write one detection snapshot in the layouts COCO, VOC and YOLO users ship.

These writers are deliberately naive (plain loops, the format specs' own formulas) so that the
readers are checked against an independent spelling of each convention.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from cvcore.data.formats import write_coco
from cvcore.data.snapshot import Snapshot


def copy_images(snapshot: Snapshot, dest_for) -> None:
    """Copy every image to ``dest_for(row)`` (a Path)."""
    for row in snapshot.images.iter_rows(named=True):
        dest = dest_for(row)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot.image_path(row["file_name"]), dest)


def write_coco_folder(snapshot: Snapshot, out: Path) -> Path:
    """``out/annotations/instances_<split>.json`` + ``out/images/<split>/<file>``."""
    for split in snapshot.splits:
        write_coco(snapshot, out / "annotations" / f"instances_{split}.json", split=split)
    # write_coco keeps the snapshot's file names; put the files where COCO users keep them.
    copy_images(snapshot, lambda r: out / "images" / r["split"] / r["file_name"])
    return out


def write_voc_folder(snapshot: Snapshot, out: Path) -> Path:
    """VOCdevkit-style: Annotations/<id>.xml (1-based inclusive corners), ImageSets/Main, PNGImages."""
    names = dict(snapshot.categories.select("category_id", "name").iter_rows())
    (out / "Annotations").mkdir(parents=True)
    (out / "ImageSets" / "Main").mkdir(parents=True)
    anns = snapshot.annotations
    for split in snapshot.splits:
        rows = snapshot.split_images(split)
        ids = [Path(f).stem for f in rows.get_column("file_name")]
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for row in rows.iter_rows(named=True):
            objs = []
            for a in anns.filter(pl.col("image_id") == row["image_id"]).sort("ann_id").iter_rows(named=True):
                # canonical continuous x1..x2 covers 1-based pixels x1+1 .. x2
                objs.append(
                    f"<object><name>{names[a['category_id']]}</name><difficult>{int(a['difficult'])}</difficult>"
                    f"<bndbox><xmin>{a['x1'] + 1:g}</xmin><ymin>{a['y1'] + 1:g}</ymin><xmax>{a['x2']:g}</xmax><ymax>{a['y2']:g}</ymax></bndbox></object>"
                )
            xml = (
                f"<annotation><folder>PNGImages</folder><filename>{row['file_name']}</filename>"
                f"<size><width>{row['width']}</width><height>{row['height']}</height><depth>3</depth></size>{''.join(objs)}</annotation>"
            )
            (out / "Annotations" / f"{Path(row['file_name']).stem}.xml").write_text(xml)
    copy_images(snapshot, lambda r: out / "PNGImages" / r["file_name"])
    return out


def write_yolo_folder(snapshot: Snapshot, out: Path) -> Path:
    """Ultralytics layout: data.yaml, images/<split>/<file>, labels/<split>/<stem>.txt (normalised cx cy w h)."""
    names = snapshot.class_names
    splits = snapshot.splits
    yaml_lines = [f"{s}: images/{s}" for s in splits] + ["names:"] + [f"  {i}: {n}" for i, n in enumerate(names)]
    out.mkdir(parents=True)
    (out / "data.yaml").write_text("\n".join(yaml_lines) + "\n")
    for row in snapshot.images.iter_rows(named=True):
        W, H = row["width"], row["height"]
        lines = []
        for a in (
            snapshot.annotations.filter(pl.col("image_id") == row["image_id"]).sort("ann_id").iter_rows(named=True)
        ):
            cx, cy = (a["x1"] + a["x2"]) / 2 / W, (a["y1"] + a["y2"]) / 2 / H
            w, h = (a["x2"] - a["x1"]) / W, (a["y2"] - a["y1"]) / H
            lines.append(f"{a['category_id']} {cx:.12f} {cy:.12f} {w:.12f} {h:.12f}")
        label = out / "labels" / row["split"] / f"{Path(row['file_name']).stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
    copy_images(snapshot, lambda r: out / "images" / r["split"] / r["file_name"])
    return out


def tiny_coco(
    root: Path,
    *,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
    sizes: dict | None = None,
) -> Path:
    """A COCO folder with hand-written entries; every listed image that has a size in ``sizes``
    (file_name -> (w, h)) is written as a PNG under images/train/. Returns the folder."""
    categories = categories if categories is not None else [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    for name, (w, h) in (sizes or {}).items():
        png(root / "images" / "train" / name, w, h)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))  # NaN/Infinity allowed
    return root


def png(path: Path, w: int, h: int, *, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def jpeg_bytes(w: int, h: int, *, orientation: int | None = None, seed: int = 0) -> bytes:
    """A JPEG of stored size w x h, optionally with an EXIF orientation tag."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()
