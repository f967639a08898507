"""The bake-off: train (or load) several detectors on one snapshot and score them with one protocol.

The notes tell detection's history as R-CNN → Fast R-CNN → Faster R-CNN → YOLOv1; the bake-off
puts them side by side on the user's data. Each model is trained by the same engine
(``cvcore.engine.run.train_run``, the model's own run defaults unless overridden), run by the same
``predict``, and scored by the same ``evaluate_detections``. One row per model:

==========================  ====================================================================
``map_50``, ``map``          COCO mAP at IoU 0.5 and averaged over 0.5:0.95 (``protocol``)
``map_small|medium|large``   COCO AP by object area (NaN: no object of that size in the split)
``recall_crowded``           recall at IoU 0.5 of objects whose centre shares a ``grid`` x ``grid``
``recall_isolated``          cell with another object's centre (YOLOv1's "several objects per
                             cell" weakness), and of the other objects
``candidates_per_image``     boxes scored per image before NMS: proposals (R-CNN, Fast R-CNN),
                             RPN proposals (Faster R-CNN), S*S*B (YOLOv1)
``proposal_recall_50|70``    models with external proposals: the share of objects whose best
                             proposal reaches IoU 0.5 / 0.7 (what the proposals can find at all)
``train_s``                  training time in seconds (sum of the epochs' training passes,
                             validation excluded)
``train_cpu_s``              the same passes in CPU seconds of the training process (all its
                             threads; steadier than wall time on a shared machine)
``infer_images_per_s``       images per second through ``predict`` (data loading included,
                             proposal caches emptied first, so proposal time counts)
``infer_cpu_ms_per_image``   the same in CPU milliseconds per image
==========================  ====================================================================

Nothing here prints, plots to screen or talks to MLflow; :func:`write_bakeoff` writes the table
(Parquet + Markdown) and the figure atomically.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import nn
from torchvision.ops import box_iou

from cvcore import schema
from cvcore.data.snapshot import Snapshot
from cvcore.models.proposals import ProposalRecall, dataset_proposal_recall

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
CPU_FILE = "cpu_time.json"  # in a run folder: CPU seconds of each epoch's training pass


@dataclass(frozen=True)
class Contender:
    """One model of the bake-off: a registered detector ``name``, trained afresh into
    ``<out>/runs/<name>`` unless ``run_dir`` names an existing run (or checkpoint) to load."""

    name: str
    run_dir: Path | None = None


@dataclass(frozen=True)
class BakeoffResult:
    """The table (TABLE_SCHEMA, one row per model, in the order asked), and where each model's
    run and predictions are."""

    table: pl.DataFrame
    split: str
    protocol: str
    runs: dict[str, Path]
    predictions: dict[str, Path]


@dataclass(frozen=True)
class ScoredRun:
    """One model's row of the table (TABLE_SCHEMA's columns) and its predictions file."""

    row: dict[str, Any]
    predictions: Path


def parse_contenders(spec: str | Sequence[str]) -> list[Contender]:
    """``"rcnn,fast_rcnn=runs/frcnn"`` → contenders; ``name=PATH`` loads an existing run.

    Raises ValueError for an empty list or a name given twice.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no models to compare: give a comma-separated list, e.g. rcnn,fast_rcnn,faster_rcnn,yolov1")
    out = []
    for item in items:
        name, _, path = item.partition("=")
        out.append(Contender(name.strip(), Path(path.strip()) if path.strip() else None))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is listed twice in {names}")
    return out


def check_contenders(task: str, names: Sequence[str], *, epochs: dict[str, int], overrides: dict[str, dict]) -> None:
    """Fail before any training: a classification dataset, a model that is not a registered
    detector, or epochs/overrides for a model not being compared (ValueError naming it)."""
    from cvcore.models import model_spec

    if task != "detection":
        raise ValueError(f"the bake-off compares detectors; this is a {task} dataset")
    for name in names:
        if model_spec(name).task != "detection":  # model_spec: ValueError listing the models for an unknown name
            raise ValueError(f"model {name!r} is not a detector; the bake-off compares detectors")
    for option, given in (("epochs", epochs), ("overrides", overrides)):
        stray = sorted(set(given) - set(names))
        if stray:
            raise ValueError(f"{option} given for {stray}, which are not among the compared models {list(names)}")


