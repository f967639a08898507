"""`cvflow train`: run ``train_pipeline`` for one model on a snapshot, with its run folder at --out.

The flags and the run folder are those of the engine's command (``last.pt``, ``best.pt``,
``config.yaml``, ``metrics.json``, ``history.parquet`` in --out); running it as the Prefect flow
adds the rest of the pipeline: the MLflow run (params, per-epoch and final metrics, plots),
predictions Parquet of val/test, and a registered model version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.commands._common import cli_errors, console, err_console, setup_logging
from flows.commands._pipeline import (
    check_checkpoint,
    check_model_config,
    check_splits,
    check_writable_dir,
    flow_errors,
    prefect_settings,
)


@cli_errors
@flow_errors
def train(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Run folder: receives last.pt, best.pt, config.yaml, metrics.json, history.parquet."
        ),
    ],
    data: Annotated[Path | None, typer.Option("--data", help="Snapshot folder (cvflow ingest / demo data).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Registered model name (see the models list).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="run.yaml; the flags below override it.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch (global: split evenly over --devices).")
    ] = None,
    img_size: Annotated[int | None, typer.Option(help="Square input size in pixels.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    freeze: Annotated[str | None, typer.Option(help="none | backbone | from:<stage>.")] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="torchvision | weights file | checkpoint | models:/NAME@champion.")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a run from its last.pt (or its run folder).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="Processes on this machine: N GPUs (or N CPU processes), auto = every GPU. --batch-size is global."
        ),
    ] = None,
    nnodes: Annotated[int, typer.Option(help="Machines training together (each runs this command).")] = 1,
    node_rank: Annotated[
        int, typer.Option(help="This machine's number, 0..nnodes-1; node 0 writes --out and reports to MLflow.")
    ] = 0,
    rdzv_endpoint: Annotated[
        str | None, typer.Option(help="HOST:PORT of node 0, where the nodes meet (--nnodes > 1).")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "cvflow",
    registered_model: Annotated[
        str | None, typer.Option(help="MLflow registered model (default: <dataset>-<model>).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Train MODEL on the snapshot DATA as the train pipeline; prints the validation metrics.

    Settings come from --config, then the flags; what neither sets comes from the model's
    defaults. With --resume and nothing else, the run's own config is reused. The run folder is
    --out; the MLflow run, predictions and registered version are reported at the end.

    --devices N trains on N processes (DistributedDataParallel, launched through torchrun's
    launcher); with --nnodes > 1 every machine runs the command with its --node-rank and node 0's
    --rdzv-endpoint: node 0 runs the pipeline, the others only train (README "Scaling out").
    """
    import json

    from cvcore.config import NO_SETTINGS, PartialRunConfig, load_config, overlay, partial_config
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.checkpoint import LAST, load_checkpoint
    from cvcore.engine.distributed import Nodes, RankFailed
    from cvcore.engine.run import check_run_folder, resolve_run_config
    from cvcore.engine.train import NonFiniteLossError
    from flows.params import DataSource, TrainPipelineParams
    from flows.train import train_pipeline

    setup_logging(verbose)
    if resume is not None and resume.is_dir():
        resume = resume / LAST
    if resume is not None:
        check_checkpoint(resume, what="--resume")  # a foreign or crafted file is refused in one line
    if config is not None:
        base = load_config(config)
    elif resume is not None and data is None and model is None:
        base = partial_config(load_checkpoint(resume)["meta"]["config"])
    else:
        base = NO_SETTINGS
    flags = PartialRunConfig.model_validate({  # a flag not given is None: unset
        "data": {"snapshot": data, "img_size": img_size, "num_workers": workers},
        "model": {"name": model, "freeze": freeze, "pretrained": pretrained},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device, "seed": seed, "devices": _devices(devices)},
    })  # fmt: skip
    run_config = overlay(flags, base)  # the user's settings: flags over --config; the model's defaults come in plan_run
    if run_config.model.name is None:
        raise ValueError("no model: pass --model NAME (or model.name in --config)")
    if run_config.data.snapshot is None:
        raise ValueError("no dataset: pass --data SNAPSHOT (or data.snapshot in --config)")
    nodes = Nodes(nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    if nodes.node_rank > 0:  # another machine of node 0's run: train with it, write nothing here
        from cvcore.engine.run import join_run

        try:
            join_run(run_config, nodes=nodes, resume=resume is not None)
        except RankFailed as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
            raise typer.Exit(code=1) from None
        console.print(
            f"node {nodes.node_rank} of {nodes.nnodes}: training finished (node 0 holds the run)", highlight=False
        )
        return
    # --out must be a new or empty folder or a cvflow run folder no other training holds; a folder
    # of the user's files (their metrics.json, config.yaml) is refused, never written into.
    check_run_folder(out, resume=resume)
    # Unknown model, wrong task, missing snapshot or split, bad options or weights fail here, before any server starts.
    snapshot = read_snapshot(run_config.data.snapshot)
    resolved = resolve_run_config(run_config, snapshot=snapshot)
    check_splits(snapshot, [resolved.data.train_split], what="data.train_split")
    check_splits(snapshot, [resolved.data.val_split], what="data.val_split")
    check_writable_dir(out, "--out")
    check_model_config(resolved.model, img_size=resolved.data.img_size)
    params = TrainPipelineParams(
        data=DataSource(path=run_config.data.snapshot),
        config=run_config,
        run_dir=out,
        resume=resume,
        progress=not quiet,
        experiment=experiment,
        registered_model=registered_model,
        nnodes=nodes.nnodes,
        rdzv_endpoint=nodes.rdzv_endpoint,
    )
    try:
        with prefect_settings():
            result = train_pipeline(params)
    except (NonFiniteLossError, RankFailed) as exc:  # the run failed (not the command line): one line, exit code 1
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
        raise typer.Exit(code=1) from None
    report = json.loads((out / "metrics.json").read_text())
    title = f"{out}: best epoch {report['best_epoch']} of {report['epochs_run']}" + (
        " (stopped early)" if report["stopped_early"] else ""
    )
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("best", justify="right")
    table.add_column("final", justify="right")
    for key, value in report["final"].items():
        if key.startswith("val/"):
            table.add_row(key, _fmt(report["best"].get(key)), _fmt(value))
    console.print(table)
    console.print(f"checkpoints: {out / 'best.pt'}, {out / 'last.pt'}", highlight=False, soft_wrap=True)
    for split, preds in result.predictions.items():
        console.print(f"predictions ({split}): {preds.dir}", highlight=False, soft_wrap=True)
    console.print(
        f"MLflow run: {result.run_url}\nregistered: models:/{result.model.name}/{result.model.version} (@{', @'.join(result.model.aliases)})",
        highlight=False,
        soft_wrap=True,
    )


def _devices(value: str | None) -> int | str | None:
    """--devices as the config holds it: a positive integer or ``"auto"`` (None: not given)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--devices must be a number of devices or auto, got {value!r}") from None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
