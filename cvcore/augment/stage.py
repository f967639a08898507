"""The augment stage: preview, statistics and optional offline copies of one split.

``run_augment_stage`` draws ``n_stats`` samples of a split (a seeded random subset) through the
train pipeline exactly as training would (Mosaic for detection, CutMix/MixUp per batch for
classification), and reports:

- a preview grid PNG: ``n_preview`` samples before (resized only) and after augmentation, with
  boxes and class names (detection) or the (mixed) label (classification) drawn;
- statistics (cvcore.augment.stats.AugmentStats): images and boxes in/out per step, boxes each
  step invalidated, and the label distribution before and after (box counts after Mosaic,
  soft-label mass after CutMix/MixUp);
- with ``materialize=N``, N augmented copies of the whole split as a new snapshot at ``out``
  (cvcore.augment.materialize).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from cvcore.augment.materialize import check_new_folder, materialize_split
from cvcore.augment.mixing import BatchMixer
from cvcore.augment.mosaic import Mosaic, MosaicDataset
from cvcore.augment.pipelines import build_eval_transforms, build_train_transforms, describe_pipeline, train_steps
from cvcore.augment.preview import render_classification, render_detection, write_grid
from cvcore.augment.seeding import SeededDataset, one_thread
from cvcore.augment.stats import AugmentStats, TracedPipeline, class_counts, label_distribution, step_row
from cvcore.config import AugmentConfig, DataConfig
from cvcore.data.snapshot import Snapshot, read_snapshot
from cvcore.data.torch_dataset import ClassificationDataset, DetectionDataset

log = logging.getLogger(__name__)

DEFAULT_IMG_SIZE: int = DataConfig.model_fields["img_size"].default
PREVIEW_PAIRS_PER_ROW = 4


def run_augment_stage(
    snapshot: Snapshot | str | Path,
    config: AugmentConfig,
    *,
    preview_path: str | Path,
    split: str = "train",
    n_preview: int = 8,
    n_stats: int = 256,
    materialize: int = 0,
    out: str | Path | None = None,
    img_size: int = DEFAULT_IMG_SIZE,
    batch_size: int = 32,
) -> AugmentStats:
    """Preview and statistics of ``config`` on ``split``; materialise ``materialize`` copies at ``out``.

    ``n_stats`` samples (at most the split's size) feed the statistics; the first ``n_preview``
    of them the preview. ``batch_size`` is the batch CutMix/MixUp mix within. Copy c of a
    materialised split is epoch c of the seeded train dataset (copy 0 is what the preview shows).
    Raises ValueError for a materialise request without ``out`` (or ``out`` without a request),
    SnapshotError when ``out`` exists already or the split is empty, both before any work.
    """
    snap = snapshot if isinstance(snapshot, Snapshot) else read_snapshot(snapshot)
    if materialize < 0 or (materialize > 0) != (out is not None):
        raise ValueError(
            f"materialize={materialize} and out={out}: give both a positive count and an output folder, or neither"
        )
    if out is not None:  # fail before the work, not after it
        check_new_folder(out)
    if n_preview < 1 or n_stats < 1:
        raise ValueError(f"n_preview and n_stats must be at least 1, got {n_preview} and {n_stats}")
    run = _detection if snap.task == "detection" else _classification
    with one_thread():  # the whole stage is per-sample work (preview drawing included)
        stats = run(
            snap,
            config,
            preview_path=Path(preview_path),
            split=split,
            n_preview=n_preview,
            n_stats=n_stats,
            img_size=img_size,
            batch_size=batch_size,
        )
        if materialize:
            new = materialize_split(
                snap,
                _train_dataset(snap, config, split=split, img_size=img_size),
                split=split,
                copies=materialize,
                out=Path(out),
                provenance={"img_size": img_size, "augment": config.model_dump(mode="json")},
            )
            n_new = new.images.filter(new.images["split"] == split).height
            stats = dataclasses.replace(stats, snapshot=new.path, n_materialized=n_new)
    return stats


def _train_dataset(snap: Snapshot, config: AugmentConfig, *, split: str, img_size: int):
    """The seeded train dataset of ``split``, as training builds it (plain pipeline, no tracing)."""
    transforms = build_train_transforms(config, task=snap.task, img_size=img_size)
    if snap.task == "detection":
        return MosaicDataset.from_config(DetectionDataset(snap, split, transforms), config, img_size=img_size)
    return SeededDataset(ClassificationDataset(snap, split, transforms), seed=config.seed)


def _detection(snap, config, *, preview_path, split, n_preview, n_stats, img_size, batch_size) -> AugmentStats:
    traced = TracedPipeline(train_steps(config, task="detection", img_size=img_size), min_size=config.min_box_size)
    base = DetectionDataset(snap, split, traced)
    ds = MosaicDataset.from_config(base, config, img_size=img_size)
    mosaic_counts = np.zeros(3, dtype=np.int64)  # mosaics, boxes in, boxes out

    def count(m: Mosaic) -> None:
        mosaic_counts[:] += (1, m.boxes_in, len(m.boxes))

    ds.on_mosaic = count
    resize = build_eval_transforms(task="detection", img_size=img_size)
    before, after, tiles, n = [], [], [], 0
    for i in _progress(_subset(len(base), n_stats, config.seed), f"augmenting {split}"):
        raw, aug = base.raw(i), ds[i]
        if raw is None or aug is None:
            continue
        n += 1
        before.append(raw[1]["labels"])
        after.append(aug[1]["labels"])
        if len(tiles) < 2 * n_preview:
            image, target = resize(*raw)
            tiles.append(
                render_detection(
                    image,
                    target["boxes"],
                    target["labels"],
                    class_names=snap.class_names,
                    caption=f"before: image {raw[1]['image_id']}",
                )
            )
            tiles.append(
                render_detection(
                    aug[0], aug[1]["boxes"], aug[1]["labels"], class_names=snap.class_names, caption="after"
                )
            )
    steps = traced.table(first_step=1 if config.mosaic_p > 0 else 0)
    if config.mosaic_p > 0:
        made, b_in, b_out = (int(v) for v in mosaic_counts)
        steps = step_row(0, "Mosaic", images=made, boxes_in=b_in, boxes_out=b_out, invalidated=b_in - b_out).vstack(
            steps
        )
    labels = label_distribution(
        class_counts(before, num_classes=snap.num_classes),
        class_counts(after, num_classes=snap.num_classes),
        class_names=snap.class_names,
    )
    per_image = [np.array([len(b) for b in before]), np.array([len(a) for a in after])]
    summary = {
        "boxes_per_image_before": float(per_image[0].mean()) if n else 0.0,
        "boxes_per_image_after": float(per_image[1].mean()) if n else 0.0,
        "empty_images_before": float((per_image[0] == 0).mean()) if n else 0.0,
        "empty_images_after": float((per_image[1] == 0).mean()) if n else 0.0,
        "mosaic_fraction": float(mosaic_counts[0] / n) if n else 0.0,
    }
    return AugmentStats(
        task="detection",
        split=split,
        n_samples=n,
        steps=steps,
        labels=labels,
        summary=summary,
        pipeline=describe_pipeline(config, task="detection", img_size=img_size, train=True),
        preview_path=write_grid(tiles, preview_path, columns=2 * PREVIEW_PAIRS_PER_ROW),
    )


def _classification(snap, config, *, preview_path, split, n_preview, n_stats, img_size, batch_size) -> AugmentStats:
    traced = TracedPipeline(train_steps(config, task="classification", img_size=img_size))
    base = ClassificationDataset(snap, split, traced)
    ds = SeededDataset(base, seed=config.seed)
    mixer = BatchMixer(config, snap.num_classes)
    resize = build_eval_transforms(task="classification", img_size=img_size)
    names = snap.class_names
    samples = [(i, ds[i]) for i in _progress(_subset(len(base), n_stats, config.seed), f"augmenting {split}")]
    samples = [(i, s) for i, s in samples if s is not None]
    before = class_counts([torch.tensor([s[1] for _, s in samples], dtype=torch.int64)], num_classes=snap.num_classes)
    after = np.zeros(snap.num_classes)
    top_weights: list[torch.Tensor] = []
    mixed_images = {"cutmix": 0, "mixup": 0}
    tiles: list[torch.Tensor] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = mixer.mix(
            torch.stack([s[0] for _, s in chunk]), torch.tensor([s[1] for _, s in chunk], dtype=torch.int64)
        )
        after += batch.targets.sum(0).double().numpy()
        top_weights.append(batch.targets.max(dim=1).values)
        if batch.method != "none":
            mixed_images[batch.method] += len(chunk)
        for (i, (_, label)), image, soft in zip(chunk, batch.images, batch.targets):
            if len(tiles) < 2 * n_preview:
                tiles.append(render_classification(resize(base.raw(i)[0]), caption=f"before: {names[label]}"))
                tiles.append(render_classification(image, caption="after: " + _soft_caption(soft, names)))
    steps = traced.table()
    for name, key, p in (("CutMix", "cutmix", config.cutmix_p), ("MixUp", "mixup", config.mixup_p)):
        if p > 0:
            steps = steps.vstack(
                step_row(steps.height, name, images=mixed_images[key], boxes_in=None, boxes_out=None, invalidated=None)
            )
    top = torch.cat(top_weights) if top_weights else torch.ones(0)
    summary = {
        "mixed_fraction": float((top < 1 - 1e-6).float().mean()) if len(top) else 0.0,
        "mean_top_weight": float(top.mean()) if len(top) else 1.0,
    }
    return AugmentStats(
        task="classification",
        split=split,
        n_samples=len(samples),
        steps=steps,
        summary=summary,
        labels=label_distribution(before, after, class_names=names),
        pipeline=describe_pipeline(config, task="classification", img_size=img_size, train=True),
        preview_path=write_grid(tiles, preview_path, columns=2 * PREVIEW_PAIRS_PER_ROW),
    )


def _subset(n: int, k: int, seed: int) -> list[int]:
    """``min(n, k)`` distinct indices of 0..n-1, a seeded random choice, in increasing order."""
    return sorted(np.random.default_rng(seed).permutation(n)[: min(n, k)].tolist())


def _soft_caption(soft: torch.Tensor, names: list[str]) -> str:
    """The two heaviest classes of a soft label, e.g. ``circle .62 + square .38``."""
    weights, idx = soft.topk(min(2, len(names)))
    parts = [f"{names[int(c)]} {float(w):.2f}".replace(" 0.", " .") for w, c in zip(weights, idx) if float(w) > 0.005]
    return " + ".join(parts)


def _progress(items: list[int], description: str):
    return track(
        items, description=description, console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()
    )
