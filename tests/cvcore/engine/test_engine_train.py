"""fit: run folder, exact kill-and-resume, NaN guard, soft targets, early stopping, callbacks."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvcore.config import RunConfig
from cvcore.engine.checkpoint import load_checkpoint
from cvcore.engine.data import make_loaders
from cvcore.engine.train import NonFiniteLossError, compute_loss, fit

from engine_helpers import tiny_classifier


def _config(**train) -> RunConfig:
    # The default augmentation preset plus CutMix, so resume must also repeat the augmentation.
    return RunConfig.model_validate(
        {
            "data": {"img_size": 32},
            "augment": {"cutmix_p": 0.5},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "warmup_epochs": 0.5} | train,
        }
    )


def _fit(snapshot, config, out_dir, *, model=None, **kwargs):
    train, val = make_loaders(snapshot, config)
    return fit(
        model or tiny_classifier(),
        train,
        val,
        config=config,
        task="classification",
        out_dir=out_dir,
        meta={"model_name": "tiny"},
        **kwargs,
    )


class Recorder:
    def __init__(self):
        self.steps, self.epochs, self.result = [], [], None

    def on_step(self, epoch, step, logs):
        self.steps.append((epoch, step, logs))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))

    def on_fit_end(self, result):
        self.result = result


class KillAfter:
    """Simulates a killed run: raises once epoch ``k``'s checkpoint is on disk."""

    def __init__(self, k: int):
        self.k = k

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.k:
            raise KeyboardInterrupt(f"killed after epoch {epoch}")


def test_fit_fills_the_run_folder(shapes_classification, tmp_path):
    rec = Recorder()
    result = _fit(shapes_classification, _config(epochs=2), tmp_path, callbacks=[rec])
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.pt", "metrics.json", "history.parquet"}
    history = pl.read_parquet(tmp_path / "history.parquet")
    assert history.get_column("epoch").to_list() == [1, 2]
    assert {"train/loss", "lr", "train/images_per_s", "val/accuracy", "val/macro_f1", "val/loss"} <= set(
        history.columns
    )
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metric"] == "val/accuracy" and report["best_epoch"] == result.best_epoch
    cpu = history.get_column("train/cpu_time_s")  # CPU seconds of each epoch's training pass
    assert cpu.null_count() == 0 and (cpu > 0).all() and report["train_cpu_time_s"] == pytest.approx(cpu.sum())
    assert (
        report["final"] == result.final_metrics == {k: v for k, v in history.row(1, named=True).items() if k != "epoch"}
    )
    state = load_checkpoint(tmp_path / "last.pt")  # weights_only=True
    assert state["epoch"] == 2 and state["meta"]["task"] == "classification" and state["meta"]["model_name"] == "tiny"
    assert state["meta"]["config"]["train"]["epochs"] == 2
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "rng", "loop"} <= set(state)
    # callbacks: one on_step per batch (64 images / 16), flat float metrics per epoch, the result
    assert [(e, s) for e, s, _ in rec.steps] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4)]
    assert all(isinstance(v, float) for _, m in rec.epochs for v in m.values())
    assert rec.result == result and result.best_metric == result.best_metrics["val/accuracy"]


