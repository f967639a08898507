"""Resuming a run into a folder that holds another run is refused: the resumed run would replace
that run's checkpoints, config, metrics and history (``train --resume A --out B``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cvcore.engine.checkpoint import LAST
from cvcore.engine.run import RUN_MARKER, check_run_folder, train_run


def a_run(folder: Path, shapes_classification) -> Path:
    """A run folder as training leaves it: marker, a loadable last.pt/best.pt, metrics."""
    from cvcore.config import RunConfig
    from cvcore.engine.checkpoint import save_checkpoint
    from cvcore.models import build_model

    folder.mkdir(parents=True)
    (folder / RUN_MARKER).write_text('{"cvflow": "run folder", "format": 1}\n')
    config = RunConfig().model_dump(mode="json")
    config["data"] |= {"snapshot": str(shapes_classification.path), "img_size": 16}
    config["model"] |= {"name": "resnet18"}
    meta = {
        "model_name": "resnet18", "task": "classification", "num_classes": 4, "class_names": shapes_classification.class_names,
        "img_size": 16, "options": {}, "config": config,
    }  # fmt: skip
    state = {"model": build_model("resnet18", num_classes=4, img_size=16).state_dict(), "meta": meta, "ema": None}
    for name in (LAST, "best.pt"):
        save_checkpoint(state, folder / name)
    (folder / "metrics.json").write_text('{"best_epoch": 3}\n')
    return folder


def contents(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_check_run_folder_refuses_another_runs_checkpoint(shapes_classification, tmp_path):
    a, b = a_run(tmp_path / "a", shapes_classification), a_run(tmp_path / "b", shapes_classification)
    with pytest.raises(
        FileExistsError, match=f"{b} holds another run \\(last.pt\\); resuming {a / LAST} there would overwrite it"
    ):
        check_run_folder(b, resume=a / LAST)
    check_run_folder(a, resume=a / LAST)  # its own run: fine
    check_run_folder(a, resume=a / "best.pt")
    check_run_folder(tmp_path / "new", resume=a / LAST)  # continuing into a new folder: fine
    check_run_folder(b, resume=True)  # a caller that does not name the checkpoint keeps the old rule


def test_train_run_leaves_the_other_run_untouched(shapes_classification, tmp_path):
    from cvcore.config import PartialRunConfig

    a, b = a_run(tmp_path / "a", shapes_classification), a_run(tmp_path / "b", shapes_classification)
    before = contents(b)
    config = PartialRunConfig.model_validate(
        {"data": {"snapshot": shapes_classification.path, "img_size": 16}, "model": {"name": "resnet18"}}
    )
    with pytest.raises(FileExistsError, match="holds another run"):
        train_run(config, b, resume=a / LAST)
    assert contents(b) == before


# The command's check (before any flow) is tested in tests/flows/test_cli_overwrite.py.
