"""Ingestion: a dataset in a known format -> a validated canonical snapshot + its health report.

The steps, each a pure function elsewhere in cvcore.data:

1. parse the source with its format's reader (cvcore.data.formats) — no image is opened;
2. reject unsafe or duplicate image entries (validate.check_image_entries) — still nothing opened;
3. read every image header in parallel threads: size as displayed, sha256, integrity (probe);
4. check boxes against their images: drop the broken, clip the overhanging (validate);
5. optionally split a single-split source into train/val, seeded and stratified (split);
6. write the snapshot atomically with its content digest (snapshot.write_snapshot).

One bad item never stops ingestion: it becomes a quarantine row saying what was wrong and what
was done. Only a source that is unusable as a whole (missing folder, unreadable annotation
file, not one usable image) raises ValueError naming the path; so does an ``out`` that may not
be written (exists without ``replace``, not a snapshot, not writable), before any work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from cvcore.data import split as splitting
from cvcore.data import validate
from cvcore.data.formats import read_source
from cvcore.data.health import HealthReport, health_report
from cvcore.data.probe import MAX_PIXELS, probe_images
from cvcore.data.snapshot import Snapshot, check_out, check_writable, write_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """The snapshot written and its health report."""

    snapshot: Snapshot
    report: HealthReport


def ingest(
    source: str | Path,
    *,
    fmt: str,
    out: str | Path,
    images: str | Path | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    name: str | None = None,
    replace: bool = False,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Ingest ``source`` (format ``fmt``: coco, voc, yolo, imagefolder) into a snapshot at ``out``.

    ``images``: image folder when SOURCE is a single annotation file (COCO) or a folder of VOC
    XMLs. ``val_fraction``: for a source with one split, the share of its images moved to a new
    ``val`` split (the rest become ``train``), stratified by class and seeded by ``seed``; an
    error for sources that already have several splits. ``name`` defaults to the source's
    folder (or file) name. ``replace`` allows overwriting an existing ``out`` when it is a cvflow
    snapshot that neither holds nor lies inside the source or its image root
    (snapshot.check_replaceable). ``workers``: threads for header reads. ``max_pixels``: images
    with more pixels (width x height, default 64 megapixels) are quarantined from their header,
    before any decode, so no later step has to hold a huge image in memory. ``on_progress(done, total)`` follows the header reads.
    """
    source, out = Path(source), Path(out)
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    check_out(out, replace=replace, protected=[p for p in (source, images) if p is not None])  # again when writing
    check_writable(out)
    clock = _Clock()
    raw = read_source(source, fmt=fmt, images=images)
    clock.lap("parse")
    detection = raw.task == "detection"
    unit = "annotation" if detection else "label"
    n_objects = validate.objects_per_image(raw.annotations, raw.labels)
    log.info("%s: parsed %d images, %d %ss", source, raw.images.height, sum(n_objects.values()), unit)

    entries = validate.check_image_entries(raw.images, n_objects=n_objects, unit=unit)
    headers = probe_images(
        raw.image_root,
        entries.table.get_column("file_name").to_list(),
        workers=workers,
        max_pixels=max_pixels,
        on_progress=on_progress,
    )
    clock.lap("image headers")
    checked_images = validate.apply_headers(
        entries.table, headers, image_root=raw.image_root, n_objects=n_objects, unit=unit
    )
    kept = checked_images.table
    quarantine = [raw.quarantine, entries.quarantine, checked_images.quarantine]
    if kept.is_empty():
        raise ValueError(_no_usable_image(source, raw.images.height, pl.concat(quarantine)))
    dropped = set(raw.images.get_column("image_id").to_list()) - set(kept.get_column("image_id").to_list())

    annotations = labels = None
    if detection:
        anns = raw.annotations
        if raw.box_units == "normalized":
            anns = validate.normalized_to_pixels(anns, kept)
        checked = validate.check_annotations(anns, kept, dropped_image_ids=dropped)
        annotations = checked.table
    else:
        checked = validate.check_labels(raw.labels, kept, dropped_image_ids=dropped)
        labels = checked.table
    quarantine.append(checked.quarantine)
    clock.lap("checks")

    if val_fraction is not None:
        kept = _split(kept, annotations, labels, val_fraction=val_fraction, seed=seed, source=source)

    snapshot = write_snapshot(
        out,
        name=name or source.stem,
        task=raw.task,
        source_format=raw.format,
        image_root=raw.image_root,
        images=kept,
        categories=raw.categories,
        annotations=annotations,
        labels=labels,
        quarantine=pl.concat(quarantine),
        replace=replace,
        protected=[p for p in (source, images, raw.image_root) if p is not None],
    )
    clock.lap("write")
    log.info("%s: ingested into %s in %s", source, snapshot.path, clock)
    return IngestResult(snapshot=snapshot, report=health_report(snapshot))


def _no_usable_image(source: Path, listed: int, quarantine: pl.DataFrame) -> str:
    """The one-line error for a source without a single usable image (no snapshot is written)."""
    if not listed:
        return f"{source}: no images listed, nothing to ingest"
    first = quarantine.row(0, named=True) if quarantine.height else None
    example = f"; e.g. {first['item']}: {first['reason']}" if first else ""
    return f"{source}: no usable image, all {listed} listed were rejected{example}"


class _Clock:
    """Wall time per phase, for the INFO log (``cvflow ingest --verbose``)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.laps: list[str] = []

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps.append(f"{phase} {now - self.last:.2f} s")
        self.last = now

    def __str__(self) -> str:
        return ", ".join(self.laps)


def _split(
    images: pl.DataFrame,
    annotations: pl.DataFrame | None,
    labels: pl.DataFrame | None,
    *,
    val_fraction: float,
    seed: int,
    source: Path,
) -> pl.DataFrame:
    present = sorted(images.get_column("split").unique().to_list())
    if len(present) > 1:
        raise ValueError(
            f"{source}: the source already has splits {present}; --val-fraction only splits a single-split source"
        )
    if annotations is not None:
        strata = splitting.detection_strata(images, annotations)
    else:
        strata = splitting.classification_strata(images, labels)
    return splitting.stratified_split(images, strata, val_fraction=val_fraction, seed=seed)
