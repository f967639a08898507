"""`cvflow ingest`: a dataset in COCO/VOC/YOLO/ImageFolder form (or built-in data) -> a snapshot."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows.commands._common import cli_errors, console, err_console, setup_logging

# cvcore.data.probe.MAX_PIXELS in megapixels (a test keeps them equal); not imported here, so
# that `cvflow --help` does not load polars and PIL.
DEFAULT_MEGAPIXELS = 64.0


class Format(str, Enum):
    coco = "coco"
    voc = "voc"
    yolo = "yolo"
    imagefolder = "imagefolder"


class Synthetic(str, Enum):
    shapes = "shapes"
    shapes_cls = "shapes-cls"


@cli_errors
def ingest(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="Dataset folder in its users' layout: COCO (annotations/instances_<split>.json + images/), "
            "VOC (Annotations/, ImageSets/Main/, JPEGImages/), YOLO (folder of data.yaml), "
            "ImageFolder (<split>/<class>/<image>); or one COCO JSON file (with --images).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[Format | None, typer.Option("--format", "-f", help="Format of SOURCE.", show_default=False)] = None,
    synthetic: Annotated[
        Synthetic | None,
        typer.Option(
            "--synthetic",
            help="Make the built-in data instead: shapes (detection) or shapes-cls (classification).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Snapshot folder to write. Default: $CVFLOW_HOME/snapshots/<name> (CVFLOW_HOME defaults to ./.cvflow).",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Image folder, when SOURCE is a single COCO JSON file or a folder of VOC XML files.",
            show_default=False,
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction",
            help="For a source with one split: move this share of its images (0..1) to a new 'val' split, stratified by class.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the --val-fraction split (and of --synthetic data).")
    ] = 0,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Snapshot name. Default: the source folder's name (or the synthetic set's).",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Overwrite an existing snapshot at --out (only a cvflow snapshot, never a folder holding or inside SOURCE or its images).",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="Threads reading image headers. Default: 4 per CPU, at most 32.", show_default=False
        ),
    ] = None,
    max_megapixels: Annotated[
        float,
        typer.Option(
            "--max-megapixels",
            help="Quarantine images with more pixels than this (width x height, in millions), from their header, before any decode.",
        ),
    ] = DEFAULT_MEGAPIXELS,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Validate a dataset into a canonical snapshot and print its health report.

    Bad items never stop ingestion: each one is dropped or repaired and recorded, with a reason,
    in the snapshot's quarantine.parquet (summarised in the report). A source that cannot be read
    at all exits with status 2 and a message naming the file.
    """
    setup_logging(verbose)
    if (source is None) == (synthetic is None):
        raise ValueError("give either SOURCE (with --format) or --synthetic shapes|shapes-cls")
    if synthetic is not None:
        for flag, value in (("--format", fmt), ("--images", images), ("--val-fraction", val_fraction)):
            if value is not None:
                raise ValueError(f"{flag} does not apply to --synthetic data")
        snapshot = _synthetic(synthetic.value, out=out, name=name, seed=seed, replace=replace)
        report_text = _report(snapshot)
    else:
        if fmt is None:
            raise ValueError(f"{source}: say which format it is with --format coco|voc|yolo|imagefolder")
        if not max_megapixels > 0:
            raise ValueError(f"--max-megapixels must be positive, got {max_megapixels}")
        from cvcore.data.ingest import ingest as run_ingest

        name = name or source.stem
        with _progress(quiet) as on_progress:
            result = run_ingest(
                source,
                fmt=fmt.value,
                out=out or _default_out(name),
                images=images,
                val_fraction=val_fraction,
                seed=seed,
                name=name,
                replace=replace,
                workers=workers,
                max_pixels=int(max_megapixels * 1e6),
                on_progress=on_progress,
            )
        snapshot = result.snapshot
        from cvcore.data.health import format_health

        report_text = format_health(result.report)
    # The report holds user data (file, class and split names): no markup, no :emoji: codes.
    console.print(report_text, markup=False, emoji=False, highlight=False, soft_wrap=True)
    console.print(f"snapshot written to {snapshot.path}", markup=False, emoji=False, highlight=False, soft_wrap=True)


def _default_out(name: str) -> Path:
    """``$CVFLOW_HOME/snapshots/<name>``, the snapshot folder when --out is not given. ``name`` must
    be one plain folder name (ValueError): ``../x`` or ``/x`` would put the snapshot outside."""
    from cvcore.io import is_plain_name

    if not is_plain_name(name):
        raise ValueError(
            f"--name {name[:80]!r} is not a plain folder name (it names the folder under $CVFLOW_HOME/snapshots); give another --name or --out"
        )
    return _home() / "snapshots" / name


def _home() -> Path:
    """``$CVFLOW_HOME`` (default ``./.cvflow``); same rule as tasks.tracking.cvflow_home, without
    importing MLflow for a command that does not need it."""
    return Path(os.environ.get("CVFLOW_HOME") or ".cvflow").expanduser()


def _report(snapshot) -> str:
    from cvcore.data.health import format_health, health_report

    return format_health(health_report(snapshot))


def _synthetic(kind: str, *, out: Path | None, name: str | None, seed: int, replace: bool):
    """The built-in data at ``out``; with ``replace``, an existing snapshot there is swapped for it
    at the end (only a cvflow snapshot is replaced: cvcore.data.snapshot.check_replaceable)."""
    from cvcore.data import synthetic

    name = name or kind
    out = out or _default_out(name)
    make = synthetic.make_shapes_detection if kind == "shapes" else synthetic.make_shapes_classification
    return make(out, seed=seed, name=name, replace=replace)


class _progress:
    """A rich progress bar on stderr for the header reads, or nothing with --quiet."""

    def __init__(self, quiet: bool):
        self.bar = (
            None
            if quiet
            else Progress(
                TextColumn("reading image headers"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
        )
        self.task = None

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.start()
        self.task = self.bar.add_task("headers", total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