def scored_split(path: str | Path, splits: Sequence[str], split: str | None) -> str:
    """The split a bake-off scores: ``split``, else ``test`` when there is one, else ``val``
    (ValueError naming the snapshot ``path`` and its splits when it has no such split)."""
    chosen = split or ("test" if "test" in splits else "val")
    if chosen not in splits:
        raise ValueError(f"snapshot {path} has no split {chosen!r}; splits: {list(splits)}")
    return chosen


def run_bakeoff(
    snapshot: Snapshot,
    *,
    contenders: Sequence[Contender],
    out: str | Path,
    split: str | None = None,
    protocol: str = "coco",
    epochs: int | dict[str, int] | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    grid: int = 7,
    overrides: dict[str, dict[str, Any]] | None = None,
    callbacks: Callable[[str], Iterable[Any]] = lambda name: (),
) -> BakeoffResult:
    """Train or load every contender, predict ``split`` with each, and score them alike.

    Args:
        snapshot: a detection snapshot.
        out: the bake-off folder: ``runs/<model>/`` (training runs), ``predictions/<model>/<split>/``
            and ``cache/`` (proposal and feature caches of the two-stage models).
        split: the scored split; default ``test`` when the snapshot has one, else ``val`` (which
            also picked each run's best epoch, so its numbers are slightly optimistic).
        epochs: for every model, or per model name; default: each model's own run default.
        pretrained: weights every model's backbone starts from (e.g. a classifier checkpoint).
        grid: the grid of the crowded-cell recall (YOLOv1's S).
        overrides: per model name, RunConfig sections laid over its defaults, e.g.
            ``{"rcnn": {"model": {"options": {"warp_size": 32}}, "train": {"lr": 0.01}}}``.
        callbacks: ``name -> engine callbacks`` for that model's training (progress bars, logs).
    """
    names = [c.name for c in contenders]
    check_contenders(snapshot.task, names, epochs=epochs if isinstance(epochs, dict) else {}, overrides=overrides or {})
    split = scored_split(snapshot.path, list(snapshot.splits), split)
    out = Path(out)
    rows, runs, preds = [], {}, {}
    for c in contenders:
        per_model_epochs = epochs.get(c.name) if isinstance(epochs, dict) else epochs
        run_dir = c.run_dir or train_contender(
            snapshot, c.name, out=out, epochs=per_model_epochs, pretrained=pretrained, device=device,
            overrides=(overrides or {}).get(c.name), callbacks=callbacks(c.name),
        )  # fmt: skip
        scored = score_run(snapshot, c.name, run_dir, out=out, split=split, protocol=protocol, device=device, batch_size=batch_size, grid=grid)
        rows.append(scored.row)
        runs[c.name], preds[c.name] = Path(run_dir), scored.predictions
    table = pl.DataFrame(rows, schema=TABLE_SCHEMA) if rows else pl.DataFrame(schema=TABLE_SCHEMA)
    return BakeoffResult(table=table, split=split, protocol=protocol, runs=runs, predictions=preds)


