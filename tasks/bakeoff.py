"""Bake-off tasks (cvcore.bakeoff): train a contender, log its run, score it, write the table.

Each contender has an MLflow run of its own, nested under the flow's bake-off run. It gets the
contender's resolved config as params, its per-epoch metrics (live through the engine callback;
epochs the callback did not see — a finished run that was reused, the part of a resumed run
trained before, a run loaded with ``NAME=RUN_DIR`` — are replayed from the run folder's
``history.parquet`` with the same names and steps), its training files and curves, and its table
row as ``final/<split>/<column>``. The table, its Markdown and the figure go to the bake-off run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.evaluate import HEADLINE, TAG_HEADLINE
from tasks.refs import SnapshotRef
from tasks.tracking import EpochLogger, log_config, log_metrics, log_tags, mlflow_client
from tasks.infer import GPU_TAG

TAG_PREDICTIONS = "cvflow.predictions"
TAG_RUN_DIR = "cvflow.run_dir"
TAG_LOADED = "cvflow.bakeoff.loaded_from"  # on a contender's run when NAME=RUN_DIR loaded it
# Columns that only exist for models with external proposals (R-CNN, Fast R-CNN): left out of
# the other models' runs rather than logged as NaN ("not applicable", unlike an undefined AP).
_PROPOSAL_COLUMNS = ("proposal_recall_50", "proposal_recall_70")


class _Ref(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class ContenderRun(_Ref):
    """A contender's trained model: its run folder (or the checkpoint a user named) and which
    epochs the engine callback already sent to MLflow."""

    name: str
    run: Path  # run folder (best.pt, else last.pt) or a checkpoint file
    epochs_logged: tuple[int, ...] = ()


class ContenderScore(_Ref):
    """A contender's row of the bake-off table (cvcore.bakeoff.TABLE_SCHEMA) and its predictions."""

    name: str
    run: Path
    predictions: Path  # <out>/predictions/<name>/<split>/part-00000.parquet
    row: dict[str, str | int | float]


class BakeoffFiles(_Ref):
    """The written table (Parquet, Markdown) and figure, each also an artifact of the bake-off run."""

    table: Path
    markdown: Path
    figure: Path


class _EpochsSeen:
    """Engine callback: which epochs ended in this process (and so went through EpochLogger)."""

    def __init__(self) -> None:
        self.epochs: set[int] = set()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.add(int(epoch))


@task(name="train-contender", task_run_name="train-{name}", tags=[GPU_TAG], cache_policy=NO_CACHE)
def train_contender(
    snapshot: SnapshotRef,
    name: str,
    *,
    out: Path,
    epochs: int | None,
    pretrained: str | None,
    device: str,
    overrides: dict[str, Any] | None,
    run_id: str,
    progress: bool = False,
) -> ContenderRun:
    """Train ``name`` into ``<out>/runs/<name>`` (cvcore.bakeoff.train_contender: a finished run
    there is reused, an interrupted one resumed); its epochs go to the MLflow run ``run_id``."""
    from cvcore import bakeoff
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.callbacks import ProgressBar

    seen = _EpochsSeen()
    callbacks = [EpochLogger(mlflow_client(), run_id), seen] + ([ProgressBar()] if progress else [])
    run_dir = bakeoff.train_contender(
        read_snapshot(snapshot.path), name, out=Path(out), epochs=epochs, pretrained=pretrained, device=device,
        overrides=overrides, callbacks=callbacks,
    )  # fmt: skip
    get_run_logger().info("%s: run folder %s (%d epoch(s) trained now)", name, run_dir, len(seen.epochs))
    return ContenderRun(name=name, run=Path(run_dir), epochs_logged=tuple(sorted(seen.epochs)))


def _may_pass(task, task_run, state) -> bool:
    """Retry what may pass (the tracking server, the file system), not a bad input: a ValueError
    such as a run folder without a checkpoint fails at once. (Prefect hands the exception in
    ``state.data``.)"""
    return not isinstance(state.data, ValueError)


