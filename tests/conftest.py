"""Shared fixtures: small built-in datasets, made once per test session."""

from __future__ import annotations

import os

# Tests run two at a time (pytest -n 2) on 2 cores: one torch thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing in the tests downloads: pretrained="torchvision" without a cached file fails in one line.
os.environ["CVFLOW_OFFLINE"] = "1"

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shapes_detection(tmp_path_factory):
    """A tiny detection snapshot: 24 train / 8 val images of 64 px."""
    from cvcore.data.synthetic import make_shapes_detection

    return make_shapes_detection(
        tmp_path_factory.mktemp("data") / "shapes", n_train=24, n_val=8, image_size=64, min_size=8, max_size=28, seed=0
    )


@pytest.fixture(scope="session")
def shapes_classification(tmp_path_factory):
    """A tiny classification snapshot: 64 train / 16 val images of 32 px."""
    from cvcore.data.synthetic import make_shapes_classification

    return make_shapes_classification(tmp_path_factory.mktemp("data") / "shapes-cls", n_train=64, n_val=16, seed=0)
