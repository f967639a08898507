"""make_loaders: pipelines, Mosaic/CutMix wiring, seeded and worker-count-independent batches."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from cvcore.augment.mosaic import MosaicDataset
from cvcore.config import RunConfig
from cvcore.engine import data as engine_data
from cvcore.engine.data import MixingCollate, make_loaders


def _config(**augment) -> RunConfig:
    return RunConfig.model_validate({"data": {"img_size": 32}, "augment": augment, "train": {"batch_size": 8}})


def test_classification_batches_are_seeded_and_mixed_into_probabilities(shapes_classification):
    config = _config(cutmix_p=1.0)
    a = next(iter(make_loaders(shapes_classification, config).train))
    b = next(iter(make_loaders(shapes_classification, config).train))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seed, same first batch
    images, targets = a
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).any()  # CutMix mixed at least one image's label


def test_val_loader_keeps_order_and_eval_transforms(shapes_classification):
    val = make_loaders(shapes_classification, _config()).val
    labels = torch.cat([y for _, y in val])
    assert labels.tolist() == val.dataset.labels.tolist()  # in dataset order, hard labels


def test_detection_mosaic_wraps_the_train_set(shapes_detection):
    loaders = make_loaders(shapes_detection, _config(mosaic_p=0.5))
    assert isinstance(loaders.train.dataset, MosaicDataset)
    images, targets = next(iter(loaders.train))
    assert all(im.shape == (3, 32, 32) for im in images)
    assert all(t["boxes"].shape[1] == 4 and len(t["boxes"]) == len(t["labels"]) for t in targets)


def test_mixing_does_not_depend_on_the_number_of_workers(monkeypatch, shapes_classification):
    """Batch n of an epoch is mixed the same whether one process or two workers collate it."""
    dataset = make_loaders(shapes_classification, _config()).train.dataset
    batches = [[dataset[i] for i in range(s, s + 4)] for s in range(0, 16, 4)]
    config = _config(cutmix_p=0.5, mixup_p=0.5).augment

    single = MixingCollate(config, num_classes=4)
    single.set_epoch(3)
    monkeypatch.setattr(engine_data, "get_worker_info", lambda: None)
    expected = [single(b) for b in batches]

    workers = [MixingCollate(config, num_classes=4) for _ in range(2)]
    got = []
    for n, batch in enumerate(batches):  # the DataLoader hands batches to workers in turn
        worker = workers[n % 2]
        worker.set_epoch(3)
        monkeypatch.setattr(engine_data, "get_worker_info", lambda n=n: SimpleNamespace(id=n % 2, num_workers=2))
        got.append(worker(batch))
    for (ei, et), (gi, gt) in zip(expected, got):
        assert torch.equal(ei, gi) and torch.equal(et, gt)
    # and another epoch mixes differently
    single.set_epoch(4)
    monkeypatch.setattr(engine_data, "get_worker_info", lambda: None)
    assert not all(torch.equal(single(b)[1], e[1]) for b, e in zip(batches, expected))


def _epochs_of_batches(loader, config, epochs):
    from cvcore.engine.train import _set_epoch

    out = []
    for epoch in range(1, epochs + 1):
        _set_epoch(loader, epoch, config)
        out.append(list(loader))
    return out


def test_persistent_workers_follow_the_epochs_like_the_main_process(shapes_classification, shapes_detection):
    """Workers started once (persistent) still make each epoch's samples, mixes and Mosaic on/off:
    the batches equal those of num_workers=0 epoch by epoch."""
    cls = RunConfig.model_validate(
        {"data": {"img_size": 32}, "augment": {"cutmix_p": 0.5}, "train": {"batch_size": 8, "epochs": 3}}
    )
    det = RunConfig.model_validate(
        {
            "data": {"img_size": 32},
            "augment": {"mosaic_p": 1.0, "close_mosaic": 1},
            "train": {"batch_size": 8, "epochs": 3},
        }
    )
    for snapshot, config in ((shapes_classification, cls), (shapes_detection, det)):
        main = make_loaders(snapshot, config).train
        pooled = make_loaders(
            snapshot, config.model_copy(update={"data": config.data.model_copy(update={"num_workers": 2})})
        ).train
        assert pooled.persistent_workers and not main.persistent_workers
        a, b = _epochs_of_batches(main, config, 3), _epochs_of_batches(pooled, config, 3)
        assert len(a) == len(b) == 3
        for epoch_a, epoch_b in zip(a, b):
            assert len(epoch_a) == len(epoch_b)
            for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b):
                if snapshot is shapes_classification:
                    assert torch.equal(xa, xb) and torch.equal(ya, yb)
                else:
                    assert all(torch.equal(i, j) for i, j in zip(xa, xb))
                    assert all(
                        torch.equal(s["boxes"], t["boxes"]) and torch.equal(s["labels"], t["labels"])
                        for s, t in zip(ya, yb)
                    )
        first = [x if torch.is_tensor(x) else torch.stack(x) for x, _ in a[0]]
        second = [x if torch.is_tensor(x) else torch.stack(x) for x, _ in a[1]]
        assert not all(torch.equal(x, y) for x, y in zip(first, second))  # the epochs differ
