"""`cvflow evaluate`: score a registered (or logged, or local) model on a dataset split, no training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, setup_logging
from flows.commands._pipeline import prefect_settings, tracking_errors


@cli_errors
@tracking_errors
def evaluate(
    model: Annotated[str, typer.Option("--model", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model or a checkpoint.")],
    data: Annotated[Path, typer.Option("--data", help="Snapshot folder, or a source dataset with --format.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    fmt: Annotated[str, typer.Option("--format", help="snapshot | coco | voc | yolo | imagefolder.")] = "snapshot",
    images: Annotated[Path | None, typer.Option(help="Image folder, for sources that keep images apart.")] = None,
    protocol: Annotated[str | None, typer.Option(help="coco | voc07 | voc12 (default: the model's).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the evaluation run.")] = "cvflow",
    shards: Annotated[int, typer.Option(min=1, help="Prediction shards (Parquet files), predicted in parallel.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Predict SPLIT of DATA with MODEL, write the predictions as Parquet and score them in MLflow."""
    from flows.evaluate import evaluate_pipeline
    from flows.params import DataSource, EvaluatePipelineParams

    setup_logging(verbose)
    if fmt == "snapshot":
        from cvcore.data.snapshot import read_snapshot

        read_snapshot(data)  # a missing or broken snapshot fails here, before any server starts
    elif not data.exists():
        raise FileNotFoundError(f"source {data} does not exist")
    source = DataSource(path=data, format=fmt, images=images)
    params = EvaluatePipelineParams(
        model=model, data=source, split=split, protocol=protocol, experiment=experiment, prediction_shards=shards, batch_size=batch_size
    )
    with prefect_settings():
        result = evaluate_pipeline(params)
    table = Table(title=f"{model} on {data.name}/{split}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        if "/" not in key:
            table.add_row(f"[bold]{key}[/]" if key == result.headline else key, "—" if math.isnan(value) else f"{value:.4f}")
    console.print(table)
    console.print(f"predictions: {result.predictions}\nMLflow run: {result.run_url}", highlight=False, soft_wrap=True)
