"""The bake-off's work: train (or reuse) a contender, score it, write the table; and its tasks.

One row per model of the bake-off table (:data:`TABLE_SCHEMA`):

==========================  ====================================================================
``map_50``, ``map``          COCO mAP at IoU 0.5 and averaged over 0.5:0.95 (``protocol``)
``map_small|medium|large``   COCO AP by object area (NaN: no object of that size in the split)
``recall_crowded``           recall at IoU 0.5 of objects whose centre shares a ``grid`` x ``grid``
``recall_isolated``          cell with another object's centre (YOLOv1's "several objects per
                             cell" weakness), and of the other objects (cvcore.metrics.objects)
``candidates_per_image``     boxes scored per image before NMS: proposals (R-CNN, Fast R-CNN),
                             RPN proposals (Faster R-CNN), S*S*B (YOLOv1)
``proposal_recall_50|70``    models with external proposals: the share of objects whose best
                             proposal reaches IoU 0.5 / 0.7 (what the proposals can find at all)
``train_s``                  training time in seconds (sum of the epochs' training passes,
                             validation excluded: the engine's ``train/time_s``)
``train_cpu_s``              the same passes in CPU seconds of the training process (all its
                             threads; the engine's ``train/cpu_time_s``; steadier than wall time)
``infer_images_per_s``       images per second through ``predict`` (data loading included,
                             proposal caches emptied first, so proposal time counts)
``infer_cpu_ms_per_image``   the same in CPU milliseconds per image
==========================  ====================================================================

The plain functions do the work without Prefect or MLflow: :func:`train_or_reuse` (a finished
run in ``<out>/runs/<name>`` is reused, an interrupted one resumed, one trained on other data or
settings refused), :func:`score_run`, :func:`write_bakeoff` (``bakeoff.parquet``, ``.md``,
``.png``, each through cvcore.io.atomic_path). The tasks wrap them for ``flows/compare.py``:
each contender has an MLflow run of its own, nested under the flow's bake-off run. It gets the
contender's resolved config as params, its per-epoch metrics (live through the engine callback;
epochs the callback did not see — a finished run that was reused, the part of a resumed run
trained before, a run loaded with ``NAME=RUN_DIR`` — are replayed from the run folder's
``history.parquet`` with the same names and steps), its training files and curves, and its table
row as ``final/<split>/<column>``. The table, its Markdown and the figure go to the bake-off run.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import polars as pl
from pydantic import BaseModel, ConfigDict
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cvcore.config import PartialRunConfig
from cvcore.data.snapshot import Snapshot
from cvcore.metrics.tradeoff import TRADEOFF_TOLERANCE, best_tradeoff
from tasks.evaluate import HEADLINE, TAG_HEADLINE
from tasks.refs import SnapshotRef
from tasks.tracking import EpochLogger, log_config, log_metrics, log_tags, mlflow_client
from tasks.infer import GPU_TAG

log = logging.getLogger(__name__)

TABLE_SCHEMA = pl.Schema(
    {
        "model": pl.String,
        "map_50": pl.Float64,
        "map": pl.Float64,
        "map_small": pl.Float64,
        "map_medium": pl.Float64,
        "map_large": pl.Float64,
        "recall_crowded": pl.Float64,
        "recall_isolated": pl.Float64,
        "n_crowded": pl.Int64,
        "n_isolated": pl.Int64,
        "candidates_per_image": pl.Float64,
        "proposal_recall_50": pl.Float64,
        "proposal_recall_70": pl.Float64,
        "train_s": pl.Float64,
        "train_cpu_s": pl.Float64,
        "epochs": pl.Int64,
        "infer_images_per_s": pl.Float64,
        "infer_cpu_ms_per_image": pl.Float64,
        "params_m": pl.Float64,
    }
)
TABLE_FILE, MARKDOWN_FILE, FIGURE_FILE = "bakeoff.parquet", "bakeoff.md", "bakeoff.png"
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
    """A contender's row of the bake-off table (TABLE_SCHEMA) and its predictions."""

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


@dataclass(frozen=True)
class ScoredRun:
    """One model's row of the table (TABLE_SCHEMA's columns) and its predictions file."""

    row: dict[str, Any]
    predictions: Path