def train_contender(
    snapshot: Snapshot,
    name: str,
    *,
    out: Path,
    epochs: int | None,
    pretrained: str | None,
    device: str,
    overrides: dict[str, Any] | None = None,
    callbacks: Iterable[Any] = (),
) -> Path:
    """Train ``name`` into ``<out>/runs/<name>`` with its run defaults (``overrides``: RunConfig
    sections laid over them). A finished run there is reused; an interrupted one is resumed
    from its ``last.pt`` with its own config."""
    from cvcore.config import RunConfig, load_config
    from cvcore.engine.checkpoint import LAST
    from cvcore.engine.run import CONFIG_FILE, train_run
    from cvcore.models import model_spec

    run_dir = out / "runs" / name
    state = run_state(run_dir)
    if state != "absent":
        _check_same_run(load_config(run_dir / CONFIG_FILE), run_dir, snapshot=snapshot, epochs=epochs, pretrained=pretrained,
                        overrides=overrides)  # fmt: skip
    if state == "finished":
        log.info("bake-off: reusing the finished run %s", run_dir)
        return run_dir
    callbacks = [*callbacks, CpuClock(run_dir)]
    if state == "interrupted":
        log.info("bake-off: resuming the interrupted run %s", run_dir)
        train_run(load_config(run_dir / CONFIG_FILE), run_dir, callbacks=callbacks, resume=run_dir / LAST)
        return run_dir
    options: dict[str, Any] = {}
    if "cache_dir" in inspect.signature(model_spec(name).builder).parameters:
        # Proposals and CNN features are per snapshot; the entries inside are keyed by content.
        options["cache_dir"] = str(out / "cache" / snapshot.digest[:16])
    raw: dict[str, Any] = {
        "data": {"snapshot": str(snapshot.path)},
        "model": {"name": name, "options": options, **({"pretrained": pretrained} if pretrained else {})},
        "train": {"device": device, **({"epochs": epochs} if epochs else {})},
    }
    for section, values in (overrides or {}).items():
        merged = {**raw.get(section, {}), **values}
        if section == "model" and "options" in values:
            merged["options"] = {**options, **values["options"]}
        raw[section] = merged
    train_run(RunConfig.model_validate(raw), run_dir, callbacks=callbacks)
    return run_dir


