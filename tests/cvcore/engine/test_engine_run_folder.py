"""Run folders: only cvflow's are written into, and one training at a time holds one (fcntl.flock)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cvcore.config import RunConfig
from cvcore.engine.locks import LOCK_FILE, FolderInUse, check_not_in_use, folder_lock
from cvcore.engine.run import RUN_MARKER, check_run_folder, claim_run_folder, train_run

REPO = Path(__file__).resolve().parents[3]


def _config(snapshot) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"snapshot": str(snapshot.path), "img_size": 16},
            "model": {"name": "resnet18"},
            "train": {"epochs": 1, "batch_size": 32},
        }
    )


def test_a_folder_of_user_files_is_refused_and_left_as_it_was(shapes_classification, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"my": "results"}')
    (folder / "config.yaml").write_text("mine: true\n")
    with pytest.raises(
        FileExistsError, match=f"{folder} holds files \\(config.yaml, metrics.json\\) but is not a cvflow run folder"
    ):
        train_run(_config(shapes_classification), folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "metrics.json",
    ]  # untouched, no marker, no lock file
    assert (folder / "metrics.json").read_text() == '{"my": "results"}'


def test_a_new_or_empty_folder_becomes_a_run_folder(tmp_path):
    claim_run_folder(tmp_path / "new", resume=False)
    (tmp_path / "empty").mkdir()
    claim_run_folder(tmp_path / "empty", resume=False)
    for name in ("new", "empty"):
        assert (tmp_path / name / RUN_MARKER).is_file()
        check_run_folder(tmp_path / name, resume=False)  # a run folder without last.pt: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_run_folder(tmp_path / "file", resume=False)


def test_a_folder_held_by_another_training_is_refused_in_one_line(shapes_classification, tmp_path):
    out = tmp_path / "run"
    claim_run_folder(out, resume=False)
    ready = tmp_path / "locked"
    holder = textwrap.dedent(f"""
        import sys, time, pathlib
        sys.path.insert(0, {str(REPO)!r})
        from cvcore.engine.locks import folder_lock
        with folder_lock({str(out)!r}, what="training"):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(FolderInUse) as info:
            train_run(_config(shapes_classification), out)
        message = str(info.value)
        assert "\n" not in message and f"{out} is in use by another run (training pid {proc.pid})" in message
        assert (
            not (out / "last.pt").exists() and not (out / "config.yaml").exists()
        )  # the second training wrote nothing
    finally:
        proc.kill()
        proc.wait()
    check_not_in_use(out, what="training")  # the kernel released the killed holder's lock


def test_the_lock_is_held_for_the_whole_training_and_released_after(shapes_classification, tmp_path):
    out = tmp_path / "run"
    seen = []

    class Probe:
        def on_epoch_end(self, epoch, metrics):
            with pytest.raises(FolderInUse):
                check_not_in_use(out, what="training")
            seen.append(epoch)

    train_run(_config(shapes_classification), out, callbacks=[Probe()])
    assert seen == [1]
    check_not_in_use(out, what="training")
    with folder_lock(out, what="training"):  # free again
        pass


def test_a_killed_trainings_temporaries_are_removed_under_the_lock(shapes_classification, tmp_path):
    out = tmp_path / "run"
    claim_run_folder(out, resume=False)
    orphan = out / ".last.pt.abc123_x.tmp"  # what save_checkpoint leaves when killed mid-write
    orphan.write_bytes(b"half a checkpoint")
    user = out / "notes.tmp"
    user.write_text("not ours")
    train_run(_config(shapes_classification), out)
    assert not orphan.exists() and user.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_folder_lock_is_exclusive_within_a_process_too(tmp_path):
    with folder_lock(tmp_path, what="evaluation"):
        with pytest.raises(FolderInUse, match="one evaluation per folder at a time"):
            with folder_lock(tmp_path, what="evaluation"):
                pass
    assert (tmp_path / LOCK_FILE).read_text() == f"evaluation pid {os.getpid()}\n"