def run_state(run_dir: str | Path) -> str:
    """``"finished"`` (metrics.json reports every planned epoch, or an early stop),
    ``"interrupted"`` (a ``last.pt`` without that), or ``"absent"``."""
    from cvcore.config import load_config
    from cvcore.engine.checkpoint import LAST
    from cvcore.engine.run import CONFIG_FILE

    run_dir = Path(run_dir)
    if not (run_dir / LAST).is_file():
        return "absent"
    metrics_file, config_file = run_dir / "metrics.json", run_dir / CONFIG_FILE
    if metrics_file.is_file() and config_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("stopped_early") or metrics.get("epochs_run", 0) >= load_config(config_file).train.epochs:
            return "finished"
    return "interrupted" if config_file.is_file() else "absent"


def train_or_reuse(
    snapshot: Snapshot,
    name: str,
    *,
    out: Path,
    epochs: int | None,
    pretrained: str | None,
    device: str,
    overrides: PartialRunConfig | dict[str, Any] | None = None,
    callbacks: Iterable[Any] = (),
) -> Path:
    """Train ``name`` into ``<out>/runs/<name>`` with its run defaults (``overrides``: a
    PartialRunConfig, or its mapping by section, laid over them) and return that folder. A finished run there is reused; an
    interrupted one is resumed from its ``last.pt`` with its own config; one trained on other
    data or with other requested settings is refused (ValueError naming the folder)."""
    from cvcore.config import load_config, overlay
    from cvcore.engine.checkpoint import LAST
    from cvcore.engine.run import CONFIG_FILE, train_run
    from cvcore.models import model_spec

    overrides = PartialRunConfig.model_validate(overrides or {})
    run_dir = Path(out) / "runs" / name
    state = run_state(run_dir)
    if state != "absent":
        _check_same_run(load_config(run_dir / CONFIG_FILE), run_dir, snapshot=snapshot, epochs=epochs, pretrained=pretrained,
                        overrides=overrides)  # fmt: skip
    if state == "finished":
        log.info("bake-off: reusing the finished run %s", run_dir)
        return run_dir
    callbacks = list(callbacks)
    if state == "interrupted":
        log.info("bake-off: resuming the interrupted run %s", run_dir)
        train_run(load_config(run_dir / CONFIG_FILE), run_dir, callbacks=callbacks, resume=run_dir / LAST)
        return run_dir
    options: dict[str, Any] = {}
    if "cache_dir" in inspect.signature(model_spec(name).builder).parameters:
        # Proposals and CNN features are per snapshot; the entries inside are keyed by content.
        options["cache_dir"] = str(Path(out) / "cache" / snapshot.digest[:16])
    asked = PartialRunConfig(
        data={"snapshot": snapshot.path},
        model={"name": name, "options": options, "pretrained": pretrained or None},
        train={"device": device, "epochs": epochs or None},
    )
    # The overrides over what the bake-off asks (options merge); train_run resolves it over the model's defaults.
    train_run(overlay(overrides, asked), run_dir, callbacks=callbacks)
    return run_dir


def _check_same_run(
    saved, run_dir: Path, *, snapshot: Snapshot, epochs: int | None, pretrained: str | None, overrides: PartialRunConfig
) -> None:
    """Raise ValueError when the run in ``run_dir`` (its saved RunConfig ``saved``) was trained on
    other data or with other requested settings than this bake-off asks for: reusing or resuming
    it would score (or continue) a model the table and MLflow would describe wrongly."""
    differs = []
    if Path(str(saved.data.snapshot)).resolve() != Path(snapshot.path).resolve():
        differs.append(f"data {saved.data.snapshot} (asked: {snapshot.path})")
    if epochs and saved.train.epochs != epochs:
        differs.append(f"{saved.train.epochs} epochs (asked: {epochs})")
    if pretrained and saved.model.pretrained != pretrained:
        differs.append(f"pretrained {saved.model.pretrained} (asked: {pretrained})")
    for section, values in overrides.settings().items():
        for key, value in values.items():
            have = getattr(getattr(saved, section), key)
            if key == "options" and isinstance(value, dict):
                have = {k: have.get(k) for k in value}
            if have != value:
                differs.append(f"{section}.{key} = {have!r} (asked: {value!r})")
    if differs:
        raise ValueError(f"{run_dir} was trained with {'; '.join(differs)}; use another --out or delete that folder")


