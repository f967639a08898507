"""Engine test fixtures."""

from __future__ import annotations

import shutil

import pytest

from cvcore.data.snapshot import read_snapshot


@pytest.fixture
def corrupt_classification(shapes_classification, tmp_path):
    """A copy of the classification snapshot whose first train and val images are not images."""
    dst = tmp_path / "corrupt"
    shutil.copytree(shapes_classification.path, dst)
    snap = read_snapshot(dst)
    for split in ("train", "val"):
        name = snap.split_images(split).get_column("file_name")[0]
        snap.image_path(name).write_bytes(b"this is not a png")
    return snap
