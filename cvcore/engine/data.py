"""DataLoaders for a training run: snapshot splits + augmentation pipelines, seeded.

Reproducibility, in three parts:

- per-sample augmentation (and Mosaic) draws from ``(augment.seed, epoch, index)``
  (cvcore.augment.seeding.SeededDataset / MosaicDataset), so samples do not depend on the
  number of DataLoader workers or on the order they are asked for;
- CutMix/MixUp (in the collate) reseed their mixer from ``(augment.seed, epoch, batch number)``
  for every batch, so mixing too is independent of the workers and repeats exactly on resume;
- the shuffling order is ``torch.utils.data.DistributedSampler``'s: a permutation drawn from
  ``train.seed + epoch``, of which rank ``r`` of ``W`` takes positions ``r, r + W, ...`` (one
  process: ``W = 1``, the whole permutation), so a run on ``W`` processes with the same global
  batch sees the same batches as a run on one (cvcore.engine.distributed);
- the workers' base seeds come from the loader's own ``torch.Generator`` (seeded with
  ``train.seed``, saved and restored by checkpoints).

With ``data.num_workers > 0`` the workers are persistent (started once, prefetching the next
batches while the model trains, not restarted every epoch). The ``set_epoch`` calls the engine
makes in the main process do not reach their copies of the dataset and collate, so the epoch
travels with the work instead: the sampler yields ``(epoch, index)`` (:class:`EpochSampler`),
the dataset wrapper sets its epoch (and Mosaic's on/off for ``close_mosaic``) from it
(:class:`EpochDataset`) and tags each sample with it, and the collate sets its own from the
tags (:class:`EpochCollate`). Samples therefore stay functions of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from cvcore.config import AugmentConfig, RunConfig
from cvcore.data.snapshot import Snapshot
from cvcore.data.torch_dataset import collate_classification, collate_detection, dataset_for
from cvcore.engine.device import resolve_device


@dataclass(frozen=True)
class Loaders:
    """The train and validation loaders of a run; unpacks as ``train, val = make_loaders(...)``."""

    train: DataLoader
    val: DataLoader

    def __iter__(self) -> Iterator[DataLoader]:
        return iter((self.train, self.val))


def make_loaders(snapshot: Snapshot, config: RunConfig, *, rank: int = 0, world_size: int = 1) -> Loaders:
    """Train loader (augmented, shuffled, seeded) and val loader (eval transforms, in order).

    Detection with ``augment.mosaic_p > 0`` wraps the train set in Mosaic; classification with
    ``cutmix_p``/``mixup_p > 0`` mixes each train batch in the collate (labels become
    probabilities float32[B, K]). Memory is pinned when the run's device is CUDA.

    ``rank`` of ``world_size`` (a data-parallel run): the train loader yields this rank's share,
    ``train.batch_size / world_size`` images per batch (``batch_size`` is the global batch; it
    must divide evenly), and the val loader's batches are that size too. ValueError otherwise.
    """
    from cvcore.augment.pipelines import build_transforms  # deferred: augment imports are heavy-ish

    task, aug, tc = snapshot.task, config.augment, config.train
    if tc.batch_size % world_size:
        raise ValueError(
            f"train.batch_size {tc.batch_size} is the global batch and must split evenly over {world_size} devices"
        )
    per_device = tc.batch_size // world_size
    img_size = config.data.img_size
    train_tf = build_transforms(aug, task=task, img_size=img_size, train=True)
    eval_tf = build_transforms(aug, task=task, img_size=img_size, train=False)
    train_set: Dataset = dataset_for(snapshot, config.data.train_split, train_tf)
    val_set = dataset_for(snapshot, config.data.val_split, eval_tf)
    collate: Callable[[list], Any] = collate_detection if task == "detection" else collate_classification
    train_collate = collate
    if task == "detection" and aug.mosaic_p > 0:
        from cvcore.augment.mosaic import MosaicDataset

        train_set = MosaicDataset.from_config(train_set, aug, img_size=img_size)
    else:
        from cvcore.augment.seeding import SeededDataset

        train_set = SeededDataset(train_set, seed=aug.seed)
    if task == "classification" and (aug.cutmix_p > 0 or aug.mixup_p > 0):
        train_collate = MixingCollate(aug, num_classes=snapshot.num_classes, rank=rank, world_size=world_size)

    pin = resolve_device(tc.device).type == "cuda"
    workers = config.data.num_workers
    # Every process uses the sampler (one process: world_size 1), so 1 and W processes shuffle alike.
    sampler: Any = DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=tc.seed, drop_last=True
    )
    if workers > 0:  # persistent workers: the epoch travels with the indices (module docstring)
        mosaic_until = tc.epochs - aug.close_mosaic if hasattr(train_set, "enabled") else None
        train_set, sampler, train_collate = (
            EpochDataset(train_set, mosaic_until=mosaic_until),
            EpochSampler(sampler),
            EpochCollate(train_collate),
        )
    train = DataLoader(
        train_set,
        batch_size=per_device,
        sampler=sampler,
        # A last batch of one image breaks batch-norm in train mode; drop the ragged tail.
        drop_last=len(sampler) > per_device,
        num_workers=workers,
        collate_fn=train_collate,
        generator=torch.Generator().manual_seed(tc.seed),
        worker_init_fn=seed_worker,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )
    val = DataLoader(
        val_set, batch_size=per_device, shuffle=False, num_workers=workers, collate_fn=collate, pin_memory=pin
    )
    return Loaders(train=train, val=val)


class EpochSampler:
    """A sampler yielding ``(epoch, index)``: ``sampler``'s indices tagged with the current epoch."""

    def __init__(self, sampler: Any):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochDataset(Dataset):
    """``dataset[(epoch, index)]`` → ``(epoch, dataset[index])``, with ``dataset.set_epoch(epoch)``
    first when the epoch changed (and Mosaic's ``enabled = epoch <= mosaic_until`` when given).

    What a persistent DataLoader worker needs to follow the epochs (the module docstring).
    """

    def __init__(self, dataset: Dataset, *, mosaic_until: int | None = None):
        self.dataset, self.mosaic_until, self.epoch = dataset, mosaic_until, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self.mosaic_until is not None:
            self.dataset.enabled = epoch <= self.mosaic_until

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        epoch, index = key
        if epoch != self.epoch:
            self.set_epoch(epoch)
        return epoch, self.dataset[index]


