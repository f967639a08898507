"""Warm-up + cosine/step/constant schedules, per optimizer step, and their checkpointable state."""

from __future__ import annotations

import io
import math

import pytest
import torch

from cvcore.config import TrainConfig
from cvcore.engine.schedule import WARMUP_START_FACTOR, build_optimizer, build_scheduler


def _lrs(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    sched = build_scheduler(opt, config, steps_per_epoch=steps_per_epoch)
    out = []
    for _ in range(config.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_linear_warmup_then_cosine_to_zero():
    cfg = TrainConfig(epochs=3, lr=0.1, warmup_epochs=1, scheduler="cosine")
    lrs = _lrs(cfg, steps_per_epoch=4)
    # warm-up: 4 steps from 0.1 * 0.01 linearly up to 0.1
    assert lrs[0] == pytest.approx(0.1 * WARMUP_START_FACTOR)
    assert lrs[:4] == sorted(lrs[:4])
    assert lrs[4] == pytest.approx(0.1)
    # cosine over the remaining 8 steps: lr_t = 0.1 * (1 + cos(pi t / 8)) / 2
    for t, lr in enumerate(lrs[4:]):
        assert lr == pytest.approx(0.1 * (1 + math.cos(math.pi * t / 8)) / 2)


def test_fractional_warmup_counts_steps():
    lrs = _lrs(TrainConfig(epochs=2, lr=1.0, warmup_epochs=0.5, scheduler="constant"), steps_per_epoch=4)
    assert lrs[0] == pytest.approx(WARMUP_START_FACTOR)
    assert lrs[2:] == pytest.approx([1.0] * 6)


def test_step_schedule_without_warmup():
    lrs = _lrs(
        TrainConfig(epochs=4, lr=1.0, warmup_epochs=0, scheduler="step", step_size=2, gamma=0.5), steps_per_epoch=3
    )
    assert lrs == pytest.approx([1.0] * 6 + [0.5] * 6)


def test_sgd_uses_momentum_and_config_weight_decay():
    opt = build_optimizer(
        [torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="sgd", lr=0.5, momentum=0.8, weight_decay=0.01)
    )
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["weight_decay"] == 0.01


def test_scheduler_state_loads_with_weights_only_and_continues_identically():
    cfg = TrainConfig(epochs=3, lr=0.1, warmup_epochs=1)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    for _ in range(7):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched2 = build_scheduler(opt2, cfg, steps_per_epoch=5)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    for _ in range(8):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step(), sched.step(), opt2.step(), sched2.step()