def score_run(
    snapshot: Snapshot,
    name: str,
    run_dir: str | Path,
    *,
    out: Path,
    split: str,
    protocol: str,
    device: str,
    batch_size: int,
    grid: int,
) -> ScoredRun:
    """Predict ``split`` with the run's best model, time it and score it: the model's row of the
    table (TABLE_SCHEMA). Predictions go to ``<out>/predictions/<name>/<split>/part-00000.parquet``."""
    import pyarrow as pa

    from cvcore import schema
    from cvcore.engine.checkpoint import load_model, resolve_checkpoint
    from cvcore.engine.infer import predict_checkpoint, write_predictions
    from cvcore.engine.train import HISTORY_FILE
    from cvcore.metrics.detection import evaluate_detections
    from cvcore.metrics.objects import crowded_objects, object_recall
    from cvcore.models.candidates import CandidateCounter, empty_proposal_caches, external_proposal_recall

    loaded = load_model(run_dir)
    model, meta = loaded.model, loaded.meta
    if meta.get("task") != "detection":
        raise ValueError(f"{loaded.path}: a {meta.get('task')} model, not a detector")
    run = predict_checkpoint(
        loaded, snapshot, split, batch_size=batch_size, device=device
    )  # the run's own EvalConfig decoding
    dataset = run.dataset
    empty_proposal_caches(model)
    count = CandidateCounter(model)
    start, cpu_start = time.perf_counter(), time.process_time()
    batches = list(run.batches)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    candidates = count.per_image()
    count.close()
    recall = external_proposal_recall(model, dataset)
    pred_path = write_predictions(
        batches,
        Path(out) / "predictions" / name / split / "part-00000.parquet",
        task="detection",
        unreadable=run.unreadable,
    )
    predictions = pl.from_arrow(pa.Table.from_batches(batches, schema=schema.arrow_schema("detections")))
    unreadable = pl.Series("image_id", [r.image_id for r in run.unreadable], dtype=pl.Int64).implode()
    images = snapshot.split_images(split).filter(
        ~pl.col("image_id").is_in(unreadable)
    )  # as evaluation: unreadable images are left out
    annotations = snapshot.annotations.filter(pl.col("image_id").is_in(images.get_column("image_id").implode()))
    summary = evaluate_detections(annotations, predictions, images=images, protocol=protocol).summary
    found = object_recall(annotations, predictions).join(crowded_objects(annotations, images, grid=grid), on="ann_id")
    crowded, isolated = found.filter(pl.col("crowded")), found.filter(~pl.col("crowded"))
    history = pl.read_parquet(Path(resolve_checkpoint(run_dir)).parent / HISTORY_FILE)
    row = {
        "model": name,
        **{k: _metric(summary, k) for k in ("map_50", "map", "map_small", "map_medium", "map_large")},
        "recall_crowded": _mean_found(crowded),
        "recall_isolated": _mean_found(isolated),
        "n_crowded": crowded.height,
        "n_isolated": isolated.height,
        "candidates_per_image": candidates,
        "proposal_recall_50": recall.recall[0.5] if recall else math.nan,
        "proposal_recall_70": recall.recall[0.7] if recall else math.nan,
        "train_s": _history_total(history, "train/time_s"),
        "train_cpu_s": _history_total(history, "train/cpu_time_s"),
        "epochs": history.height,
        "infer_images_per_s": len(dataset) / seconds if seconds > 0 else math.nan,
        "infer_cpu_ms_per_image": 1000 * cpu_seconds / len(dataset) if len(dataset) else math.nan,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    log.info("bake-off %s on %s: %s", name, split, row)
    return ScoredRun(row=row, predictions=pred_path)


def table_markdown(table: pl.DataFrame) -> str:
    """The table as a Markdown pipe table (polars' own formatter), 3 decimals, NaN as is; the
    best trade-off (cvcore.metrics.tradeoff.best_tradeoff) is marked ``**name** (best trade-off)``."""
    pick = best_tradeoff(table)
    if pick is not None:
        table = table.with_columns(
            pl.when(pl.col("model") == pick)
            .then(pl.format("**{}** (best trade-off)", pl.col("model")))
            .otherwise(pl.col("model"))
            .alias("model")
        )
    with pl.Config(
        tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
        float_precision=3, tbl_rows=-1, tbl_cols=-1, tbl_width_chars=1000, fmt_str_lengths=100,
    ):  # fmt: skip
        return str(table) + "\n"


def write_bakeoff(
    table: pl.DataFrame, out: str | Path, *, split: str, protocol: str, title: str = ""
) -> dict[str, Path]:
    """Write ``bakeoff.parquet``, ``bakeoff.md`` and ``bakeoff.png`` (cvcore.plots.bakeoff) into
    ``out``, each atomically; returns ``{"table", "markdown", "figure"}`` → path."""
    from cvcore import plots
    from cvcore.io import atomic_path, atomic_write

    out = Path(out)
    header = f"Bake-off on split `{split}`, protocol `{protocol}`.\n\n"
    pick = best_tradeoff(table)
    if pick is not None:
        header += (
            f"Best trade-off: **{pick}**, the fastest at inference among the models within "
            f"{TRADEOFF_TOLERANCE} mAP@[.5:.95] of the best.\n\n"
        )
    fig = plots.bakeoff(table, title=title)
    paths = {"table": out / TABLE_FILE, "markdown": out / MARKDOWN_FILE, "figure": out / FIGURE_FILE}
    with atomic_path(paths["table"]) as tmp:
        table.write_parquet(tmp)
    with atomic_write(paths["markdown"], "w") as fh:
        fh.write(header + table_markdown(table))
    with atomic_path(paths["figure"]) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return paths


def _metric(summary: dict[str, float], key: str) -> float:
    value = summary.get(key, math.nan)
    return float(value) if value is not None else math.nan


def _mean_found(frame: pl.DataFrame) -> float:
    return float(frame.get_column("found").mean()) if frame.height else math.nan


def _history_total(history: pl.DataFrame, column: str) -> float:
    """Sum of a per-epoch column of the run's history; NaN when it is missing for any epoch (a
    run trained before the engine recorded it)."""
    if column not in history.columns or history.get_column(column).null_count():
        return math.nan
    return float(history.get_column(column).sum())


@task(name="train-contender", task_run_name="train-{name}", tags=[GPU_TAG], cache_policy=NO_CACHE)
def train_contender(
    snapshot: SnapshotRef,
    name: str,
    *,
    out: Path,
    epochs: int | None,
    pretrained: str | None,
    device: str,
    overrides: PartialRunConfig | None,
    run_id: str,
    progress: bool = False,
) -> ContenderRun:
    """Train ``name`` into ``<out>/runs/<name>`` (:func:`train_or_reuse`: a finished run there is
    reused, an interrupted one resumed); its epochs go to the MLflow run ``run_id``."""
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.callbacks import ProgressBar

    seen = _EpochsSeen()
    callbacks = [EpochLogger(mlflow_client(), run_id), seen] + ([ProgressBar()] if progress else [])
    run_dir = train_or_reuse(
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
    from cvcore import plots
    from cvcore.config import load_config, resolve
    from cvcore.engine.checkpoint import resolve_checkpoint
    from cvcore.engine.run import CONFIG_FILE
    from cvcore.engine.train import HISTORY_FILE

    client = mlflow_client()
    folder = resolve_checkpoint(contender.run).parent
    if (folder / CONFIG_FILE).is_file():
        log_config(
            client, run_id, resolve(load_config(folder / CONFIG_FILE))
        )  # the run's resolved config: every field set
    log_tags(client, run_id, {TAG_RUN_DIR: str(folder)})
    if (folder / HISTORY_FILE).is_file():
        history = pl.read_parquet(folder / HISTORY_FILE)
        # Epochs already in MLflow (logged live, or by an earlier attempt of this task) are not
        # logged twice: the engine reports "lr" every epoch, so its steps say which are there.
        done = set(contender.epochs_logged) | {m.step for m in client.get_metric_history(run_id, "lr")}
        for row in history.filter(~pl.col("epoch").is_in(sorted(done))).iter_rows(named=True):
            numbers = {
                k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            log_metrics(client, run_id, numbers, step=int(row["epoch"]))
        if history.height:
            client.log_figure(run_id, plots.training_curves(history), "plots/training_curves.png")
    for file in ("metrics.json", HISTORY_FILE, CONFIG_FILE):
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
    """Predict ``split`` with the contender, time and score it (:func:`score_run`); its row goes to
    its MLflow run as ``final/<split>/<column>``. Not retried: a retry would time again."""
    from cvcore.data.snapshot import read_snapshot

    scored = score_run(
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
    (:func:`write_bakeoff`, atomic), then under ``bakeoff/`` in the MLflow run ``run_id``."""
    table = pl.DataFrame([s.row for s in scores], schema=TABLE_SCHEMA)
    paths = write_bakeoff(
        table, Path(out), split=split, protocol=protocol, title=f"{snapshot.name}: {split} split, {protocol}"
    )
    client = mlflow_client()
    for path in paths.values():
        client.log_artifact(run_id, str(path), "bakeoff")
    # The same rows as an MLflow table: the UI's artifact view shows it as a sortable grid.
    client.log_table(run_id, data=table.to_pandas(), artifact_file="bakeoff/bakeoff.json")
    return BakeoffFiles(table=paths["table"], markdown=paths["markdown"], figure=paths["figure"])