def _check_same_run(
    saved, run_dir: Path, *, snapshot: Snapshot, epochs: int | None, pretrained: str | None, overrides: dict[str, Any] | None
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
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            have = getattr(getattr(saved, section), key)
            if key == "options" and isinstance(value, dict):
                have = {k: have.get(k) for k in value}
            if have != value:
                differs.append(f"{section}.{key} = {have!r} (asked: {value!r})")
    if differs:
        raise ValueError(f"{run_dir} was trained with {'; '.join(differs)}; use another --out or delete that folder")


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
    """Predict ``split`` with the run's best model, time it and score it.

    Predictions go to ``<out>/predictions/<name>/<split>/part-00000.parquet``.
    """
    from cvcore.engine.checkpoint import load_model, resolve_checkpoint
    from cvcore.engine.infer import predict_checkpoint, write_predictions
    from cvcore.metrics.detection import evaluate_detections

    loaded = load_model(run_dir)
    model, meta = loaded.model, loaded.meta
    if meta.get("task") != "detection":
        raise ValueError(f"{loaded.path}: a {meta.get('task')} model, not a detector")
    run = predict_checkpoint(loaded, snapshot, split, batch_size=batch_size, device=device)  # the run's own EvalConfig decoding
    dataset = run.dataset
    empty_proposal_caches(model)
    count = CandidateCounter(model)
    start, cpu_start = time.perf_counter(), time.process_time()
    batches = list(run.batches)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    candidates = count.per_image()
    count.close()
    recall = external_proposal_recall(model, dataset)
    pred_path = write_predictions(batches, out / "predictions" / name / split / "part-00000.parquet", task="detection", unreadable=run.unreadable)
    predictions = pl.from_arrow(pa.Table.from_batches(batches, schema=schema.arrow_schema("detections")))
    unreadable = pl.Series("image_id", [r.image_id for r in run.unreadable], dtype=pl.Int64).implode()
    images = snapshot.split_images(split).filter(~pl.col("image_id").is_in(unreadable))  # as evaluation: unreadable images are left out
    annotations = snapshot.annotations.filter(pl.col("image_id").is_in(images.get_column("image_id").implode()))
    summary = evaluate_detections(annotations, predictions, images=images, protocol=protocol).summary
    found = object_recall(annotations, predictions, iou=0.5).join(crowded_objects(annotations, images, grid=grid), on="ann_id")
    crowded, isolated = found.filter(pl.col("crowded")), found.filter(~pl.col("crowded"))
    run_folder = Path(resolve_checkpoint(run_dir)).parent
    history = pl.read_parquet(run_folder / "history.parquet")
    row = {
        "model": name,
        **{k: _metric(summary, k) for k in ("map_50", "map", "map_small", "map_medium", "map_large")},
        "recall_crowded": _mean_bool(crowded),
        "recall_isolated": _mean_bool(isolated),
        "n_crowded": crowded.height,
        "n_isolated": isolated.height,
        "candidates_per_image": candidates,
        "proposal_recall_50": recall.recall[0.5] if recall else math.nan,
        "proposal_recall_70": recall.recall[0.7] if recall else math.nan,
        "train_s": float(history.get_column("train/time_s").sum()) if "train/time_s" in history.columns else math.nan,
        "train_cpu_s": training_cpu_seconds(run_folder, epochs=history.height),
        "epochs": history.height,
        "infer_images_per_s": len(dataset) / seconds if seconds > 0 else math.nan,
        "infer_cpu_ms_per_image": 1000 * cpu_seconds / len(dataset) if len(dataset) else math.nan,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    log.info("bake-off %s on %s: %s", name, split, row)
    return ScoredRun(row=row, predictions=pred_path)


def external_proposal_recall(model: nn.Module, dataset) -> ProposalRecall | None:
    """Recall at IoU 0.5 / 0.7 of a model's own proposals (``model.proposals(image)``, R-CNN and
    Fast R-CNN) on ``dataset``'s images, in the model's input pixels; None for other models."""
    propose = getattr(model, "proposals", None)
    return dataset_proposal_recall(propose, dataset) if callable(propose) else None


class CpuClock:
    """Engine callback: CPU seconds of each epoch's training pass (epoch start to its last step,
    validation excluded; ``time.process_time``, every thread of the process), kept in
    ``<run_dir>/cpu_time.json`` (rewritten atomically after each epoch, so a resumed or reused
    run still reports them)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / CPU_FILE
        self.epochs: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self._start = self._last = 0.0

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self._start = self._last = time.process_time()

    def on_step(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        self._last = time.process_time()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs[str(epoch)] = self._last - self._start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic(self.path, lambda p: Path(p).write_text(json.dumps(self.epochs, indent=2) + "\n"))


def training_cpu_seconds(run_dir: str | Path, *, epochs: int) -> float:
    """Sum of a run's per-epoch training CPU seconds (:class:`CpuClock`); NaN unless all
    ``epochs`` were clocked (a run trained elsewhere, or resumed without the clock)."""
    path = Path(run_dir) / CPU_FILE
    if not path.is_file():
        return math.nan
    clocked = json.loads(path.read_text())
    if any(str(e) not in clocked for e in range(1, epochs + 1)):
        return math.nan
    return float(sum(clocked[str(e)] for e in range(1, epochs + 1)))


def empty_proposal_caches(model: nn.Module) -> None:
    """Give every proposal cache of ``model`` a fresh, memory-only store, so timed inference
    computes proposals as a new image would (the training run may have cached them on disk)."""
    from cvcore.models.proposals import TensorCache

    for module in model.modules():
        if isinstance(getattr(module, "proposal_cache", None), TensorCache):
            module.proposal_cache = TensorCache(None)


class CandidateCounter:
    """Counts the boxes a detector scores per image before NMS while it runs in eval mode.

    Two-stage models of cvcore record their proposals (``proposals_seen``); torchvision's RPN is
    hooked (its output proposals per image); a grid detector declares ``grid`` and
    ``boxes_per_cell`` (S*S*B). Other models: NaN.
    """

    def __init__(self, model: nn.Module):
        from torchvision.models.detection.rpn import RegionProposalNetwork

        self._recorders = [m for m in model.modules() if isinstance(getattr(m, "proposals_seen", None), list)]
        for m in self._recorders:
            m.proposals_seen.clear()
        self._rpn_counts: list[int] = []
        self._hooks = [
            m.register_forward_hook(lambda _m, _i, output: self._rpn_counts.extend(len(b) for b in output[0]))
            for m in model.modules()
            if isinstance(m, RegionProposalNetwork)
        ]
        grid, per_cell = getattr(model, "grid", None), getattr(model, "boxes_per_cell", None)
        self._fixed = float(grid * grid * per_cell) if isinstance(grid, int) and isinstance(per_cell, int) else None

    def per_image(self) -> float:
        counts = [n for m in self._recorders for n in m.proposals_seen] + self._rpn_counts
        if counts:
            return float(np.mean(counts))
        return self._fixed if self._fixed is not None else math.nan

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def crowded_objects(annotations: pl.DataFrame, images: pl.DataFrame, *, grid: int = 7) -> pl.DataFrame:
    """``ann_id, crowded``: whether an object's box centre falls in a cell of the image's
    ``grid`` x ``grid`` partition that holds another object's centre (crowd regions excluded)."""
    cells = (
        annotations.filter(~pl.col("iscrowd"))
        .join(images.select("image_id", "width", "height"), on="image_id")
        .with_columns(
            cx=(((pl.col("x1") + pl.col("x2")) / 2 / pl.col("width") * grid).floor().clip(0, grid - 1)),
            cy=(((pl.col("y1") + pl.col("y2")) / 2 / pl.col("height") * grid).floor().clip(0, grid - 1)),
        )
    )
    return cells.select("ann_id", crowded=pl.len().over("image_id", "cx", "cy") > 1)


def object_recall(annotations: pl.DataFrame, predictions: pl.DataFrame, *, iou: float = 0.5) -> pl.DataFrame:
    """``ann_id, found``: whether each (non-crowd) object is matched by a detection of its class.

    COCO's greedy matching at one IoU threshold: detections in descending score order each take
    the unmatched object of their class and image with the highest IoU >= ``iou``. Written here
    because evaluate_detections reports recall per class and area, not per object, and the
    crowded-cell split needs it per object.
    """
    gt = annotations.filter(~pl.col("iscrowd"))
    preds_by_key = {k: g for k, g in predictions.partition_by("image_id", "category_id", as_dict=True).items()}
    found_ids: list[int] = []
    for key, objects in gt.partition_by("image_id", "category_id", as_dict=True).items():
        dets = preds_by_key.get(key)
        if dets is None or dets.is_empty():
            continue
        dets = dets.sort("score", descending=True)
        ious = box_iou(
            torch.from_numpy(dets.select("x1", "y1", "x2", "y2").to_numpy().copy()),
            torch.from_numpy(objects.select("x1", "y1", "x2", "y2").to_numpy().copy()),
        ).numpy()
        taken = np.zeros(objects.height, dtype=bool)
        for row in ious:
            candidates = np.where(~taken & (row >= iou), row, -1.0)
            best = int(candidates.argmax())
            if candidates[best] >= iou:
                taken[best] = True
        found_ids.extend(objects.get_column("ann_id").filter(pl.Series(taken)).to_list())
    return gt.select("ann_id", found=pl.col("ann_id").is_in(pl.Series(found_ids, dtype=pl.Int64).implode()))


def bakeoff_figure(table: pl.DataFrame, *, title: str = "") -> Figure:
    """Two panels: accuracy by model (mAP@0.5, mAP, AP small/medium, crowded/isolated recall),
    and mAP@0.5 against inference cost in CPU ms per image (log scale)."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    bars, speed = fig.subplots(1, 2, width_ratios=(3, 2))
    columns = ["map_50", "map", "map_small", "map_medium", "recall_crowded", "recall_isolated"]
    labels = ["mAP@0.5", "mAP", "AP small", "AP medium", "recall crowded", "recall isolated"]
    names = table.get_column("model").to_list()
    width = 0.8 / len(columns)
    x = np.arange(len(names))
    for i, (col, label) in enumerate(zip(columns, labels)):
        values = np.nan_to_num(table.get_column(col).to_numpy().astype(float), nan=0.0)
        bars.bar(x + (i - (len(columns) - 1) / 2) * width, values, width, label=label)
    bars.set_xticks(x, names)
    bars.set_ylim(0, 1.2)  # headroom: the legend sits above the bars
    bars.set_yticks(np.linspace(0, 1, 6))
    bars.set_ylabel("score")
    bars.legend(fontsize=8, ncols=3, loc="upper center")
    bars.set_title("accuracy (one protocol)")
    cost, m50 = table.get_column("infer_cpu_ms_per_image").to_numpy(), table.get_column("map_50").to_numpy()
    speed.scatter(cost, m50)
    for name, a, b in zip(names, cost, m50):
        speed.annotate(name, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=9)
    pick = best_tradeoff(table)
    if pick is not None and pick in names:
        i = names.index(pick)
        speed.scatter([cost[i]], [m50[i]], s=160, facecolors="none", edgecolors="tab:red", label=f"best trade-off: {pick}")
        speed.legend(fontsize=8, loc="lower right")
    speed.set_xscale("log")
    speed.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: no crowded minor ticks
    speed.set_xlabel("inference CPU ms / image (log; left is faster)")
    speed.set_ylabel("mAP@0.5")
    speed.set_ylim(0, 1)
    speed.set_title("accuracy vs speed")
    if title:
        fig.suptitle(title)
    return fig


TRADEOFF_TOLERANCE = 0.02  # score points a faster model may give up and still be "the best trade-off"
TRADEOFF_METRIC = "map"  # COCO's primary number: a box must also be tight, not only found (map_50)


def best_tradeoff(table: pl.DataFrame, *, metric: str = TRADEOFF_METRIC, tolerance: float = TRADEOFF_TOLERANCE) -> str | None:
    """The model to recommend from a bake-off table: quality first, then inference cost.

    Among the models whose ``metric`` (default mAP@[.5:.95]) is within ``tolerance`` of the best
    one, the one with the lowest ``infer_cpu_ms_per_image`` (ties: the higher score, then table
    order). None when no model has a finite score.
    """
    scored = table.filter(pl.col(metric).is_not_nan() & pl.col(metric).is_not_null())
    if scored.is_empty():
        return None
    best = float(scored.get_column(metric).max())
    close = scored.with_row_index("order").filter(pl.col(metric) >= best - tolerance - 1e-12)
    cost = pl.when(pl.col("infer_cpu_ms_per_image").is_nan()).then(None).otherwise(pl.col("infer_cpu_ms_per_image"))
    ranked = close.with_columns(cost.alias("cost")).sort(["cost", metric, "order"], descending=[False, True, False], nulls_last=True)
    return str(ranked.get_column("model")[0])


def table_markdown(table: pl.DataFrame) -> str:
    """The table as a Markdown pipe table (polars' own formatter), 3 decimals, NaN as is; the
    best trade-off (:func:`best_tradeoff`) is marked ``**name** (best trade-off)``."""
    pick = best_tradeoff(table)
    if pick is not None:
        table = table.with_columns(
            pl.when(pl.col("model") == pick).then(pl.format("**{}** (best trade-off)", pl.col("model"))).otherwise(pl.col("model")).alias("model")
        )
    with pl.Config(
        tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
        float_precision=3, tbl_rows=-1, tbl_cols=-1, tbl_width_chars=1000, fmt_str_lengths=100,
    ):  # fmt: skip
        return str(table) + "\n"


def write_bakeoff(result: BakeoffResult, out: str | Path, *, title: str = "") -> dict[str, Path]:
    """Write ``bakeoff.parquet``, ``bakeoff.md`` and ``bakeoff.png`` into ``out``, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = f"Bake-off on split `{result.split}`, protocol `{result.protocol}`.\n\n"
    pick = best_tradeoff(result.table)
    if pick is not None:
        header += (
            f"Best trade-off: **{pick}**, the fastest at inference among the models within "
            f"{TRADEOFF_TOLERANCE} mAP@[.5:.95] of the best.\n\n"
        )
    fig = bakeoff_figure(result.table, title=title)
    paths = {
        "table": _atomic(out / TABLE_FILE, lambda p: result.table.write_parquet(p)),
        "markdown": _atomic(out / MARKDOWN_FILE, lambda p: Path(p).write_text(header + table_markdown(result.table))),
        "figure": _atomic(out / FIGURE_FILE, lambda p: fig.savefig(p, format="png", dpi=120)),
    }
    return paths


def _atomic(path: Path, write: Callable[[str], Any]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _metric(summary: dict[str, float], key: str) -> float:
    value = summary.get(key, math.nan)
    return float(value) if value is not None else math.nan


def _mean_bool(frame: pl.DataFrame) -> float:
    return float(frame.get_column("found").mean()) if frame.height else math.nan
