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
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}],
        "annotations": anns,
        "categories": [{"id": 5, "name": "red"}],
    }
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
    result = runner.invoke(
        app, ["ingest", str(src), "--format", "imagefolder", "--out", str(out), "--val-fraction", "0.4", "--seed", "1"]
    )
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
    replaced = runner.invoke(
        app, ["ingest", "--synthetic", "shapes-cls", "--out", str(out), "--replace", "--seed", "1"]
    )
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
    for option in (
        "--format",
        "--synthetic",
        "--out",
        "--images",
        "--val-fraction",
        "--seed",
        "--name",
        "--replace",
        "--workers",
    ):
        assert option in result.output


def test_replace_never_deletes_the_source_or_a_user_folder(tmp_path):
    src = _coco(tmp_path / "W" / "mydata")
    before = sorted(p for p in (tmp_path / "W").rglob("*"))
    result = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--out", str(src), "--replace", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: refusing to replace {src}: it is {src} itself, which is being read; choose another --out"
    ]
    assert sorted(p for p in (tmp_path / "W").rglob("*")) == before

    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("text")
    for args in (["ingest", str(src), "-f", "coco"], ["ingest", "--synthetic", "shapes-cls"]):
        refused = runner.invoke(app, [*args, "--out", str(thesis), "--replace", "--quiet"])
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
        assert f"refusing to replace {thesis}: it is not a cvflow snapshot" in refused.output
    assert [p.name for p in thesis.iterdir()] == ["chapter1.tex"]


def test_default_pixel_cap_matches_the_library():
    from cvcore.data.probe import MAX_PIXELS
    from flows.commands.ingest import DEFAULT_MEGAPIXELS

    assert DEFAULT_MEGAPIXELS * 1e6 == MAX_PIXELS


def test_user_data_is_printed_literally(tmp_path):
    from PIL import Image

    for name in (":x:", "[bold]b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "src" / name / "1.png")
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "src"), "-f", "imagefolder", "--out", str(tmp_path / "snap"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "| 0 | :x: |" in result.output and "| 1 | [bold]b |" in result.output
    assert "\u274c" not in result.output  # rich's :x: emoji


def test_a_source_without_one_usable_image_is_one_line_and_no_snapshot(tmp_path):
    src = _coco(tmp_path / "mydata")
    (src / "images" / "a.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--out", str(tmp_path / "snap"), "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {src}: no usable image, all 1 listed were rejected; e.g. image id 1: not an image file (no known image format): "
        "image dropped with its 1 annotation"
    ]
    assert not (tmp_path / "snap").exists()


def test_long_and_unwritable_out_names_are_one_line(tmp_path, monkeypatch):
    import os

    src = _coco(tmp_path / "mydata")
    legal = tmp_path / ("s" * 250)  # legal; the temporary sibling's name must not overflow 255 bytes
    result = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--out", str(legal), "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_snapshot(legal).images.height == 1
    assert (
        runner.invoke(app, ["ingest", str(src), "-f", "coco", "--out", str(legal), "--quiet", "--replace"]).exit_code
        == 0
    )

    too_long = tmp_path / ("s" * 256)
    result = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--out", str(too_long), "--quiet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "the folder name is longer than 255 bytes" in result.output

    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root ignores the mode: stand in for a read-only mount
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(read_only) else real(p, mode, **kw)
        )
    for args, env in ((["--out", str(read_only / "snap")], {}), ([], {"CVFLOW_HOME": str(read_only / "home")})):
        result = runner.invoke(app, ["ingest", str(src), "-f", "coco", "--quiet", *args], env=env)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"({read_only} is not a writable folder)" in result.output
    read_only.chmod(0o755)
