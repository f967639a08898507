"""``fit``: the one training loop for every registered model (classifiers and detectors).

Per step: forward under autocast (GPU), loss (cross-entropy, which takes CutMix/MixUp probability
targets as they are; detectors return their own named losses), a finite-loss check, backward with
a GradScaler (fp16 only), gradient clipping, optimizer and per-step LR schedule, EMA update. Per
epoch: validation through ``predict`` + cvcore.metrics, ``last.pt`` (and ``best.pt`` when the
selection metric improved) written atomically, ``metrics.json`` and ``history.parquet`` rewritten,
callbacks told, early stopping checked.

Reproducibility: every random source (torch, numpy, python, the train DataLoader's generator) is
seeded from ``config.train.seed`` at the start and captured in each checkpoint at the end of the
epoch, and every sample, mix and shuffle is a function of (seed, epoch, index) however many
(persistent) DataLoader workers make it (cvcore.engine.data), so a run resumed from epoch k's
``last.pt`` finishes with exactly the weights of a run that was never interrupted (on CPU; GPU
kernels are not all deterministic).

Data-parallel (``dist``, cvcore.engine.distributed): every rank runs ``fit`` on its share of each
global batch, the model wrapped in DistributedDataParallel; losses and counts are summed over the
ranks, validation is gathered (cvcore.engine.validate), and rank 0 alone writes the run folder and
calls the callbacks. Checkpoints hold the plain model's weights (no ``module.`` prefix) and every
rank's RNG states (``rng_ranks``), so a resume at the same world size repeats the run exactly.

GPU throughput: on CUDA, classifiers train in channels-last layout (``train.channels_last``),
``cudnn.benchmark`` picks the fastest convolution kernels, batches come from pinned memory with
non-blocking copies, and ``train.compile`` runs the training forward through ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cvcore.config import RunConfig
from cvcore.data.torch_dataset import no_readable_images_error
from cvcore.engine.callbacks import notify
from cvcore.engine.checkpoint import BEST, LAST, capture_rng, copy_atomic, load_checkpoint, restore_rng, save_checkpoint
from cvcore.engine.device import Precision, choose_precision, configure_threads, make_scaler, resolve_device
from cvcore.engine.distributed import Dist, prepare_model, single_process, unwrap, wrap_ddp
from cvcore.engine.ema import make_ema
from cvcore.engine.infer import as_float_image
from cvcore.engine.schedule import build_optimizer, build_scheduler
from cvcore.engine.validate import SELECTION, ValidationSettings, selection_key, validate
from cvcore.io import atomic_path, atomic_write

log = logging.getLogger(__name__)

Task = Literal["detection", "classification"]
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.parquet"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


@dataclass(frozen=True)
class FitResult:
    """What a finished (or early-stopped) ``fit`` leaves behind.

    ``metric`` names the selection metric (classification ``val/accuracy`` with macro-F1 as the
    tie-break, detection ``val/map_50``); ``best_metric`` is its value at ``best_epoch``
    (epochs are 1-based). ``history`` has one row per epoch: ``epoch`` and every metric.
    """

    metric: str
    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    history: pl.DataFrame
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    metrics_file: Path
    history_file: Path
    world_size: int = 1  # processes that trained it (data-parallel ranks)


@dataclass(frozen=True)
class _Loop:
    """The loop's bookkeeping; stored in checkpoints as plain values so resume continues it."""

    epoch: int = 0  # last finished epoch
    best: tuple[float, ...] | None = None
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the selection metric last improved
    stopped_early: bool = False
    history: tuple[dict[str, float], ...] = field(default_factory=tuple)

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best": list(self.best) if self.best is not None else None,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": [dict(row) for row in self.history],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Loop:
        best = state["best"]
        return cls(
            epoch=int(state["epoch"]),
            best=tuple(best) if best is not None else None,
            best_epoch=int(state["best_epoch"]),
            bad_epochs=int(state["bad_epochs"]),
            stopped_early=bool(state["stopped_early"]),
            history=tuple(state["history"]),
        )


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    config: RunConfig,
    task: Task,
    out_dir: str | Path,
    callbacks: Iterable[Any] = (),
    resume: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    dist: Dist | None = None,
) -> FitResult:
    """Train ``model`` for ``config.train.epochs`` epochs, validating and checkpointing each one.

    ``train_loader`` yields classification ``(images float/uint8[B, 3, H, W], targets int64[B] or
    probabilities float32[B, K])`` or detection ``(list of images [3, H, W], list of targets
    dict(boxes xyxy px, labels))`` (cvcore.engine.data.make_loaders builds both);
    ``val_loader.dataset`` is a cvcore.data.torch_dataset dataset with eval transforms.
    ``out_dir`` receives ``last.pt``, ``best.pt``, ``metrics.json`` and ``history.parquet``.
    ``meta`` (model_name, class_names, img_size, options ...) is stored in every checkpoint with
    ``task`` and the config added. ``resume``: a ``last.pt`` of the same run to continue from.
    ``dist``: this process's rank of a launched data-parallel run (cvcore.engine.distributed.init_rank;
    the loaders made for that rank); None for a one-process run. Only rank 0 reads ``resume``
    (the others receive its contents) and writes ``out_dir``.

    Raises NonFiniteLossError (naming epoch and step) when the loss is NaN/inf; the previous
    epoch's checkpoint stays on disk.
    """
    if task not in SELECTION:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(SELECTION)}")
    tc = config.train
    dist = dist if dist is not None else single_process(resolve_device(tc.device))
    callbacks = tuple(callbacks) if dist.is_main else ()  # rank 0 alone reports
    out_dir = Path(out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    configure_threads()  # torch's CPU threads sized to the CPUs this process may use, once
    device = dist.device
    precision = choose_precision(device, amp=tc.amp)
    generator = getattr(train_loader, "generator", None)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the train loader yields no batches: the train split is empty or smaller than one batch")

    channels_last = tc.channels_last and device.type == "cuda" and task == "classification"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: time the conv algorithms once, keep the fastest
    model = prepare_model(model, dist, sync_bn=tc.sync_bn)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(_param_groups(model, config), tc)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch=steps_per_epoch)
    scaler = make_scaler(device, precision)
    ema = make_ema(model, decay=tc.ema_decay) if tc.ema_decay is not None else None
    meta = {**(meta or {}), "task": task, "config": config.model_dump(mode="json")}

    if resume is None:
        seed_everything(tc.seed, generator=generator)
        loop = _Loop()
    else:
        loop = _restore(
            resume,
            meta=meta,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            ema=ema,
            generator=generator,
            dist=dist,
        )
        log.info("resuming from %s after epoch %d", resume, loop.epoch)
    net = wrap_ddp(model, dist)  # after the restore: DDP starts every rank from rank 0's weights
    if tc.compile:
        net = torch.compile(net)

    settings = ValidationSettings(
        batch_size=val_loader.batch_size or 1,
        num_workers=val_loader.num_workers,
        device=device,
        amp=tc.amp,
        eval=config.eval,
    )
    notify(
        callbacks,
        "on_fit_start",
        {"epochs": tc.epochs, "start_epoch": loop.epoch + 1, "steps_per_epoch": steps_per_epoch, "device": str(device)},
    )
    try:
        for epoch in range(loop.epoch + 1, tc.epochs + 1):
            if loop.stopped_early:
                break
            _set_epoch(train_loader, epoch, config)
            notify(callbacks, "on_epoch_start", epoch, steps_per_epoch)
            train_metrics = train_one_epoch(
                net, train_loader, task=task, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                ema=ema, device=device, precision=precision, grad_clip=tc.grad_clip, epoch=epoch, callbacks=callbacks,
                dist=dist, channels_last=channels_last,
            )  # fmt: skip
            val_metrics = validate(
                ema.module if ema is not None else model, val_loader.dataset, task=task, settings=settings, dist=dist
            )
            metrics = {**train_metrics, **val_metrics}
            loop = _after_epoch(loop, epoch, metrics, task=task, patience=tc.early_stopping_patience, epochs=tc.epochs)
            state = {
                "format": 1,
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "rng": None,
                "loop": loop.to_state(),
                "meta": meta,
                "world_size": dist.world_size,
            }
            rngs = dist.gather(capture_rng(generator))  # every rank's random state, on rank 0
            if dist.is_main:
                state["rng"] = rngs[0]
                if dist.distributed:
                    state["rng_ranks"] = rngs
                save_checkpoint(state, out_dir / LAST)
                if loop.best_epoch == epoch:
                    copy_atomic(out_dir / LAST, out_dir / BEST)
                _write_reports(out_dir, loop, task=task, world_size=dist.world_size)
            log.info("epoch %d/%d: %s", epoch, tc.epochs, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            notify(callbacks, "on_epoch_end", epoch, metrics)
            if loop.stopped_early:
                log.info("early stopping after epoch %d: no improvement for %d epochs", epoch, loop.bad_epochs)
    except BaseException as exc:
        notify(callbacks, "on_exception", exc)
        raise
    result = _result(out_dir, loop, task=task, world_size=dist.world_size)
    notify(callbacks, "on_fit_end", result)
    return result


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ema: torch.optim.swa_utils.AveragedModel | None,
    device: torch.device,
    precision: Precision,
    grad_clip: float | None,
    epoch: int,
    callbacks: tuple[Any, ...] = (),
    dist: Dist | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """One pass over ``loader``; mean losses (``train/loss``, ``train/<part>``), ``lr``, throughput,
    and the mean gradient norm before clipping (``train/grad_norm``, when clipping is on).

    ``dist`` (several ranks, ``model`` in DDP): losses, counts and CPU seconds are summed over the
    ranks, so the means and ``train/images`` are those of the global batches (``train/time_s`` is
    this rank's); the NaN check reads the ranks' mean loss, so every rank stops at the same step.
    ``channels_last``: classification batches are made channels-last (the model is already).

    Means are weighted by batch size. Throughput (``train/images_per_s``) counts the whole
    epoch's wall time (``train/time_s``, seconds), data loading included; ``train/cpu_time_s`` is
    the same pass in CPU seconds of this process (``time.process_time``: every thread, validation
    excluded).

    Undecodable images are skipped (the collate drops them); when the loader yielded batches but
    not one image of them could be read (on any rank), ValueError naming the split, its snapshot
    and the first files with their reasons, instead of an epoch of ``train/images`` 0.
    """
    dist = dist if dist is not None else single_process(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    images_seen = batches = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for step, (images, targets) in enumerate(loader, start=1):
        n, batches = len(images), step
        if n == 0:  # every sample of the batch was undecodable and dropped by the collate
            continue
        images, targets = _to_device(images, targets, task=task, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            loss, parts = compute_loss(model, images, targets, task=task)
        value = dist.mean(loss)  # one process: loss.item()
        if not math.isfinite(value):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise NonFiniteLossError(
                f"epoch {epoch}, step {step}: the training loss is {value}"
                + (f" ({detail})" if detail else "")
                + "; lower the learning rate, enable gradient clipping, or check the batch's labels and boxes"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            norm = clip_gradients(trainable, grad_clip)
            sums["train/grad_norm"] = sums.get("train/grad_norm", 0.0) + norm * n
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        images_seen += n
        sums["train/loss"] = sums.get("train/loss", 0.0) + (loss.item() if dist.distributed else value) * n
        for name, part in parts.items():
            sums[f"train/{name}"] = sums.get(f"train/{name}", 0.0) + part.item() * n
        notify(callbacks, "on_step", epoch, step, {"loss": value, "lr": _lr(optimizer), "images": n * dist.world_size})
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if dist.distributed:  # the global batches' sums; CPU seconds of every rank together
        sums = dist.sum({**sums, "_images": float(images_seen), "_cpu": cpu})
        images_seen, cpu = int(sums.pop("_images")), sums.pop("_cpu")
    if images_seen == 0 and batches > 0:  # every image of the split undecodable: nothing was trained (on any rank)
        raise no_readable_images_error(loader.dataset)
    out = {k: v / max(images_seen, 1) for k, v in sums.items()}
    out.update(
        {
            "lr": _lr(optimizer),
            "train/images": float(images_seen),
            "train/time_s": elapsed,
            "train/images_per_s": images_seen / max(elapsed, 1e-9),
        }
    )
    out["train/cpu_time_s"] = (
        cpu  # CPU seconds of this process (all its threads): steadier than wall time on a shared machine
    )
    return out


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most ``max_norm``; return the norm before.

    Same result as ``torch.nn.utils.clip_grad_norm_`` (built from its two halves), but the
    gradients are only rescaled when the norm is over the limit: clip_grad_norm_ multiplies every
    gradient on every step, a full extra pass over the weights (~5 % of a small model's step on CPU).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = nn.utils.get_total_norm(grads, foreach=True)
    value = float(total)
    if value > max_norm:
        nn.utils.clip_grads_with_norm_(parameters, max_norm, total, foreach=True)
    return value


def compute_loss(
    model: nn.Module, images: Any, targets: Any, *, task: Task
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar training loss and its named parts.

    Classification: cross-entropy of ``logits[B, K]`` against class indices ``int64[B]`` or
    probability targets ``float[B, K]`` (CutMix/MixUp), computed in float32 even under autocast.
    Detection: the sum of the detector's named losses (torchvision convention).
    """
    if task == "classification":
        return F.cross_entropy(model(images).float(), targets), {}
    parts = model(images, targets)
    if not isinstance(parts, dict) or not parts:
        raise TypeError(f"a detector in train mode must return a dict of losses, got {type(parts).__name__}")
    return torch.stack([v.float() for v in parts.values()]).sum(), parts


def seed_everything(seed: int, *, generator: torch.Generator | None = None) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global RNGs, and ``generator``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if generator is not None:
        generator.manual_seed(seed)


def _param_groups(model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
    """Optimizer groups from cvcore.models.finetune.param_groups: the backbone at
    ``lr * backbone_lr_factor``, no weight decay on biases and norms, frozen parameters left out
    (so the optimizer never touches them, weight decay included)."""
    from cvcore.models.finetune import param_groups

    tc = config.train
    return param_groups(
        model, lr=tc.lr, weight_decay=tc.weight_decay, backbone_lr_factor=config.model.backbone_lr_factor
    )


def _to_device(images: Any, targets: Any, *, task: Task, device: torch.device) -> tuple[Any, Any]:
    nb = device.type == "cuda"  # pinned host memory makes the copy asynchronous
    if task == "classification":
        return as_float_image(images.to(device, non_blocking=nb)), targets.to(device, non_blocking=nb)
    images = [as_float_image(im.to(device, non_blocking=nb)) for im in images]
    targets = [
        {
            "boxes": t["boxes"].as_subclass(torch.Tensor).to(device, non_blocking=nb),
            "labels": t["labels"].to(device, non_blocking=nb),
        }
        for t in targets
    ]
    return images, targets


def _set_epoch(loader: DataLoader, epoch: int, config: RunConfig) -> None:
    """Tell the dataset, sampler and collate which epoch starts (per-epoch augmentation seeds).

    A Mosaic dataset (``enabled``) is switched off for the last ``augment.close_mosaic`` epochs.
    """
    dataset = loader.dataset
    if hasattr(dataset, "enabled"):
        dataset.enabled = epoch <= config.train.epochs - config.augment.close_mosaic
    for obj in (dataset, loader.sampler, loader.collate_fn):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _after_epoch(
    loop: _Loop, epoch: int, metrics: dict[str, float], *, task: Task, patience: int | None, epochs: int
) -> _Loop:
    key = selection_key(metrics, task)
    improved = loop.best is None or key > loop.best
    bad = 0 if improved else loop.bad_epochs + 1
    return dataclasses.replace(
        loop,
        epoch=epoch,
        best=key if improved else loop.best,
        best_epoch=epoch if improved else loop.best_epoch,
        bad_epochs=bad,
        # Running out of patience on the last planned epoch is not an early stop.
        stopped_early=patience is not None and bad >= patience and epoch < epochs,
        history=loop.history + ({"epoch": float(epoch), **metrics},),
    )


def _restore(resume, *, meta, model, optimizer, scheduler, scaler, ema, generator, dist: Dist) -> _Loop:
    # Rank 0 reads the file and hands its contents to the other ranks (other machines need no copy).
    state = dist.broadcast(load_checkpoint(resume) if dist.is_main else None)
    saved = state["meta"]
    if meta.get("model_name") and saved.get("model_name") and meta["model_name"] != saved["model_name"]:
        raise ValueError(
            f"{resume}: checkpoint of model {saved['model_name']!r}, cannot resume training {meta['model_name']!r}"
        )
    if "loop" not in state or "optimizer" not in state:
        raise ValueError(
            f"{resume}: holds weights only (no optimizer/loop state), so it cannot be resumed; use it as --pretrained"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{resume}: weights do not fit this model: {exc}") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if state.get("ema") is None:
            raise ValueError(f"{resume}: the run had no EMA, but this config sets train.ema_decay")
        ema.load_state_dict(state["ema"])
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) != dist.world_size:
        log.warning(
            "%s was written by %d process(es), this run has %d: it continues, but does not repeat an uninterrupted run exactly",
            resume, len(ranks), dist.world_size,
        )  # fmt: skip
    restore_rng(ranks[dist.rank] if dist.rank < len(ranks) else ranks[0], generator=generator)
    return _Loop.from_state(state["loop"])


def _lr(optimizer: torch.optim.Optimizer) -> float:
    """The highest LR among groups (the head's when the backbone has a lower factor)."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


def _write_reports(out_dir: Path, loop: _Loop, *, task: Task, world_size: int = 1) -> None:
    result = _result(out_dir, loop, task=task, world_size=world_size)
    report = {
        "world_size": world_size,  # processes that trained (cvcore.engine.distributed)
        "metric": result.metric,
        "best_metric": result.best_metric,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        # CPU seconds of every epoch's training pass; None when an epoch lacks them (a run resumed
        # from a checkpoint written before the engine measured them)
        "train_cpu_time_s": _total(loop.history, "train/cpu_time_s"),
        "best": result.best_metrics,
        "final": result.final_metrics,
    }
    # NaN (e.g. COCO's AP for a size range without ground truth) becomes null: strict JSON has no NaN.
    text = json.dumps(_nan_to_none(report), indent=2, allow_nan=False)
    with atomic_write(out_dir / METRICS_FILE, "w") as fh:
        fh.write(text + "\n")
    with atomic_path(out_dir / HISTORY_FILE) as tmp:
        result.history.write_parquet(tmp)


def _total(history: tuple[dict[str, float], ...], key: str) -> float | None:
    """Sum of ``key`` over the epochs of ``history``; None when an epoch lacks it."""
    return float(sum(row[key] for row in history)) if all(key in row for row in history) else None


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _result(out_dir: Path, loop: _Loop, *, task: Task, world_size: int = 1) -> FitResult:
    history = (
        pl.DataFrame(list(loop.history)).with_columns(pl.col("epoch").cast(pl.Int64))
        if loop.history
        else pl.DataFrame({"epoch": []}, schema={"epoch": pl.Int64})
    )
    by_epoch = {int(row["epoch"]): {k: v for k, v in row.items() if k != "epoch"} for row in loop.history}
    return FitResult(
        metric=SELECTION[task][0],
        best_metric=loop.best[0] if loop.best is not None else math.nan,
        best_epoch=loop.best_epoch,
        epochs_run=loop.epoch,
        stopped_early=loop.stopped_early,
        best_metrics=by_epoch.get(loop.best_epoch, {}),
        final_metrics=by_epoch.get(loop.epoch, {}),
        history=history,
        out_dir=out_dir,
        last_checkpoint=out_dir / LAST,
        best_checkpoint=out_dir / BEST,
        metrics_file=out_dir / METRICS_FILE,
        history_file=out_dir / HISTORY_FILE,
        world_size=world_size,
    )
