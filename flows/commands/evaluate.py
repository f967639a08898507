"""`cvflow evaluate`: score a registered (or logged, or local) model on a dataset split, no training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, setup_logging
from flows.commands._pipeline import (
    check_dask_address,
    check_model_uri,
    check_predictions,
    check_predictions_owner,
    check_splits,
    flow_errors,
    prefect_settings,
)


@cli_errors
@flow_errors
def evaluate(
    model: Annotated[
        str,
        typer.Option("--model", help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model or a checkpoint."),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Snapshot folder or object-store URI (s3://bucket/snapshots/NAME), or a source dataset with --format.",
        ),
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    fmt: Annotated[str, typer.Option("--format", help="snapshot | coco | voc | yolo | imagefolder.")] = "snapshot",
    images: Annotated[Path | None, typer.Option(help="Image folder, for sources that keep images apart.")] = None,
    protocol: Annotated[str | None, typer.Option(help="coco | voc07 | voc12 (default: the model's).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the evaluation run.")] = "cvflow",
    shards: Annotated[int, typer.Option(min=1, help="Prediction shards (Parquet files), predicted in parallel.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    predictions: Annotated[
        str | None,
        typer.Option(
            help="Folder or s3:// URI for the part-*.parquet files (default: under CVFLOW_HOME); complete shards there are kept."
        ),
    ] = None,
    dask_workers: Annotated[
        int | None,
        typer.Option(min=1, help="Predict the shards on a local Dask cluster of this many worker processes."),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Predict the shards on an existing Dask cluster (scheduler address, tcp://HOST:8786)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Predict SPLIT of DATA with MODEL, write the predictions as Parquet and score them in MLflow."""
    from cvcore.io import is_uri
    from flows.evaluate import evaluate_pipeline
    from flows.params import DaskLocalCluster, DaskScheduler, DataSource, EvaluatePipelineParams, ThreadRunner

    setup_logging(verbose)
    if dask_workers is not None and dask_address is not None:
        raise ValueError("give --dask-workers (a local cluster) or --dask-address (an existing one), not both")
    runner = (
        DaskScheduler(address=dask_address)
        if dask_address
        else DaskLocalCluster(n_workers=dask_workers)
        if dask_workers
        else ThreadRunner()
    )
    # Every input error fails here, in one line, before a Prefect server starts.
    snapshot = None
    if is_uri(data):
        if fmt != "snapshot":
            raise ValueError(
                f"--data {data}: only snapshots can be read from a URI; ingest {fmt} sources from a local folder first"
            )
        source: DataSource | str = data
    else:
        if fmt == "snapshot":
            from cvcore.data.snapshot import read_snapshot

            snapshot = read_snapshot(data)
            check_splits(snapshot, [split])
        elif not Path(data).exists():
            raise FileNotFoundError(f"source {data} does not exist")
        source = DataSource(path=Path(data), format=fmt, images=images)
    check_predictions(predictions)
    if dask_address:
        check_dask_address(dask_address)
    loaded = check_model_uri(model)
    check_predictions_owner(predictions, loaded.path, split=split, snapshot=snapshot)
    if snapshot is not None:
        from cvcore.engine.run import prediction_dataset

        prediction_dataset(loaded.meta, snapshot, split)  # ValueError: another task or other classes
    params = EvaluatePipelineParams(
        model=model, data=source, split=split, protocol=protocol, experiment=experiment, prediction_shards=shards, batch_size=batch_size,
        predictions=predictions, task_runner=runner,
    )  # fmt: skip
    with prefect_settings():
        result = evaluate_pipeline(params)
    table = Table(title=f"{model} on {data.rstrip('/').rsplit('/', 1)[-1]}/{split}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        if "/" not in key:
            table.add_row(
                f"[bold]{key}[/]" if key == result.headline else key, "—" if math.isnan(value) else f"{value:.4f}"
            )
    console.print(table)
    reused = (
        f" ({len(result.shards_reused)} of {shards} shards kept from an earlier run)" if result.shards_reused else ""
    )
    console.print(
        f"predictions: {result.predictions}{reused}\nMLflow run: {result.run_url}", highlight=False, soft_wrap=True
    )