def test_kill_and_resume_gives_the_weights_of_a_straight_run(shapes_classification, tmp_path):
    config = _config(ema_decay=0.9)
    straight = _fit(shapes_classification, config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _fit(shapes_classification, config, tmp_path / "killed", callbacks=[KillAfter(1)])
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    # A fresh process would rebuild the model and loaders from scratch: do the same here.
    resumed = _fit(
        shapes_classification,
        config,
        tmp_path / "killed",
        model=tiny_classifier(seed=123),
        resume=tmp_path / "killed" / "last.pt",
    )
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    timing = ["train/time_s", "train/images_per_s", "train/cpu_time_s"]
    assert resumed.history.drop(timing).equals(straight.history.drop(timing))


def test_kill_and_resume_is_exact_with_persistent_workers(shapes_classification, tmp_path):
    """Two persistent DataLoader workers (started once per loader): resume still repeats the run."""
    config = _config(epochs=2)
    config = config.model_copy(update={"data": config.data.model_copy(update={"num_workers": 2})})
    straight = _fit(shapes_classification, config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _fit(shapes_classification, config, tmp_path / "killed", callbacks=[KillAfter(1)])
    resumed = _fit(
        shapes_classification,
        config,
        tmp_path / "killed",
        model=tiny_classifier(seed=123),
        resume=tmp_path / "killed" / "last.pt",
    )
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"model.{key} differs after resume"
    timing = ["train/time_s", "train/images_per_s", "train/cpu_time_s"]
    assert resumed.history.drop(timing).equals(straight.history.drop(timing))


def test_nan_loss_stops_with_epoch_and_step(shapes_classification, tmp_path):
    class NaNAtThirdCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = tiny_classifier(), 0

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out * math.nan if self.calls == 3 else out

    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3: the training loss is nan"):
        _fit(shapes_classification, _config(), tmp_path, model=NaNAtThirdCall())


def test_cross_entropy_takes_probability_targets():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    soft = torch.softmax(torch.randn(4, 3), 1)
    loss, parts = compute_loss(model, x, soft, task="classification")
    expected = -(soft * F.log_softmax(model(x), 1)).sum(1).mean()
    assert parts == {} and torch.allclose(loss, expected)
    hard, _ = compute_loss(model, x, torch.tensor([0, 2, 1, 1]), task="classification")
    assert torch.allclose(hard, F.cross_entropy(model(x), torch.tensor([0, 2, 1, 1])))


def test_early_stopping_when_the_metric_stops_improving(shapes_classification, tmp_path):
    # A linear model without batch norm and a negligible LR: accuracy never improves after epoch 1.
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 4))
    result = _fit(shapes_classification, _config(epochs=5, lr=1e-12, early_stopping_patience=2), tmp_path, model=model)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert result.history.height == 3


def test_an_undecodable_image_does_not_stop_training(corrupt_classification, tmp_path):
    result = _fit(corrupt_classification, _config(epochs=1), tmp_path)
    assert result.epochs_run == 1
    assert result.final_metrics["train/images"] == 64 - 1  # the broken image was dropped


def test_a_train_split_of_only_undecodable_images_fails_naming_the_split_and_its_first_files(
    shapes_classification, tmp_path
):
    import re
    import shutil

    from cvcore.data.snapshot import read_snapshot

    shutil.copytree(shapes_classification.path, tmp_path / "broken")
    snap = read_snapshot(tmp_path / "broken")
    names = snap.split_images("train").get_column("file_name").to_list()
    for i, name in enumerate(names):
        snap.image_path(name).write_bytes(b"" if i % 2 else b"this is not a png")  # zero-byte and not-an-image files
    first = [str(snap.image_path(n)) for n in names[:3]]
    with pytest.raises(ValueError) as info:
        _fit(snap, _config(epochs=2), tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"split 'train' of {snap.path}: none of its {len(names)} images could be read, e.g. ")
    assert all(re.search(rf"{re.escape(f)} \(UnidentifiedImageError: ", message) for f in first)
    assert str(snap.image_path(names[3])) not in message  # the first three, not every file
    assert not (tmp_path / "run" / "last.pt").exists()  # no checkpoint of an epoch trained on nothing


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_gradients_matches_torch_clip_grad_norm(max_norm):
    from cvcore.engine.train import clip_gradients

    torch.manual_seed(0)
    a, b = nn.Linear(6, 3), nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    for p, q in zip(a.parameters(), b.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    expected = nn.utils.clip_grad_norm_(list(a.parameters()), max_norm)
    got = clip_gradients(list(b.parameters()), max_norm)
    assert got == pytest.approx(float(expected))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
