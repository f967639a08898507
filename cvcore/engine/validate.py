"""Validation metrics of one epoch, scored with cvcore.metrics on the engine's own predictions.

Validation goes through :func:`cvcore.engine.infer.predict` with the run's EvalConfig decoding
(:func:`cvcore.engine.infer.decode_options`), the same path as batch inference, so the scores an
epoch reports are the scores ``cvflow predict`` + evaluation would give. As there, an image that
cannot be read is left out of the evaluated images (it has no prediction).

The metric that picks the best epoch (and drives early stopping) is a tuple compared in order:
classification uses accuracy, ties broken by macro-F1; detection uses mAP@0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import Dataset

from cvcore import schema
from cvcore.config import EvalConfig
from cvcore.engine.infer import TABLE, Unreadable, decode_options, predict

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


def validate(model: nn.Module, dataset: Dataset, *, task: Task, settings: ValidationSettings) -> dict[str, float]:
    """Score ``model`` on ``dataset`` (eval transforms); flat ``{"val/<name>": value}``."""
    if task == "classification":
        return classification_metrics(model, dataset, settings=settings)
    return detection_metrics(model, dataset, settings=settings)


def classification_metrics(model: nn.Module, dataset: Dataset, *, settings: ValidationSettings) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and the mean cross-entropy on a ClassificationDataset.

    The loss is ``-log p(true class)`` from the predicted probabilities, i.e. cross-entropy.
    """
    from cvcore.metrics.classification import classification_report

    preds, _ = _collect(model, dataset, task="classification", settings=settings)
    truth = pl.DataFrame({"image_id": np.asarray(dataset.image_ids, dtype=np.int64), "label": np.asarray(dataset.labels, dtype=np.int64)})
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


def detection_metrics(model: nn.Module, dataset: Dataset, *, settings: ValidationSettings) -> dict[str, float]:
    """The summary of cvcore.metrics.detection.evaluate_detections (``map_50`` always among them).

    Ground truth is read from the dataset's snapshot (crowd/difficult flags included) and limited
    to the dataset's readable images, which also fix the universe of evaluated images.
    """
    from cvcore.data.snapshot import read_snapshot
    from cvcore.metrics.detection import evaluate_detections

    preds, unreadable = _collect(model, dataset, task="detection", settings=settings)
    snapshot = read_snapshot(dataset.snapshot_path)
    skipped = {r.image_id for r in unreadable}
    readable = [i for i in np.asarray(dataset.image_ids, dtype=np.int64).tolist() if i not in skipped]
    ids = pl.Series("image_id", readable, dtype=pl.Int64).implode()
    images = snapshot.images.filter(pl.col("image_id").is_in(ids))
    annotations = snapshot.annotations.filter(pl.col("image_id").is_in(ids))
    report = evaluate_detections(annotations, preds, images=images, protocol=settings.eval.protocol)
    metrics = {f"val/{k}": float(v) for k, v in report.summary.items()}
    if callable(getattr(model, "proposals", None)):
        metrics |= proposal_metrics(model, dataset)
    return metrics


def proposal_metrics(model: nn.Module, dataset: Dataset) -> dict[str, float]:
    """Proposal recall of a two-stage model (R-CNN, Fast R-CNN): ``val/proposal_recall_50`` etc.

    How many validation objects the model's region proposals can possibly find (IoU 0.5/0.7),
    and proposals per image. Run after inference, so the model's proposal cache makes it cheap.
    """
    from cvcore.models.proposals import dataset_proposal_recall

    recall = dataset_proposal_recall(model.proposals, dataset)
    return {f"val/{k}": float(v) for k, v in recall.as_metrics().items()}


def _collect(model: nn.Module, dataset: Dataset, *, task: Task, settings: ValidationSettings) -> tuple[pl.DataFrame, list[Unreadable]]:
    """The predictions on ``dataset`` (as a frame) and the images that could not be read."""
    unreadable: list[Unreadable] = []
    batches = predict(
        model,
        dataset,
        task=task,
        batch_size=settings.batch_size,
        device=settings.device,
        num_workers=settings.num_workers,
        amp=settings.amp,
        on_unreadable=unreadable.append,
        **decode_options(settings.eval),
    )
    table = pa.Table.from_batches(list(batches), schema=schema.arrow_schema(TABLE[task]))
    return pl.from_arrow(table), unreadable

