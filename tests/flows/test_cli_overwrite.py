"""Hostile output paths: what a command writes never replaces a file or run the user owns.

Each case gives a command an output path that already holds something else (the checkpoint being
used, a table of the snapshot being read, a dataset image, a user's file, a FIFO, links) and
checks that the command refuses in one line (exit 2) before any work, and that the file is
byte-for-byte unchanged; a file cvflow wrote there itself is still replaced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from test_cli_errors import one_line_error
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def snapshot(shapes_classification, tmp_path_factory) -> Path:
    """A private copy of shapes-cls (tests here aim the commands at its files)."""
    out = tmp_path_factory.mktemp("overwrite") / "shapes-cls"
    shutil.copytree(shapes_classification.path, out)
    return out


@pytest.fixture(scope="module")
def checkpoint(shapes_classification, tmp_path_factory) -> Path:
    """An untrained resnet18 checkpoint for shapes-cls (16 px)."""
    from cvcore.config import RunConfig
    from cvcore.engine.checkpoint import save_checkpoint
    from cvcore.models import build_model

    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    meta = {
        "model_name": "resnet18", "task": "classification", "num_classes": 4, "class_names": shapes_classification.class_names,
        "img_size": 16, "options": {}, "config": RunConfig().model_dump(mode="json"),
    }  # fmt: skip
    save_checkpoint(
        {"model": build_model("resnet18", num_classes=4, img_size=16).state_dict(), "meta": meta, "ema": None}, path
    )
    return path


def hostile_targets(tmp_path: Path, snapshot: Path, checkpoint: Path) -> dict[str, Path]:
    """Paths that hold something a user owns, by what they are."""
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.parquet"
    link.symlink_to(snapshot / "labels.parquet")
    dangling = tmp_path / "dangling.parquet"
    dangling.symlink_to(tmp_path / "nowhere")
    image = snapshot / "images" / sorted(os.listdir(snapshot / "images"))[0]
    return {
        "the checkpoint": checkpoint, "a snapshot table": snapshot / "labels.parquet", "the manifest": snapshot / "manifest.json",
        "a dataset image": image, "a user's file": notes, "a FIFO": fifo, "a link to a table": link, "a dangling link": dangling,
    }  # fmt: skip


def fingerprint(path: Path) -> str:
    if path.is_symlink():
        return f"link to {os.readlink(path)}"
    return "fifo" if path.exists() and not path.is_file() else digest(path)


# --- cvflow predict --out -----------------------------------------------------------------------


def predict(checkpoint: Path, snapshot: Path, out: Path):
    return runner.invoke(
        app, ["predict", "--model", str(checkpoint), "--data", str(snapshot), "--out", str(out), "--quiet"]
    )


def test_predict_never_overwrites_a_file_that_is_not_predictions(snapshot, checkpoint, tmp_path):
    for what, target in hostile_targets(tmp_path, snapshot, checkpoint).items():
        before = fingerprint(target)
        line = one_line_error(predict(checkpoint, snapshot, target))
        assert f"refusing to overwrite {target}" in line, what
        assert fingerprint(target) == before, f"{what} was changed"
    assert (
        digest(checkpoint) and predict(checkpoint, snapshot, tmp_path / "ok.parquet").exit_code == 0
    )  # the model still loads


def test_predict_replaces_its_own_predictions(snapshot, checkpoint, tmp_path):
    out = tmp_path / "preds.parquet"
    for _ in range(2):  # the second run replaces the first run's file
        result = predict(checkpoint, snapshot, out)
        assert result.exit_code == 0, result.output
    assert "predictions for" in result.stdout


def test_write_predictions_refuses_a_foreign_file(tmp_path):
    from cvcore.engine.infer import write_predictions

    target = tmp_path / "best.pt"
    target.write_bytes(b"weights")
    with pytest.raises(ValueError, match="not a cvflow predictions file"):
        write_predictions(iter(()), target, task="detection")
    assert target.read_bytes() == b"weights"
    written = write_predictions(iter(()), tmp_path / "p.parquet", task="detection")
    assert write_predictions(iter(()), written, task="detection") == written  # its own file is replaced


# --- cvflow augment --preview -------------------------------------------------------------------


def augment(snapshot: Path, preview: Path, *extra: str):
    return runner.invoke(
        app,
        ["augment", "--data", str(snapshot), "--preview", str(preview), "--n-stats", "4", "--n-preview", "2", *extra],
    )


def test_augment_preview_never_overwrites_a_users_file(snapshot, checkpoint, tmp_path):
    for what, target in hostile_targets(tmp_path, snapshot, checkpoint).items():
        before = fingerprint(target)
        line = one_line_error(augment(snapshot, target))
        assert f"refusing to overwrite {target}" in line, what
        assert fingerprint(target) == before, f"{what} was changed"


def test_augment_preview_replaces_its_own_preview(snapshot, tmp_path):
    preview = tmp_path / "preview.png"
    for _ in range(2):
        result = augment(snapshot, preview)
        assert result.exit_code == 0, result.output
    from PIL import Image

    from cvcore.augment.preview import PREVIEW_MARK

    with Image.open(preview) as image:
        assert image.info[PREVIEW_MARK[0]] == PREVIEW_MARK[1]


def test_augment_preview_inside_the_new_snapshot_is_refused_before_work(snapshot, tmp_path):
    out = tmp_path / "aug"
    line = one_line_error(augment(snapshot, out / "preview.png", "--materialize", "1", "--out", str(out)))
    assert "is inside --out" in line
    assert not out.exists()


# --- cvflow ingest --name -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/elsewhere", "a/b", ".."])
def test_ingest_name_must_be_a_plain_folder_name(name, tmp_path, monkeypatch):
    """Without --out the snapshot goes to $CVFLOW_HOME/snapshots/<name>: --name ../../x wrote it outside."""
    monkeypatch.setenv("CVFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    line = one_line_error(runner.invoke(app, ["ingest", "--synthetic", "shapes-cls", "--name", name, "--quiet"]))
    assert f"--name {name!r} is not a plain folder name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_augment_out_that_is_a_dangling_link_or_too_long_is_refused_before_work(snapshot, tmp_path):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    preview = tmp_path / "preview.png"
    line = one_line_error(augment(snapshot, preview, "--materialize", "1", "--out", str(dangling)))
    assert line == f"error: {dangling} already exists; choose another --out or remove it"
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    long = tmp_path / ("x" * 300)
    line = one_line_error(augment(snapshot, preview, "--materialize", "1", "--out", str(long)))
    assert "the folder name is longer than 255 bytes" in line
    assert not preview.exists()  # refused before any work


# --- cvflow compare --out -----------------------------------------------------------------------


def test_compare_out_must_be_new_empty_or_a_bakeoff_folder(shapes_detection, tmp_path, monkeypatch):
    """The bake-off writes bakeoff.parquet/.md/.png, runs/, predictions/ and cache/ into --out:
    a folder of the user's files (their home, a project) is refused before any flow."""
    monkeypatch.setenv("CVFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started = []

    def reached(params):
        started.append(params.out)
        raise SystemExit(7)

    monkeypatch.setattr("flows.compare.compare_pipeline", reached)

    def compare(out: Path):
        return runner.invoke(
            app, ["compare", "--data", str(shapes_detection.path), "--out", str(out), "--models", "yolov1", "--quiet"]
        )

    mine = tmp_path / "thesis"
    (mine / "runs").mkdir(parents=True)
    (mine / "bakeoff.md").write_text("my notes\n")
    line = one_line_error(compare(mine))
    assert line.startswith(f"error: --out {mine} holds files (bakeoff.md, runs) but is not a bake-off folder")
    assert (mine / "bakeoff.md").read_text() == "my notes\n" and not started
    for folder in (tmp_path / "new", tmp_path / "bakeoff"):
        if folder.name == "bakeoff":
            folder.mkdir()
            (folder / "bakeoff.parquet").write_bytes(b"")
        assert compare(folder).exit_code == 7  # reached the flow
    assert started == [(tmp_path / "new").resolve(), (tmp_path / "bakeoff").resolve()]


# --- a pipeline's dataset name --------------------------------------------------------------------


def test_a_pipelines_dataset_name_cannot_lead_outside_the_snapshots_folder():
    """The ingest task writes <home>/snapshots/<name>/<fingerprint>: a form's name ../../x (or a
    source path ending in ..) put the snapshot outside CVFLOW_HOME."""
    from pydantic import ValidationError

    from flows.params import DataSource
    from tasks.ingest import _out_dir

    for name in ("../../x", "a/b", ".."):
        with pytest.raises(ValidationError, match="is not a plain folder name"):
            DataSource(path=Path("data"), format="coco", name=name)
    assert DataSource(path=Path("data"), format="coco", name="coco-2017").name == "coco-2017"
    home = Path("/h")
    assert _out_dir(
        {"source": "/data/coco/..", "home": home, "fingerprint": "f" * 64}
    ) == home / "snapshots" / "dataset" / ("f" * 12)
    assert _out_dir({"source": "/data/coco", "home": home, "fingerprint": "f" * 64}) == home / "snapshots" / "coco" / (
        "f" * 12
    )


# --- cvflow train --resume A --out B ------------------------------------------------------------


def test_train_resume_into_another_run_is_one_line_before_any_flow(snapshot, checkpoint, tmp_path, monkeypatch):
    """Resuming run A into B's folder replaced B's last.pt, config.yaml, metrics.json and history."""
    from cvcore.engine.checkpoint import LAST
    from cvcore.engine.run import RUN_MARKER

    monkeypatch.setenv("CVFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the flow started although --out holds another run")

    monkeypatch.setattr("flows.train.train_pipeline", must_not_run)
    runs = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / RUN_MARKER).write_text('{"cvflow": "run folder", "format": 1}\n')
        shutil.copy(checkpoint, folder / LAST)
        (folder / "metrics.json").write_text(f'{{"run": "{name}"}}\n')
        runs[name] = folder
    a, b = runs["a"], runs["b"]
    before = {p.name: digest(p) for p in b.iterdir()}
    result = runner.invoke(app, ["train", "--quiet", "--resume", str(a), "--out", str(b), "--data", str(snapshot), "--model", "resnet18",
                                 "--img-size", "16"])  # fmt: skip
    line = one_line_error(result)
    assert line.startswith(f"error: {b} holds another run (last.pt); resuming {a / LAST} there would overwrite it")
    assert {p.name: digest(p) for p in b.iterdir()} == before
