"""Checks and repairs of parsed sources, as pure functions over frames.

Nothing here raises on a bad item: each function returns the rows it keeps (repaired where a
repair is sound) and a quarantine frame with one row per rejected or repaired item, whose
``reason`` reads ``<what is wrong> (<details>): <what was done>``. cvcore.data.health groups
reasons by the part before the details, so keep that shape when adding checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cvcore import boxes, schema
from cvcore.data.formats._common import quarantine_frame, unsafe_file_name

# Overshoots below this many pixels are float noise (e.g. YOLO's (cx + w/2) * W), not damage:
# they are clipped without a quarantine row.
CLIP_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class Checked:
    """Rows that passed (repaired where sound) and the quarantine rows for the rest."""

    table: pl.DataFrame
    quarantine: pl.DataFrame


def objects_per_image(annotations: pl.DataFrame | None, labels: pl.DataFrame | None) -> dict[int, int]:
    """image_id -> number of annotations (detection) or labels (classification) that refer to it."""
    frame = annotations if annotations is not None else labels
    if frame is None or frame.is_empty():
        return {}
    return dict(frame.group_by("image_id").len().iter_rows())


def dropped_with(n: int, unit: str) -> str:
    """``"image dropped with its 3 annotations"``: what dropping an image took with it."""
    return f"image dropped with its {n} {unit}{'' if n == 1 else 's'}"


def check_image_entries(images: pl.DataFrame, *, n_objects: dict[int, int], unit: str) -> Checked:
    """Reject image entries with unsafe file names, duplicate ids or duplicate files.

    ``images`` is a reader's RAW_IMAGES frame. Unsafe names (absolute, ``..``) are rejected
    without touching the file system. Of entries sharing an id or a file, the first is kept;
    annotations of a duplicate id stay with the kept entry. ``unit`` names what an image
    carries ("annotation" or "label") for the reasons.
    """
    seen_ids: dict[int, str] = {}
    seen_files: dict[str, int] = {}
    keep, rows = [], []
    for i, (image_id, name, source, item) in enumerate(
        images.select("image_id", "file_name", "source", "item").iter_rows()
    ):
        problem = unsafe_file_name(name)
        if problem:
            rows.append((source, item, f"{problem}; {dropped_with(n_objects.get(image_id, 0), unit)}"))
        elif image_id in seen_ids:
            rows.append(
                (
                    source,
                    item,
                    f"duplicate image id {image_id} (first for {seen_ids[image_id]!r}, again for {name!r}): dropped, its {unit}s stay with the first",
                )
            )
        elif name in seen_files:
            rows.append(
                (
                    source,
                    item,
                    f"file {name!r} is listed twice (image ids {seen_files[name]} and {image_id}): second entry {dropped_with(n_objects.get(image_id, 0), unit)}",
                )
            )
        else:
            seen_ids[image_id], seen_files[name] = name, image_id
            keep.append(i)
    return Checked(images[keep], quarantine_frame(rows))


def apply_headers(
    entries: pl.DataFrame, headers: pl.DataFrame, *, image_root: Path, n_objects: dict[int, int], unit: str
) -> Checked:
    """Join image entries with their header reads (cvcore.data.probe.PROBE), dropping bad images.

    Returns IMAGES rows for the usable images, with width/height from the file (as displayed,
    EXIF applied) and its sha256. A declared size that differs from the file's is replaced and
    recorded. Quarantine rows name the image file itself as their source.
    """
    df = entries.join(
        headers.rename({"width": "file_width", "height": "file_height"}),
        on="file_name",
        how="left",
        maintain_order="left",
    )
    bad = df.filter(pl.col("problem").is_not_null() | pl.col("sha256").is_null())
    rows = [
        (
            str(Path(image_root) / r["file_name"]),
            r["item"],
            f"{r['problem'] or 'image not read'}: {dropped_with(n_objects.get(r['image_id'], 0), unit)}",
        )
        for r in bad.iter_rows(named=True)
    ]
    good = df.filter(pl.col("problem").is_null() & pl.col("sha256").is_not_null())
    declared = pl.col("width").is_not_null() & pl.col("height").is_not_null()
    mismatch = good.filter(
        declared & ((pl.col("width") != pl.col("file_width")) | (pl.col("height") != pl.col("file_height")))
    )
    rows += [
        (
            r["source"],
            r["item"],
            f"declared size differs from the image file (declared {r['width']}x{r['height']}, file {r['file_width']}x{r['file_height']} "
            f"as displayed, EXIF orientation {r['orientation']}): the file's size is used",
        )
        for r in mismatch.iter_rows(named=True)
    ]
    table = good.select(
        "image_id",
        "file_name",
        pl.col("file_width").alias("width"),
        pl.col("file_height").alias("height"),
        "split",
        "sha256",
    )
    return Checked(schema.validate(table, "images"), quarantine_frame(rows))


def normalized_to_pixels(annotations: pl.DataFrame, images: pl.DataFrame) -> pl.DataFrame:
    """Boxes given as fractions of the image size (YOLO) times each image's width/height.

    Rows whose image is not in ``images`` get null coordinates; check_annotations drops them.
    """
    sizes = images.select(
        "image_id", pl.col("width").cast(pl.Float64).alias("_w"), pl.col("height").cast(pl.Float64).alias("_h")
    )
    return (
        annotations.join(sizes, on="image_id", how="left", maintain_order="left")
        .with_columns(boxes.scale_xyxy("_w", "_h"))
        .drop("_w", "_h")
    )


def check_annotations(
    annotations: pl.DataFrame, images: pl.DataFrame, *, dropped_image_ids: set[int] | frozenset[int] = frozenset()
) -> Checked:
    """Validate xyxy pixel boxes against their images; clip what sticks out, drop what is broken.

    ``annotations``: RAW_ANNOTATIONS rows (boxes in pixels); ``images``: IMAGES rows of the
    usable images. In order, a row is dropped for a duplicate ann_id (the first is kept), an
    unknown image id, a non-finite coordinate, a non-positive width or height, or a box entirely
    outside its image; rows of ``dropped_image_ids`` go silently (their image's quarantine row
    counts them). Boxes partly outside are clipped to ``[0, W] x [0, H]``. ``area`` keeps the
    source's value, capped at the clipped box's area; a missing area becomes ``w * h``.
    Returns ANNOTATIONS rows sorted by ann_id.
    """
    sizes = images.select("image_id", pl.col("width").alias("_W"), pl.col("height").alias("_H"))
    df = annotations.join(sizes, on="image_id", how="left", maintain_order="left")
    ids = df.get_column("ann_id")
    dup = (ids.is_duplicated() & ~ids.is_first_distinct()).to_numpy()
    known = df.get_column("_W").is_not_null().to_numpy()
    gone = df.get_column("image_id").is_in(pl.Series(sorted(dropped_image_ids), dtype=pl.Int64).implode()).to_numpy()
    x1, y1, x2, y2 = (
        df.get_column(c).fill_null(np.nan).to_numpy().astype(np.float64) for c in ("x1", "y1", "x2", "y2")
    )
    W = df.get_column("_W").fill_null(0).to_numpy().astype(np.float64)
    H = df.get_column("_H").fill_null(0).to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        w, h = x2 - x1, y2 - y1
        finite = np.isfinite(x1) & np.isfinite(y1) & np.isfinite(x2) & np.isfinite(y2)
        positive = finite & (w > 0) & (h > 0)
        outside = known & positive & ((x1 >= W) | (y1 >= H) | (x2 <= 0) | (y2 <= 0))
        tol = CLIP_TOLERANCE_PX
        sticks_out = (x1 < -tol) | (y1 < -tol) | (x2 > W + tol) | (y2 > H + tol)
    rejected = dup | (~known & ~gone) | (known & ~positive) | outside
    keep = known & ~gone & ~dup & positive & ~outside
    repaired = keep & sticks_out

    source, item = df.get_column("source").to_list(), df.get_column("item").to_list()
    image_ids = df.get_column("image_id").to_numpy()
    rows = []
    for i in np.flatnonzero(rejected | repaired):
        reason = _box_reason(dup[i], known[i], int(image_ids[i]), x1[i], y1[i], x2[i], y2[i], W[i], H[i])
        rows.append((source[i], item[i], reason))

    cx1, cx2 = np.clip(x1, 0, W), np.clip(x2, 0, W)
    cy1, cy2 = np.clip(y1, 0, H), np.clip(y2, 0, H)
    box_area = (cx2 - cx1) * (cy2 - cy1)
    area = df.get_column("area").fill_null(np.nan).to_numpy().astype(np.float64)
    bad_area = keep & ((np.isfinite(area) & (area <= 0)) | np.isinf(area))  # NaN/null: missing, not bad
    for i in np.flatnonzero(bad_area):
        rows.append((source[i], item[i], f"invalid area ({area[i]:.6g}): replaced by the box area {box_area[i]:.6g}"))
    area = np.where(np.isfinite(area) & (area > 0), np.minimum(area, box_area), box_area)

    table = (
        df.with_columns(
            pl.Series("x1", cx1),
            pl.Series("y1", cy1),
            pl.Series("x2", cx2),
            pl.Series("y2", cy2),
            pl.Series("area", area),
        )
        .filter(pl.Series(keep))
        .sort("ann_id")
    )
    return Checked(schema.validate(table, "annotations"), quarantine_frame(rows))


def check_labels(
    labels: pl.DataFrame, images: pl.DataFrame, *, dropped_image_ids: set[int] | frozenset[int] = frozenset()
) -> Checked:
    """Classification labels whose image is usable; labels of unknown images are quarantined."""
    kept_ids = images.get_column("image_id").implode()
    known = labels.filter(pl.col("image_id").is_in(kept_ids))
    unknown = labels.filter(
        ~pl.col("image_id").is_in(kept_ids)
        & ~pl.col("image_id").is_in(pl.Series(sorted(dropped_image_ids), dtype=pl.Int64).implode())
    )
    rows = [
        ("labels", f"image id {i}", f"label refers to unknown image id {i}: dropped")
        for i in unknown.get_column("image_id")
    ]
    dup = known.filter(pl.col("image_id").is_duplicated() & ~pl.col("image_id").is_first_distinct())
    rows += [
        ("labels", f"image id {i}", f"image has a second label (category {c}): dropped, the first is kept")
        for i, c in dup.iter_rows()
    ]
    table = known.filter(pl.col("image_id").is_first_distinct()).sort("image_id")
    return Checked(schema.validate(table, "labels"), quarantine_frame(rows))


def _box_reason(
    dup: bool, known: bool, image_id: int, x1: float, y1: float, x2: float, y2: float, W: float, H: float
) -> str:
    """The quarantine reason of one rejected or clipped box (checks in check_annotations' order)."""
    if dup:
        return "duplicate annotation id (the first one is kept): dropped"
    if not known:
        return f"refers to unknown image id {image_id}: dropped"
    coords = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
    bad = [f"{k}={v}" for k, v in coords.items() if not np.isfinite(v)]
    if bad:
        return f"box has a missing or non-finite coordinate ({', '.join(bad)}): dropped"
    w, h = x2 - x1, y2 - y1
    if w < 0:
        return f"box x2 < x1 (w={w:.6g}): dropped"
    if w == 0:
        return f"box has zero width (x1 = x2 = {x1:.6g}): dropped"
    if h < 0:
        return f"box y2 < y1 (h={h:.6g}): dropped"
    if h == 0:
        return f"box has zero height (y1 = y2 = {y1:.6g}): dropped"
    if x1 >= W or y1 >= H or x2 <= 0 or y2 <= 0:
        return f"box entirely outside the image ({_disjoint_parts(x1, y1, x2, y2, W, H)}): dropped"
    return f"box beyond the image ({_outside_parts(x1, y1, x2, y2, W, H)}): clipped to the image"


def _outside_parts(x1: float, y1: float, x2: float, y2: float, W: float, H: float) -> str:
    tol = CLIP_TOLERANCE_PX
    parts = []
    if x1 < -tol:
        parts.append(f"x1={x1:.6g} < 0")
    if y1 < -tol:
        parts.append(f"y1={y1:.6g} < 0")
    if x2 > W + tol:
        parts.append(f"x2={x2:.6g} > width {W:.0f}")
    if y2 > H + tol:
        parts.append(f"y2={y2:.6g} > height {H:.0f}")
    return ", ".join(parts)


def _disjoint_parts(x1: float, y1: float, x2: float, y2: float, W: float, H: float) -> str:
    checks = [(x1 >= W, f"x1={x1:.6g} >= width {W:.0f}"), (y1 >= H, f"y1={y1:.6g} >= height {H:.0f}")]
    checks += [(x2 <= 0, f"x2={x2:.6g} <= 0"), (y2 <= 0, f"y2={y2:.6g} <= 0")]
    return ", ".join(text for hit, text in checks if hit)
