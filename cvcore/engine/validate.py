"""Validation metrics of one epoch, scored with cvcore.metrics on the engine's own predictions.

Validation goes through :func:`cvcore.engine.infer.predict` with the run's EvalConfig decoding
(:func:`cvcore.engine.infer.decode_options`), the same path as batch inference, so the scores an
epoch reports are the scores ``cvflow predict`` + evaluation would give. As there, an image that
cannot be read is left out of the evaluated images (it has no prediction).

In a data-parallel run (``dist``, cvcore.engine.distributed.Dist) each rank predicts a ``1/W``
shard of the dataset; rank 0 gathers the predictions, restores dataset order and scores them
once, so the numbers are those of one process on the same weights; every rank gets them.

The metric that picks the best epoch (and drives early stopping) is a tuple compared in order:
classification uses accuracy, ties broken by macro-F1; detection uses mAP@0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import Dataset

from cvcore import schema
from cvcore.config import EvalConfig
from cvcore.engine.infer import TABLE, Unreadable, decode_options, predict
from cvcore.models.capabilities import ProposesRegions

if TYPE_CHECKING:
    from cvcore.engine.distributed import Dist

Task = Literal["detection", "classification"]

# Keys (in the flat epoch metrics) compared in order to choose the best epoch; higher is better.
SELECTION = {"classification": ("val/accuracy", "val/macro_f1"), "detection": ("val/map_50",)}


@dataclass(frozen=True)
class ValidationSettings:
    """How validation batches run (taken from the val DataLoader and the RunConfig)."""

    batch_size: int
    num_workers: int
    device: torch.device
    amp: bool
    eval: EvalConfig


def selection_key(metrics: dict[str, float], task: Task) -> tuple[float, ...]:
    """The tuple that ranks epochs (NaN counts as the worst value)."""
    return tuple(-math.inf if math.isnan(v := float(metrics.get(k, math.nan))) else v for k in SELECTION[task])


def validate(
    model: nn.Module, dataset: Dataset, *, task: Task, settings: ValidationSettings, dist: Dist | None = None
) -> dict[str, float]:
    """Score ``model`` on ``dataset`` (eval transforms); flat ``{"val/<name>": value}``.

    ``dist``: a data-parallel run's rank; every rank calls this and every rank gets rank 0's
    scores of the gathered predictions.
    """
    if task == "classification":
        metrics = classification_metrics(model, dataset, settings=settings, dist=dist)
    else:
        metrics = detection_metrics(model, dataset, settings=settings, dist=dist)
    return dist.broadcast(metrics) if dist is not None else metrics


def classification_metrics(
    model: nn.Module, dataset: Dataset, *, settings: ValidationSettings, dist: Dist | None = None
) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and the mean cross-entropy on a ClassificationDataset.

    The loss is ``-log p(true class)`` from the predicted probabilities, i.e. cross-entropy.
    With ``dist``, ranks other than 0 only predict their shard and return ``{}``.
    """
    from cvcore.metrics.classification import classification_report

    collected = _collect(model, dataset, task="classification", settings=settings, dist=dist)
    if collected is None:
        return {}
    preds, _ = collected
    truth = pl.DataFrame(
        {"image_id": np.asarray(dataset.image_ids, dtype=np.int64), "label": np.asarray(dataset.labels, dtype=np.int64)}
    )
    joined = truth.join(preds, on="image_id", how="inner")  # undecodable images have no prediction
    if joined.is_empty():
        raise ValueError("validation produced no predictions: every validation image failed to decode")
    k = len(joined.get_column("scores")[0])
    rep = classification_report(joined.get_column("label"), joined.get_column("category_id"), num_classes=k)
    probs = np.stack(joined.get_column("scores").to_numpy())
    p_true = probs[np.arange(len(probs)), joined.get_column("label").to_numpy()]
    return {
        "val/accuracy": float(rep.accuracy),
        "val/macro_f1": float(rep.macro.f1),
        "val/macro_precision": float(rep.macro.precision),
        "val/macro_recall": float(rep.macro.recall),
        "val/loss": float(-np.log(np.clip(p_true, 1e-12, None)).mean()),
    }