@task(
    name="log-contender", task_run_name="log-{contender.name}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
    retry_condition_fn=_may_pass,
)  # fmt: skip
def log_contender(contender: ContenderRun, *, run_id: str) -> None:
    """The contender's run folder to its MLflow run: config as params, the epochs not logged
    live (replayed from ``history.parquet``), ``training/`` files and the training curves."""
    import polars as pl

    from cvcore import plots
    from cvcore.config import load_config
    from cvcore.engine.checkpoint import resolve_checkpoint
    from cvcore.engine.run import CONFIG_FILE
    from cvcore.engine.train import HISTORY_FILE

    client = mlflow_client()
    folder = resolve_checkpoint(contender.run).parent
    if (folder / CONFIG_FILE).is_file():
        log_config(client, run_id, load_config(folder / CONFIG_FILE))
    log_tags(client, run_id, {TAG_RUN_DIR: str(folder)})
    if (folder / HISTORY_FILE).is_file():
        history = pl.read_parquet(folder / HISTORY_FILE)
        # Epochs already in MLflow (logged live, or by an earlier attempt of this task) are not
        # logged twice: the engine reports "lr" every epoch, so its steps say which are there.
        done = set(contender.epochs_logged) | {m.step for m in client.get_metric_history(run_id, "lr")}
        for row in history.filter(~pl.col("epoch").is_in(sorted(done))).iter_rows(named=True):
            numbers = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            log_metrics(client, run_id, numbers, step=int(row["epoch"]))
        if history.height:
            client.log_figure(run_id, plots.training_curves(history), "plots/training_curves.png")
    for file in ("metrics.json", HISTORY_FILE, CONFIG_FILE, "cpu_time.json"):
        if (folder / file).is_file():
            client.log_artifact(run_id, str(folder / file), "training")


@task(name="score-contender", task_run_name="score-{contender.name}", tags=[GPU_TAG], cache_policy=NO_CACHE)
def score_contender(
    snapshot: SnapshotRef,
    contender: ContenderRun,
    *,
    out: Path,
    split: str,
    protocol: str,
    device: str,
    batch_size: int,
    grid: int,
    run_id: str,
) -> ContenderScore:
    """Predict ``split`` with the contender, time and score it (cvcore.bakeoff.score_run); its row
    goes to its MLflow run as ``final/<split>/<column>``. Not retried: a retry would time again."""
    from cvcore import bakeoff
    from cvcore.data.snapshot import read_snapshot

    scored = bakeoff.score_run(
        read_snapshot(snapshot.path), contender.name, contender.run, out=Path(out), split=split, protocol=protocol, device=device,
        batch_size=batch_size, grid=grid,
    )  # fmt: skip
    numbers = {
        k: float(v)
        for k, v in scored.row.items()
        if k != "model" and not (k in _PROPOSAL_COLUMNS and isinstance(v, float) and math.isnan(v))
    }
    client = mlflow_client()
    log_metrics(client, run_id, {f"final/{split}/{k}": v for k, v in numbers.items()})
    log_tags(client, run_id, {TAG_HEADLINE: HEADLINE[protocol], TAG_PREDICTIONS: str(scored.predictions)})
    headline = HEADLINE[protocol]
    get_run_logger().info("%s on %s: %s = %.4f", contender.name, split, headline, numbers.get(headline, math.nan))
    return ContenderScore(name=contender.name, run=contender.run, predictions=scored.predictions, row=scored.row)


@task(name="write-bakeoff", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_may_pass)
def write_table(
    scores: list[ContenderScore], *, snapshot: SnapshotRef, split: str, protocol: str, out: Path, run_id: str
) -> BakeoffFiles:
    """The table (one row per contender, in order), its Markdown and the figure into ``out``
    (cvcore.bakeoff.write_bakeoff, atomic), then under ``bakeoff/`` in the MLflow run ``run_id``."""
    import polars as pl

    from cvcore.bakeoff import TABLE_SCHEMA, BakeoffResult, write_bakeoff

    table = pl.DataFrame([s.row for s in scores], schema=TABLE_SCHEMA)
    result = BakeoffResult(
        table=table, split=split, protocol=protocol, runs={s.name: s.run for s in scores}, predictions={s.name: s.predictions for s in scores}
    )
    paths = write_bakeoff(result, Path(out), title=f"{snapshot.name}: {split} split, {protocol}")
    client = mlflow_client()
    for path in paths.values():
        client.log_artifact(run_id, str(path), "bakeoff")
    # The same rows as an MLflow table: the UI's artifact view shows it as a sortable grid.
    client.log_table(run_id, data=table.to_pandas(), artifact_file="bakeoff/bakeoff.json")
    return BakeoffFiles(table=paths["table"], markdown=paths["markdown"], figure=paths["figure"])
