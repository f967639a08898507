"""Built-in data: seeded generators of small shape datasets, written as canonical snapshots.

The detection set has several shape classes on textured backgrounds. Every box is exact: it is
the bounding box of the pixels the shape covers (objects never overlap), and ``area`` is the
shape's pixel count (like COCO's segmentation area, so it differs from the box's w*h). Object
sizes span COCO's small and medium ranges, so per-size AP means something. The classification
set has one shape per image and the shape is the label.

Each image is drawn from its own generator seeded by ``(seed, split, index)``, so a dataset is
reproducible and the first N images do not depend on how many are asked for.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from cvcore.data.snapshot import Snapshot, check_out, check_writable, write_snapshot

SHAPES = ("circle", "square", "triangle", "cross")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def make_shapes_detection(
    out: str | Path,
    *,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 0,
    image_size: int = 128,
    max_objects: int = 4,
    min_size: int = 10,
    max_size: int = 56,
    seed: int = 0,
    name: str = "shapes",
    replace: bool = False,
) -> Snapshot:
    """Write a detection snapshot of shapes to ``out`` and return it.

    Images are ``image_size`` x ``image_size`` RGB PNGs with 1..``max_objects`` non-overlapping
    shapes whose side is in [min_size, max_size] pixels. ``replace``: an existing snapshot at
    ``out`` is replaced (only a cvflow snapshot, see snapshot.check_replaceable).
    """
    if not 4 <= min_size <= max_size < image_size:
        raise ValueError(f"need 4 <= min_size <= max_size < image_size, got {min_size}, {max_size}, {image_size}")
    check_out(out, replace=replace)
    check_writable(out)
    images, anns = [], []
    with tempfile.TemporaryDirectory(dir=_parent(out)) as tmp:
        img_dir = Path(tmp) / "images"
        img_dir.mkdir()
        for split, count in _splits(n_train, n_val, n_test):
            for i in range(count):
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
                canvas = _background(rng, image_size, image_size)
                placed: list[tuple[int, int, int, int]] = []
                image_id = len(images) + 1
                for _ in range(int(rng.integers(1, max_objects + 1))):
                    obj = _place_object(rng, canvas, placed, min_size, max_size)
                    if obj is None:
                        continue
                    cls, (x1, y1, x2, y2), area = obj
                    placed.append((x1, y1, x2, y2))
                    anns.append((len(anns) + 1, image_id, cls, float(x1), float(y1), float(x2), float(y2), float(area)))
                images.append(_save(canvas, img_dir, f"{split}_{i:06d}.png", image_id, split))
        return write_snapshot(
            out,
            name=name,
            task="detection",
            source_format="synthetic",
            image_root="images",
            images=_images_frame(images),
            categories=_categories_frame(),
            annotations=pl.DataFrame(
                anns, schema=["ann_id", "image_id", "category_id", "x1", "y1", "x2", "y2", "area"], orient="row"
            ),
            extra_files={"images": img_dir},
            replace=replace,
        )


def make_shapes_classification(
    out: str | Path,
    *,
    n_train: int = 800,
    n_val: int = 200,
    n_test: int = 0,
    image_size: int = 32,
    seed: int = 0,
    name: str = "shapes-cls",
    replace: bool = False,
) -> Snapshot:
    """Write a classification snapshot (one shape per image, label = shape) and return it.

    ``replace``: as in :func:`make_shapes_detection`.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    check_out(out, replace=replace)
    check_writable(out)
    images, labels = [], []
    with tempfile.TemporaryDirectory(dir=_parent(out)) as tmp:
        img_dir = Path(tmp) / "images"
        img_dir.mkdir()
        for split, count in _splits(n_train, n_val, n_test):
            for i in range(count):
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
                canvas = _background(rng, image_size, image_size)
                lo, hi = int(image_size * 0.4), int(image_size * 0.8)
                obj = _place_object(rng, canvas, [], lo, hi)
                assert obj is not None  # one object on an empty canvas always fits
                image_id = len(images) + 1
                labels.append((image_id, obj[0]))
                images.append(_save(canvas, img_dir, f"{split}_{i:06d}.png", image_id, split))
        return write_snapshot(
            out,
            name=name,
            task="classification",
            source_format="synthetic",
            image_root="images",
            images=_images_frame(images),
            categories=_categories_frame(),
            labels=pl.DataFrame(labels, schema=["image_id", "category_id"], orient="row"),
            extra_files={"images": img_dir},
            replace=replace,
        )


