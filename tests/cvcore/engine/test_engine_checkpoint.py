"""Atomic checkpoint writes, safe loads, and exact RNG capture/restore."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cvcore.engine.checkpoint import (
    CheckpointError,
    capture_rng,
    copy_atomic,
    ema_weights,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "meta": {"model_name": "x"}, "epoch": 1}


def test_save_is_atomic_and_a_failed_save_keeps_the_previous_file(tmp_path):
    path = save_checkpoint(_state(1.0), tmp_path / "last.pt")
    bad = _state(2.0) | {"not_a_tensor": lambda: None}  # torch.save cannot pickle a lambda
    with pytest.raises(Exception):
        save_checkpoint(bad, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


class Evil:
    """Any class: weights_only loading must refuse to construct it."""


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {}, "obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_load_names_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a cvflow checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        resolve_checkpoint(tmp_path)


def test_run_folder_resolves_to_best_then_last(tmp_path):
    save_checkpoint(_state(0.0), tmp_path / "last.pt")
    assert resolve_checkpoint(tmp_path).name == "last.pt"
    save_checkpoint(_state(0.0), tmp_path / "best.pt")
    assert resolve_checkpoint(tmp_path).name == "best.pt"


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(2), random.seed(4)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    save_checkpoint({"model": {}, "meta": {}, "rng": capture_rng(gen)}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen), np.random.normal())
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"], generator=gen)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen), np.random.normal())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3]) and got[4] == expected[4]


def test_ema_weights_strip_the_averaged_model_wrapper():
    model = torch.nn.Linear(2, 1)
    ema = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
    assert set(ema_weights(ema.state_dict())) == set(model.state_dict())


def test_best_keeps_its_contents_when_last_is_saved_again(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    copy_atomic(tmp_path / "last.pt", tmp_path / "best.pt")  # a hard link here, a copy elsewhere
    save_checkpoint({"epoch": 2}, tmp_path / "last.pt")
    assert torch.load(tmp_path / "best.pt", weights_only=True) == {"epoch": 1}
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left