class EpochCollate:
    """Collate ``(epoch, sample)`` pairs with ``collate``, telling it the epoch first (MixingCollate)."""

    def __init__(self, collate: Callable[[list], Any]):
        self.collate = collate

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.collate, "set_epoch"):
            self.collate.set_epoch(epoch)

    def __call__(self, batch: list[tuple[int, Any]]) -> Any:
        if batch:
            self.set_epoch(batch[0][0])
        return self.collate([sample for _, sample in batch])


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the torch seed the loader gave it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class MixingCollate:
    """Collate a classification batch, then mix it (CutMix/MixUp) into probability targets.

    The mixer's generator is reseeded for every batch from ``(config.seed, epoch, batch
    number)``, so mixing is the same with any number of workers and after a resume. The batch
    number is reconstructed from the worker's id and its count of batches, since a DataLoader
    hands the batches of an epoch to its workers in turn (worker ``k`` gets ``k, k + W, ...``).
    In a data-parallel run the number is made global, ``number * world_size + rank``, so ranks
    draw different mixes (each mixes within its own share of the global batch).
    A class, not a closure, so it pickles into DataLoader worker processes.
    """

    def __init__(self, config: AugmentConfig, *, num_classes: int, rank: int = 0, world_size: int = 1):
        from cvcore.augment.mixing import BatchMixer

        self.seed = config.seed
        self.rank, self.world_size = rank, world_size
        self.mixer = BatchMixer(config, num_classes)
        self.epoch = 0
        self._counted: tuple[int, int] = (-1, 0)  # (epoch, batches collated in this process)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        done = self._counted[1] if self._counted[0] == self.epoch else 0
        self._counted = (self.epoch, done + 1)
        images, labels = collate_classification(batch)
        if len(images) == 0:
            return images, labels
        number = (worker + workers * done) * self.world_size + self.rank
        seed = int(
            np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, number]).generate_state(1, np.uint64)[0] >> 1
        )
        self.mixer.load_state_dict({"generator": torch.Generator().manual_seed(seed).get_state()})
        return self.mixer(images, labels)
