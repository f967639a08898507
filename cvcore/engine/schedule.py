"""Optimizer and learning-rate schedule from a TrainConfig.

The schedule steps once per optimizer step (not per epoch) so a fractional warm-up
(``warmup_epochs: 0.5``) works and the cosine curve is smooth on short runs. It is built from
``torch.optim.lr_scheduler`` classes only (LinearLR, CosineAnnealingLR, StepLR, SequentialLR):
their state dicts are plain numbers, so checkpoints load with ``weights_only=True`` (a LambdaLR
would carry a function).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR, StepLR

from cvcore.config import TrainConfig

# Warm-up starts at this fraction of the base LR (0 would make the first step a no-op).
WARMUP_START_FACTOR = 0.01


def build_optimizer(
    param_groups: Iterable[dict] | Iterable[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over ``param_groups``.

    Groups may carry their own ``lr``/``weight_decay`` (e.g. a lower backbone LR from
    cvcore.models.finetune.param_groups); the config's values are the defaults for the rest.
    """
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        param_groups,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int) -> LRScheduler:
    """Warm-up (linear, ``warmup_epochs``) then cosine to 0, step decay, or constant; per step.

    ``steps_per_epoch``: optimizer steps in one epoch (len of the train loader), at least 1.
    The step schedule multiplies the LR by ``gamma`` every ``step_size`` epochs counted from the
    end of the warm-up (SequentialLR restarts the main schedule at the milestone).
    """
    steps_per_epoch = max(1, steps_per_epoch)
    total = config.epochs * steps_per_epoch
    warmup = min(total - 1, math.ceil(config.warmup_epochs * steps_per_epoch))
    remaining = total - max(warmup, 0)
    if config.scheduler == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(1, remaining), eta_min=0.0)
    elif config.scheduler == "step":
        main = StepLR(optimizer, step_size=config.step_size * steps_per_epoch, gamma=config.gamma)
    else:
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
