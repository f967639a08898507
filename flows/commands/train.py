"""`cvflow train`: train a registered model on a snapshot into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, err_console, setup_logging


@cli_errors
def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder: receives last.pt, best.pt, config.yaml, metrics.json, history.parquet.")],
    data: Annotated[Path | None, typer.Option("--data", help="Snapshot folder (cvflow ingest / demo data).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Registered model name (see the models list).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="run.yaml; the flags below override it.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    img_size: Annotated[int | None, typer.Option(help="Square input size in pixels.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    freeze: Annotated[str | None, typer.Option(help="none | backbone | from:<stage>.")] = None,
    pretrained: Annotated[str | None, typer.Option(help="torchvision | weights file | checkpoint.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a run from its last.pt (or its run folder).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Train MODEL on the snapshot DATA; prints the final validation metrics.

    Settings come from --config, then the flags; what neither sets comes from the model's defaults. With --resume and nothing else, the run's own config is reused.
    """
    from cvcore.config import RunConfig, load_config
    from cvcore.engine.callbacks import ProgressBar
    from cvcore.engine.checkpoint import LAST, load_checkpoint
    from cvcore.engine.run import train_run
    from cvcore.engine.train import NonFiniteLossError

    setup_logging(verbose)
    if resume is not None and resume.is_dir():
        resume = resume / LAST
    if config is not None:
        base = load_config(config).model_dump(exclude_unset=True)
    elif resume is not None and data is None and model is None:
        base = load_checkpoint(resume)["meta"]["config"]
    else:
        base = {}
    flags = {
        "data": {"snapshot": data, "img_size": img_size, "num_workers": workers},
        "model": {"name": model, "freeze": freeze, "pretrained": pretrained},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device, "seed": seed},
    }
    raw = _merge(base, flags)
    if "name" not in raw.get("model", {}):
        raise ValueError("no model: pass --model NAME (or model.name in --config)")
    if "snapshot" not in raw.get("data", {}):
        raise ValueError("no dataset: pass --data SNAPSHOT (or data.snapshot in --config)")
    run_config = RunConfig.model_validate(raw)
    callbacks = [] if quiet else [ProgressBar(console=err_console)]
    try:
        result = train_run(run_config, out, callbacks=callbacks, resume=resume)
    except NonFiniteLossError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    table = Table(title=f"best epoch {result.best_epoch} of {result.epochs_run}" + (" (stopped early)" if result.stopped_early else ""))
    table.add_column("metric")
    table.add_column("best", justify="right")
    table.add_column("final", justify="right")
    for key in result.final_metrics:
        if key.startswith("val/"):
            table.add_row(key, f"{result.best_metrics.get(key, float('nan')):.4f}", f"{result.final_metrics[key]:.4f}")
    console.print(table)
    console.print(f"run folder: {out} (best.pt, last.pt, metrics.json, history.parquet, config.yaml)", highlight=False, soft_wrap=True)


def _merge(base: dict[str, Any], flags: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base`` (a config as nested dicts) with the flags that were given laid over it."""
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in flags.items():
        given = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}
        if given:
            merged.setdefault(section, {}).update(given)
    return merged
