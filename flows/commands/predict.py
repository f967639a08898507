"""`cvflow predict`: run a trained model over one split of a snapshot into a predictions Parquet file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import track

from flows.commands._common import cli_errors, console, err_console, setup_logging


@cli_errors
def predict(
    model: Annotated[str, typer.Option("--model", help="Run folder (uses best.pt) or checkpoint file.")],
    data: Annotated[Path, typer.Option("--data", help="Snapshot folder.")],
    out: Annotated[Path, typer.Option("--out", help="Predictions Parquet file to write.")],
    split: Annotated[str, typer.Option(help="Split of the snapshot to predict.")] = "val",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    score_threshold: Annotated[
        float | None, typer.Option(help="Detection: keep boxes scoring at least this (default: the run's eval config).")
    ] = None,
    max_detections: Annotated[
        int | None, typer.Option(help="Detection: boxes kept per image (default: the run's eval config).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Write predictions of MODEL on SPLIT of DATA to OUT (docs/ARCHITECTURE.md §3 predictions schema)."""
    import pyarrow.parquet as pq

    from cvcore.config import EvalConfig
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.infer import (
        check_predictions_target,
        checkpoint_eval_config,
        num_batches,
        predict_checkpoint,
        write_predictions,
    )

    from flows.commands._pipeline import check_checkpoint, check_output_file

    setup_logging(verbose)
    check_output_file(out, "--out")
    check_predictions_target(out)  # an existing --out is replaced only when it holds predictions, never a user's file
    snapshot = read_snapshot(data)
    loaded = check_checkpoint(model)  # weights_only; a foreign or crafted file is refused in one line
    overrides = {
        k: v for k, v in {"score_threshold": score_threshold, "max_detections": max_detections}.items() if v is not None
    }
    eval_config = EvalConfig.model_validate(checkpoint_eval_config(loaded.meta).model_dump() | overrides)
    run = predict_checkpoint(
        loaded, snapshot, split, eval_config=eval_config, batch_size=batch_size, device=device, num_workers=workers
    )
    batches = run.batches
    if not quiet:
        total = num_batches(run.dataset, batch_size=batch_size)
        batches = track(batches, total=total, description=f"predict {split}", console=err_console, transient=True)
    path = write_predictions(batches, out, task=snapshot.task, unreadable=run.unreadable)
    rows = pq.ParquetFile(path).metadata.num_rows
    console.print(
        f"{rows} predictions for {len(run.dataset)} {split} images of {snapshot.name} → {path}", highlight=False
    )
    if run.unreadable:
        first = run.unreadable[0]
        err_console.print(
            f"warning: {len(run.unreadable)} image(s) could not be read and have no prediction (recorded in the file's "
            f"cvflow.unreadable metadata), e.g. {first.file_name}: {first.reason}",
            highlight=False, soft_wrap=True, markup=False, emoji=False,
        )  # fmt: skip
