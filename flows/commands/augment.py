"""`cvflow augment`: preview and statistics of an augmentation config, optional offline copies."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import polars as pl
import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, setup_logging
from flows.commands._pipeline import check_output_file


@cli_errors
def augment(
    data: Path = typer.Option(..., "--data", help="Snapshot folder to augment."),
    preview: Path = typer.Option(..., "--preview", help="PNG to write: samples before and after augmentation."),
    preset: Optional[str] = typer.Option(None, "--preset", help="none | light | default | strong (default: default)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="run.yaml; its `augment` section (and data.img_size) is used."
    ),
    materialize: int = typer.Option(0, "--materialize", min=0, help="Write N augmented copies of the split to --out."),
    out: Optional[Path] = typer.Option(None, "--out", help="New snapshot folder for --materialize."),
    split: str = typer.Option("train", "--split", help="Split to augment."),
    img_size: Optional[int] = typer.Option(
        None, "--img-size", min=16, help="Output size in pixels (default: config or 128)."
    ),
    n_preview: int = typer.Option(8, "--n-preview", min=1, help="Samples in the preview grid."),
    n_stats: int = typer.Option(256, "--n-stats", min=1, help="Samples drawn for the statistics."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the config's augmentation seed."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Show what an augmentation config does to a snapshot: a preview grid and statistics."""
    setup_logging(verbose)
    from cvcore.augment.presets import PRESETS  # heavy imports after option parsing
    from cvcore.augment.preview import check_preview_target
    from cvcore.augment.stage import run_augment_stage
    from cvcore.config import AugmentConfig, RunConfig, load_config, resolve
    from cvcore.models import model_spec

    if preset is not None and config is not None:
        raise ValueError("give --preset or --config, not both")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {', '.join(PRESETS)}")
    if (materialize > 0) != (out is not None):
        raise ValueError("--materialize N and --out NEW_SNAPSHOT go together")
    # Before any work: --preview replaces only a preview cvflow drew, never a user's file (an
    # image of the snapshot, its manifest), and must not make the new snapshot's folder.
    check_output_file(preview, "--preview")
    check_preview_target(preview)
    if out is not None and preview.resolve().is_relative_to(out.resolve()):
        raise ValueError(
            f"--preview {preview} is inside --out {out}, the new snapshot's folder; write the preview elsewhere"
        )
    run = RunConfig()
    if (
        config is not None
    ):  # what a training with this file would use: its values, else its model's defaults, else cvflow's
        user = load_config(config)
        run = resolve(user, model_spec(user.model.name).defaults if user.model.name else None)
    aug = run.augment if preset is None else AugmentConfig(preset=preset)
    if seed is not None:
        aug = aug.model_copy(update={"seed": seed})
    stats = run_augment_stage(
        data,
        aug,
        preview_path=preview,
        split=split,
        n_preview=n_preview,
        n_stats=n_stats,
        materialize=materialize,
        out=out,
        img_size=img_size or run.data.img_size,
    )
    console.print(_pipeline_table(stats.pipeline))
    console.print(_frame_table(stats.steps, title=f"Per step ({stats.n_samples} samples of {stats.split})"))
    console.print(_frame_table(stats.labels, title="Labels before / after augmentation"))
    console.print("  ".join(f"{k}={v:.3g}" for k, v in stats.summary.items()))
    console.print(f"preview: {stats.preview_path}")
    if stats.snapshot is not None:
        console.print(f"snapshot: {stats.snapshot} ({stats.n_materialized} augmented images in {stats.split})")


def _pipeline_table(rows: list[dict]) -> Table:
    table = Table(title="Pipeline")
    for col in ("step", "stage", "name", "source", "params"):
        table.add_column(col, overflow="fold")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(str(r["step"]), r["stage"], r["name"], r["source"], params)
    return table


def _frame_table(frame: pl.DataFrame, *, title: str) -> Table:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(col, justify="left" if frame.schema[col] == pl.String else "right")
    for row in frame.iter_rows():
        table.add_row(*(_cell(v) for v in row))
    return table


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)