def _splits(n_train: int, n_val: int, n_test: int) -> list[tuple[str, int]]:
    return [(s, n) for s, n in (("train", n_train), ("val", n_val), ("test", n_test)) if n > 0]


def _parent(out: str | Path) -> Path:
    parent = Path(out).parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted texture: a smooth colour field (upsampled coarse noise) plus fine grain. uint8[h, w, 3]."""
    coarse = rng.uniform(40, 170, size=(4, 4, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32)
    grain = rng.normal(0.0, 12.0, size=(h, w, 1)).astype(np.float32)
    return np.clip(field + grain, 0, 255).astype(np.uint8)


def _place_object(
    rng: np.random.Generator,
    canvas: np.ndarray,
    placed: list[tuple[int, int, int, int]],
    min_size: int,
    max_size: int,
) -> tuple[int, tuple[int, int, int, int], int] | None:
    """Draw one random shape where it overlaps nothing placed (2 px margin).

    Returns (class, exact box x1, y1, x2, y2 in pixels with x2/y2 exclusive, pixel area), or None
    when no free spot was found.
    """
    h, w = canvas.shape[:2]
    for _ in range(30):
        cls = int(rng.integers(len(SHAPES)))
        size = int(rng.integers(min_size, max_size + 1))
        aspect = float(rng.uniform(0.7, 1.4)) if SHAPES[cls] != "square" else float(rng.uniform(0.8, 1.25))
        bw = max(4, min(w - 1, int(round(size * np.sqrt(aspect)))))
        bh = max(4, min(h - 1, int(round(size / np.sqrt(aspect)))))
        x0 = int(rng.integers(0, w - bw + 1))
        y0 = int(rng.integers(0, h - bh + 1))
        if any(
            x0 < px2 + 2 and px1 < x0 + bw + 2 and y0 < py2 + 2 and py1 < y0 + bh + 2 for px1, py1, px2, py2 in placed
        ):
            continue
        mask = _shape_mask(SHAPES[cls], w, h, x0, y0, bw, bh)
        ys, xs = np.nonzero(mask)
        colour = _contrasting_colour(rng, canvas[mask].mean(axis=0))
        canvas[mask] = colour
        return cls, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), int(mask.sum())
    return None


def _shape_mask(shape: str, w: int, h: int, x0: int, y0: int, bw: int, bh: int) -> np.ndarray:
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([(x0 + (bw - 1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    else:  # cross: two bars a third of the box thick
        tx, ty = max(1, bw // 3), max(1, bh // 3)
        draw.rectangle([x0, y0 + ty, x1, y1 - ty], fill=255)
        draw.rectangle([x0 + tx, y0, x1 - tx, y1], fill=255)
    return np.asarray(img) > 127


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 180:
            return colour.astype(np.uint8)


def _save(canvas: np.ndarray, img_dir: Path, file_name: str, image_id: int, split: str) -> tuple:
    path = img_dir / file_name
    Image.fromarray(canvas).save(path, format="PNG")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return image_id, file_name, canvas.shape[1], canvas.shape[0], split, digest


def _images_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["image_id", "file_name", "width", "height", "split", "sha256"], orient="row")


def _categories_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "category_id": list(range(len(SHAPES))),
            "name": list(SHAPES),
            "source_id": [i + 1 for i in range(len(SHAPES))],
        }
    )