def detection_metrics(
    model: nn.Module, dataset: Dataset, *, settings: ValidationSettings, dist: Dist | None = None
) -> dict[str, float]:
    """The summary of cvcore.metrics.detection.evaluate_detections (``map_50`` always among them).

    Ground truth is read from the dataset's snapshot (crowd/difficult flags included) and limited
    to the dataset's readable images, which also fix the universe of evaluated images.
    With ``dist``, ranks other than 0 only predict their shard and return ``{}``.
    """
    from cvcore.data.snapshot import read_snapshot
    from cvcore.metrics.detection import evaluate_detections

    collected = _collect(model, dataset, task="detection", settings=settings, dist=dist)
    if collected is None:
        return {}
    preds, unreadable = collected
    snapshot = read_snapshot(dataset.snapshot_path)
    skipped = {r.image_id for r in unreadable}
    readable = [i for i in np.asarray(dataset.image_ids, dtype=np.int64).tolist() if i not in skipped]
    ids = pl.Series("image_id", readable, dtype=pl.Int64).implode()
    images = snapshot.images.filter(pl.col("image_id").is_in(ids))
    annotations = snapshot.annotations.filter(pl.col("image_id").is_in(ids))
    report = evaluate_detections(annotations, preds, images=images, protocol=settings.eval.protocol)
    metrics = {f"val/{k}": float(v) for k, v in report.summary.items()}
    if isinstance(model, ProposesRegions):
        metrics |= proposal_metrics(model, dataset)
    return metrics


def proposal_metrics(model: ProposesRegions, dataset: Dataset) -> dict[str, float]:
    """Proposal recall of a two-stage model (R-CNN, Fast R-CNN): ``val/proposal_recall_50`` etc.

    How many validation objects the model's region proposals can possibly find (IoU 0.5/0.7),
    and proposals per image. Run after inference, so the model's proposal cache makes it cheap.
    """
    from cvcore.models.proposals import dataset_proposal_recall

    recall = dataset_proposal_recall(model.proposals, dataset)
    return {f"val/{k}": float(v) for k, v in recall.as_metrics().items()}


def _collect(
    model: nn.Module, dataset: Dataset, *, task: Task, settings: ValidationSettings, dist: Dist | None = None
) -> tuple[pl.DataFrame, list[Unreadable]] | None:
    """The predictions on ``dataset`` (as a frame, in dataset order) and the images that could not be read.

    With several ranks: this rank's shard is predicted and sent to rank 0, which returns the
    whole; the other ranks return None.
    """
    if dist is None or not dist.distributed:
        return _predict_frame(model, dataset, task=task, settings=settings, indices=None)
    mine = _predict_frame(model, dataset, task=task, settings=settings, indices=dist.shard(len(dataset)))
    parts = dist.gather(mine)
    if parts is None:
        return None
    order = pl.DataFrame(
        {
            "image_id": np.asarray(dataset.image_ids, dtype=np.int64),
            "_position": np.arange(len(dataset), dtype=np.int64),
        }
    )
    frame = pl.concat([p for p, _ in parts], how="vertical")
    # Back in dataset order (stable: an image's rows keep their order), as one process yields them.
    frame = (
        frame.join(order, on="image_id", how="left", maintain_order="left")
        .sort("_position", maintain_order=True)
        .drop("_position")
    )
    unreadable = sorted((u for _, us in parts for u in us), key=lambda u: u.image_id)
    return frame, unreadable


def _predict_frame(
    model: nn.Module, dataset: Dataset, *, task: Task, settings: ValidationSettings, indices: range | None
) -> tuple[pl.DataFrame, list[Unreadable]]:
    unreadable: list[Unreadable] = []
    batches = predict(
        model,
        dataset,
        task=task,
        batch_size=settings.batch_size,
        device=settings.device,
        num_workers=settings.num_workers,
        indices=indices,
        amp=settings.amp,
        on_unreadable=unreadable.append,
        **decode_options(settings.eval),
    )
    table = pa.Table.from_batches(list(batches), schema=schema.arrow_schema(TABLE[task]))
    return pl.from_arrow(table), unreadable
