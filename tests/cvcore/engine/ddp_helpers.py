"""Entry points for data-parallel engine tests: module-level, so launched (spawned) ranks import them."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch import nn

from cvcore.config import RunConfig
from cvcore.data.snapshot import read_snapshot
from cvcore.engine.data import make_loaders
from cvcore.engine.distributed import run_rank
from cvcore.engine.train import fit


class NoNormClassifier(nn.Module):
    """conv-ReLU-conv-ReLU, global pooling, linear: logits[B, K]. No batch-norm, so a gradient
    of a global batch does not depend on how the batch is split over devices."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def no_norm_classifier(seed: int = 0, num_classes: int = 4) -> NoNormClassifier:
    torch.manual_seed(seed)
    return NoNormClassifier(num_classes)


class StopAfter:
    """Callback: raise KeyboardInterrupt after epoch ``epoch``'s checkpoint is written (a kill)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"stopped after epoch {epoch}")


def fit_rank(
    snapshot: str, config: dict[str, Any], out_dir: str, resume: str | None, callbacks: tuple = (), model_seed: int = 0
) -> Any:
    """One rank: the same model, loaders for this rank, ``fit``; rank 0 returns (history, metrics.json)."""

    def work(d):
        run_config = RunConfig.model_validate(config)
        loaders = make_loaders(read_snapshot(snapshot), run_config, rank=d.rank, world_size=d.world_size)
        result = fit(
            no_norm_classifier(model_seed), loaders.train, loaders.val, config=run_config, task="classification",
            out_dir=out_dir, callbacks=callbacks, resume=resume, meta={"model_name": "no_norm"}, dist=d,
        )  # fmt: skip
        return result.history if d.is_main else None

    return run_rank(work, device="cpu", timeout_s=60)


def kill_self_rank(snapshot: str, config: dict[str, Any], out_dir: str, victim: int, at_step: int) -> None:
    """Rank ``victim`` is SIGKILLed (no Python error, no cleanup) at its ``at_step``-th training step."""

    def work(d):
        run_config = RunConfig.model_validate(config)
        loaders = make_loaders(read_snapshot(snapshot), run_config, rank=d.rank, world_size=d.world_size)
        model = no_norm_classifier()
        steps = {"n": 0}

        def hook(module, args):
            if module.training:
                steps["n"] += 1
                if d.rank == victim and steps["n"] == at_step:
                    os.kill(os.getpid(), signal.SIGKILL)

        model.register_forward_pre_hook(hook)
        fit(model, loaders.train, loaders.val, config=run_config, task="classification", out_dir=out_dir, dist=d)

    run_rank(work, device="cpu", timeout_s=60)
