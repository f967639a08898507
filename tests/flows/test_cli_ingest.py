"""`cvflow ingest`: real sources and built-in data to snapshots, the report, clean errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cvcore.data.snapshot import read_snapshot
from flows.cli import app

runner = CliRunner()


def _coco(root, *, broken: bool = False):
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(root / "images" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4], "area": 16}]
    if broken:
        anns.append({"id": 2, "image_id": 1, "category_id": 5, "bbox": [1, 1, -4, 4], "area": 16})
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}], "annotations": anns, "categories": [{"id": 5, "name": "red"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return root


def test_ingest_coco_prints_the_report_and_writes_under_cvflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CVFLOW_HOME", str(tmp_path / "home"))
    src = _coco(tmp_path / "mydata", broken=True)
    result = runner.invoke(app, ["ingest", str(src), "--format", "coco", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "## Dataset `mydata`" in result.output
    assert "| box x2 < x1 | 1 |" in result.output
    snap = read_snapshot(tmp_path / "home" / "snapshots" / "mydata")
    assert snap.annotations.height == 1 and snap.quarantine.height == 1

    # Same data again: refused without --replace (exit 2, names the folder), same digest with it.
    again = runner.invoke(app, ["ingest", str(src), "--format", "coco", "--quiet"])
    assert again.exit_code == 2 and "already exists" in again.output
    replaced = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--quiet", "--replace", "--name", "mydata"])
    assert replaced.exit_code == 0, replaced.output
    assert read_snapshot(tmp_path / "home" / "snapshots" / "mydata").digest == snap.digest


def test_ingest_with_out_val_fraction_and_progress(tmp_path):
    src = tmp_path / "folder"
    from PIL import Image

    for i in range(10):
        (src / ("cat" if i < 5 else "dog")).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(src / ("cat" if i < 5 else "dog") / f"{i}.png")
    out = tmp_path / "snap"
    result = runner.invoke(app, ["ingest", str(src), "--format", "imagefolder", "--out", str(out), "--val-fraction", "0.4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    snap = read_snapshot(out)
    assert snap.manifest["counts"]["splits"] == {"train": 6, "val": 4}
    assert f"snapshot written to {out}" in result.output


def test_ingest_synthetic_shapes_classification(tmp_path):
    out = tmp_path / "cls"
    result = runner.invoke(app, ["ingest", "--synthetic", "shapes-cls", "--out", str(out)])
    assert result.exit_code == 0, result.output
    snap = read_snapshot(out)
    assert snap.task == "classification" and snap.name == "shapes-cls"
    assert "### Labels per class" in result.output
    replaced = runner.invoke(app, ["ingest", "--synthetic", "shapes-cls", "--out", str(out), "--replace", "--seed", "1"])
    assert replaced.exit_code == 0, replaced.output
    assert read_snapshot(out).digest != snap.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls"]  # no staging folders left


def test_errors_exit_2_naming_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["ingest", str(missing), "--format", "voc", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert str(missing) in result.output and "does not exist" in result.output

    bad = tmp_path / "bad" / "annotations"
    bad.mkdir(parents=True)
    (bad / "instances_train.json").write_text("{ nope")
    result = runner.invoke(app, ["ingest", str(tmp_path / "bad"), "--format", "coco", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "instances_train.json: not a readable COCO JSON file" in result.output

    assert runner.invoke(app, ["ingest", str(tmp_path)]).exit_code == 2  # no --format
    assert runner.invoke(app, ["ingest"]).exit_code == 2  # neither SOURCE nor --synthetic
    wrong = runner.invoke(app, ["ingest", "--synthetic", "shapes", "--val-fraction", "0.2"])
    assert wrong.exit_code == 2 and "--val-fraction does not apply to --synthetic" in wrong.output
    assert runner.invoke(app, ["ingest", str(tmp_path), "--format", "tfrecord"]).exit_code == 2


def test_help_explains_every_option():
    result = runner.invoke(app, ["ingest", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--format", "--synthetic", "--out", "--images", "--val-fraction", "--seed", "--name", "--replace", "--workers"):
        assert option in result.output


def test_replace_never_deletes_the_source_or_a_user_folder(tmp_path):
    src = _coco(tmp_path / "W" / "mydata")
    before = sorted(p for p in (tmp_path / "W").rglob("*"))
    result = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--out", str(src), "--replace", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: refusing to replace {src}: it is {src} itself, which is being read; choose another --out"]
    assert sorted(p for p in (tmp_path / "W").rglob("*")) == before

    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("text")
    for args in (["ingest", str(src), "-f", "coco"], ["ingest", "--synthetic", "shapes-cls"]):
        refused = runner.invoke(app, [*args, "--out", str(thesis), "--replace", "--quiet"])
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
        assert f"refusing to replace {thesis}: it is not a cvflow snapshot" in refused.output
    assert [p.name for p in thesis.iterdir()] == ["chapter1.tex"]
