"""`cvflow train --devices 2` on CPU: two gloo processes launched by torchrun's launcher, end to end.

The pipeline around the training is the same (MLflow run, predictions in this one process from the
DDP checkpoint, a registered version); a rank killed mid-run fails the command with that rank's
cause within seconds, and ``--resume`` continues the run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import polars as pl
import psutil
from typer.testing import CliRunner

from cvcore import schema
from flows.cli import app

runner = CliRunner()


def _text(result) -> str:
    return " ".join(result.output.split())


def _args(snapshot, out, *extra: str) -> list[str]:
    return ["train", "--quiet", "--data", str(snapshot.path), "--model", "resnet18", "--out", str(out), "--img-size", "16",
            "--batch-size", "16", "--device", "cpu", "--devices", "2", *extra]  # fmt: skip


def test_two_processes_train_register_and_predict_in_one(shapes_classification, tmp_path):
    from tasks.tracking import mlflow_client

    out = tmp_path / "run"
    result = runner.invoke(app, _args(shapes_classification, out, "--epochs", "2", "--experiment", "ddp"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["world_size"] == 2 and report["epochs_run"] == 2
    assert report["final"]["train/images"] == 64.0  # both ranks' images: 4 global batches of 16
    client = mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [r.data.params["world_size"] for r in runs] == ["2"] and runs[0].data.params["train.devices"] == "2"
    # The checkpoint is a plain model's: `cvflow predict` loads it in this one process.
    preds = tmp_path / "preds.parquet"
    predicted = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(out),
            "--data",
            str(shapes_classification.path),
            "--split",
            "val",
            "--out",
            str(preds),
            "--quiet",
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    df = schema.validate(pl.read_parquet(preds), "classifications")
    assert df.height == shapes_classification.split_images("val").height


def _ranks() -> list[psutil.Process]:
    """The launched ranks under this test process: processes started by multiprocessing's spawn
    (the launcher's start method), not its resource tracker."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.Error, OSError):
            continue
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.append(child)
    return found


def test_a_killed_rank_fails_the_run_with_its_cause_and_resume_finishes_it(shapes_classification, tmp_path):
    out = tmp_path / "run"
    killed: dict[str, float] = {}  # when, and which process

    def kill_a_rank_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            ranks = _ranks()
            if len(ranks) == 2 and (out / "last.pt").is_file():
                victim = max(ranks, key=lambda p: p.pid)
                os.kill(victim.pid, signal.SIGKILL)
                killed.update(at=time.monotonic(), pid=victim.pid)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_a_rank_after_the_first_checkpoint, daemon=True)
    watcher.start()
    result = runner.invoke(app, _args(shapes_classification, out, "--epochs", "4"))
    ended = time.monotonic()
    watcher.join(timeout=5)
    assert "at" in killed, result.output
    assert result.exit_code == 1
    text = _text(result)
    assert (
        "error: rank" in text
        and f"of 2 failed (pid {killed['pid']}," in text
        and ("SIGKILL" in text or "Signal 9" in text)
    ), text
    assert ended - killed["at"] < 60
    assert not _ranks()  # no rank left behind
    done = json.loads((out / "metrics.json").read_text())["epochs_run"]
    assert 1 <= done < 4
    resumed = runner.invoke(app, ["train", "--quiet", "--resume", str(out / "last.pt"), "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs_run"] == 4 and report["world_size"] == 2
