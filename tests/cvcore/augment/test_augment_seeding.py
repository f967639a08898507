"""Reproducibility: same seed, same samples, also through DataLoader workers."""

from __future__ import annotations

import torch

from cvcore.augment.mosaic import MosaicDataset
from cvcore.augment.pipelines import build_transforms
from cvcore.augment.seeding import SeededDataset, torch_seeded
from cvcore.config import AugmentConfig
from cvcore.data.torch_dataset import ClassificationDataset, DetectionDataset, collate_classification, collate_detection


def batches(dataset, *, workers: int, loader_seed: int, collate):
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(loader_seed),
    )
    return list(loader)


def same_detection_batches(a, b) -> bool:
    return all(
        torch.equal(x, y) and torch.equal(s["boxes"], t["boxes"]) and torch.equal(s["labels"], t["labels"])
        for (xs, ss), (ys, ts) in zip(a, b)
        for x, y, s, t in zip(xs, ys, ss, ts)
    ) and len(a) == len(b)


def test_plain_pipeline_is_reproducible_with_two_workers_seeded_by_the_loader_generator(shapes_detection):
    # Without per-sample seeding, torch seeds each worker from the DataLoader generator
    # (base seed + worker id): the same generator seed gives the same batches.
    ds = DetectionDataset(
        shapes_detection,
        "train",
        build_transforms(AugmentConfig(preset="strong"), task="detection", img_size=48, train=True),
    )
    first = batches(ds, workers=2, loader_seed=3, collate=collate_detection)
    assert same_detection_batches(first, batches(ds, workers=2, loader_seed=3, collate=collate_detection))
    assert not same_detection_batches(first, batches(ds, workers=2, loader_seed=4, collate=collate_detection))


def test_mosaic_samples_are_the_same_with_zero_or_two_workers(shapes_detection):
    pipeline = build_transforms(AugmentConfig(preset="default"), task="detection", img_size=48, train=True)
    ds = MosaicDataset(DetectionDataset(shapes_detection, "train", pipeline), p=0.5, img_size=48, seed=11)
    ds.set_epoch(2)
    in_process = batches(ds, workers=0, loader_seed=0, collate=collate_detection)
    with_workers = batches(ds, workers=2, loader_seed=0, collate=collate_detection)
    assert same_detection_batches(in_process, with_workers)


def test_seeded_dataset_depends_on_seed_epoch_index_only(shapes_classification):
    pipeline = build_transforms(AugmentConfig(preset="strong"), task="classification", img_size=32, train=True)
    ds = SeededDataset(ClassificationDataset(shapes_classification, "train", pipeline), seed=1)
    first = [ds[i][0] for i in (5, 2, 9)]
    torch.manual_seed(123)  # neither the global state nor the order matters
    again = [ds[i][0] for i in (9, 2, 5)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    in_process = batches(ds, workers=0, loader_seed=0, collate=collate_classification)
    with_workers = batches(ds, workers=2, loader_seed=0, collate=collate_classification)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, with_workers))
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], first[0])


def test_torch_seeded_restores_the_generator():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with torch_seeded(42):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), state)
    with torch_seeded(42):
        assert torch.equal(torch.rand(3), a)


def test_one_thread_restores_the_thread_count():
    from cvcore.augment.seeding import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
