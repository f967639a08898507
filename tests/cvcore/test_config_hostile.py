"""A run.yaml that is not one fails in one line at once: a YAML alias bomb, a huge file, a device."""

from __future__ import annotations

import os
import time

import pytest

from cvcore.config import load_config


def test_a_yaml_alias_bomb_is_refused_in_a_moment(tmp_path):
    """Eight levels of ten aliases each are 10^8 values once expanded: validation walked them for
    tens of seconds (one more level, minutes and gigabytes)."""
    lines = ["model:", "  name: resnet18", "  options:", '    l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"    l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.process_time()
    with pytest.raises(
        ValueError, match=f"^{path}: expands to over 100000 values \\(YAML aliases\\), not a run config$"
    ):
        load_config(path)
    assert time.process_time() - start < 5


def test_a_small_config_with_aliases_still_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: &n 3\n  warmup_epochs: *n\nmodel:\n  name: resnet18\n")
    assert load_config(path).train.epochs == 3


def test_a_device_a_fifo_or_a_huge_file_is_not_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(ValueError, match="not a regular file"):
            load_config(path)  # /dev/zero was read until memory ran out; a FIFO blocked
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ValueError, match="larger than 1048576 bytes, not a run config"):
        load_config(huge)
