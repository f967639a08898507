"""Every fault ingestion must survive: one quarantine row each, a readable reason, no crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from data_formats_helpers import jpeg_bytes, png, tiny_coco

from cvcore.data import probe
from cvcore.data.health import reason_kind
from cvcore.data.ingest import ingest
from cvcore.data.torch_dataset import DetectionDataset


def _img(image_id, name, w=32, h=24):
    return {"id": image_id, "file_name": name, "width": w, "height": h}


def _ann(ann_id, image_id, bbox, cat=1, **kw):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": 10.0, "iscrowd": 0} | kw


def _reasons(snapshot) -> dict[str, str]:
    """item -> reason of the quarantine table."""
    return dict(snapshot.quarantine.select("item", "reason").iter_rows())


def test_broken_image_files_are_dropped_with_their_annotations(tmp_path):
    root = tiny_coco(
        tmp_path / "src",
        images=[
            _img(1, "good.png"),
            _img(2, "trunc.jpg"),
            _img(3, "empty.png"),
            _img(4, "text.jpg"),
            _img(5, "missing.png"),
            _img(6, "trunc.png"),
            _img(7, "head.jpg"),
        ],
        annotations=[_ann(i, i, [1, 1, 5, 5]) for i in range(1, 7)] + [_ann(10 + i, 2, [2, 2, 4, 4]) for i in range(2)],
        sizes={"good.png": (32, 24)},
    )
    folder = root / "images" / "train"
    whole_jpeg = jpeg_bytes(64, 48)
    (folder / "trunc.jpg").write_bytes(whole_jpeg[: len(whole_jpeg) * 2 // 3])  # cut in the pixel data
    (folder / "head.jpg").write_bytes(whole_jpeg[:300])  # cut inside the header
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    full_png = png(tmp_path / "whole.png", 32, 24).read_bytes()
    (folder / "trunc.png").write_bytes(full_png[: len(full_png) // 2])

    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.get_column("file_name").to_list() == ["images/train/good.png"]
    assert snap.annotations.get_column("ann_id").to_list() == [1]
    reasons = _reasons(snap)
    assert reasons["image id 2"] == "truncated JPEG: image dropped with its 3 annotations"
    assert reasons["image id 3"] == "empty image file (0 bytes): image dropped with its 1 annotation"
    assert reasons["image id 4"].startswith("not an image file")
    assert reasons["image id 5"] == "missing image file: image dropped with its 1 annotation"
    assert reasons["image id 6"].startswith("truncated PNG")
    assert reasons["image id 7"].startswith("truncated JPEG")
    # The source of an image fault is the image file itself.
    src = dict(snap.quarantine.select("item", "source").iter_rows())
    assert src["image id 2"] == str(folder.resolve() / "trunc.jpg")
    assert len(snap.quarantine) == 6


def test_jpeg_with_bytes_after_its_end_marker_is_kept(tmp_path):
    root = tiny_coco(tmp_path / "src", images=[_img(1, "a.jpg")], annotations=[])
    (root / "images" / "train" / "a.jpg").write_bytes(jpeg_bytes(32, 24) + b"trailing junk from a camera")
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.height == 1 and snap.quarantine.is_empty()


def test_bad_boxes_are_dropped_or_clipped_with_reasons(tmp_path):
    anns = [
        _ann(1, 1, [2, 2, 10, 8]),  # fine
        _ann(2, 1, [10, 2, -3, 5]),  # negative width
        _ann(3, 1, [4, 4, 0, 5]),  # zero width
        _ann(4, 1, [4, 4, 5, -1]),  # negative height
        _ann(5, 1, [float("nan"), 1, 2, 2]),  # NaN
        _ann(6, 1, [1, 1, float("inf"), 2]),  # infinite
        _ann(7, 1, [20, 10, 20, 20]),  # beyond: x2=40 > 32, y2=30 > 24 -> clipped
        _ann(8, 1, [-3, 2, 5, 5]),  # beyond on the left -> clipped
        _ann(9, 1, [40, 2, 5, 5]),  # entirely outside -> dropped
        _ann(10, 99, [1, 1, 2, 2]),  # unknown image
        _ann(11, 1, [1, 1, 2, 2], cat=7),  # unknown category
        _ann(1, 1, [3, 3, 2, 2]),  # duplicate annotation id
        _ann(12, 1, [1, 1, 2, None]),  # JSON null coordinate
        _ann(13, 1, [1, 2, 3]),  # malformed bbox
    ]
    root = tiny_coco(tmp_path / "src", images=[_img(1, "a.png")], annotations=anns, sizes={"a.png": (32, 24)})
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot

    kept = snap.annotations.sort("ann_id")
    assert kept.get_column("ann_id").to_list() == [1, 7, 8]
    assert kept.select("x1", "y1", "x2", "y2").rows() == [
        (2.0, 2.0, 12.0, 10.0),
        (20.0, 10.0, 32.0, 24.0),
        (0.0, 2.0, 2.0, 7.0),
    ]
    # area: the source's, capped at the clipped box's area (12 * 14 = 168 > 10 -> stays 10; 2*5=10)
    assert kept.get_column("area").to_list() == [10.0, 10.0, 10.0]

    q = snap.quarantine.select("item", "reason").rows()
    by_item = {}
    for item, reason in q:
        by_item.setdefault(item, []).append(reason)
    assert by_item["annotation id 2"] == ["box x2 < x1 (w=-3): dropped"]
    assert by_item["annotation id 3"] == ["box has zero width (x1 = x2 = 4): dropped"]
    assert by_item["annotation id 4"] == ["box y2 < y1 (h=-1): dropped"]
    assert by_item["annotation id 5"] == ["box has a missing or non-finite coordinate (x1=nan, x2=nan): dropped"]
    assert by_item["annotation id 6"] == ["box has a missing or non-finite coordinate (x2=inf): dropped"]
    assert by_item["annotation id 7"] == [
        "box beyond the image (x2=40 > width 32, y2=30 > height 24): clipped to the image"
    ]
    assert by_item["annotation id 8"] == ["box beyond the image (x1=-3 < 0): clipped to the image"]
    assert by_item["annotation id 9"] == ["box entirely outside the image (x1=40 >= width 32): dropped"]
    assert by_item["annotation id 10"] == ["refers to unknown image id 99: dropped"]
    assert by_item["annotation id 11"] == ["unknown category id 7 (not in the file's categories): dropped"]
    assert by_item["annotation id 1"] == ["duplicate annotation id (the first one is kept): dropped"]
    assert by_item["annotation id 12"] == ["box has a missing or non-finite coordinate (y2=nan): dropped"]
    assert by_item["annotation id 13"][0].startswith("annotation 'bbox' is not 4 numbers")
    assert len(q) == 13


def test_duplicate_image_ids_and_files(tmp_path):
    root = tiny_coco(
        tmp_path / "src",
        images=[_img(1, "a.png"), _img(1, "b.png"), _img(2, "a.png")],
        annotations=[_ann(1, 1, [1, 1, 2, 2]), _ann(2, 2, [1, 1, 2, 2])],
        sizes={"a.png": (32, 24), "b.png": (32, 24)},
    )
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.select("image_id", "file_name").rows() == [(1, "images/train/a.png")]
    assert snap.annotations.get_column("ann_id").to_list() == [1]
    reasons = [r for _, r in snap.quarantine.select("item", "reason").rows()]
    assert any(
        r.startswith("duplicate image id 1 (first for 'images/train/a.png', again for 'images/train/b.png')")
        for r in reasons
    )
    assert any(r.startswith("file 'images/train/a.png' is listed twice (image ids 1 and 2)") for r in reasons)


def test_file_names_escaping_the_root_are_rejected_without_being_opened(tmp_path, monkeypatch):
    png(tmp_path / "secret.png", 32, 24)  # a real image outside the dataset root
    root = tiny_coco(
        tmp_path / "src",
        images=[
            _img(1, "../../../secret.png"),
            _img(2, str(tmp_path / "secret.png")),
            _img(3, "ok.png"),
            _img(4, "link.png"),
        ],
        annotations=[_ann(1, 1, [1, 1, 2, 2]), _ann(2, 2, [1, 1, 2, 2])],
        sizes={"ok.png": (32, 24)},
    )
    os.symlink(tmp_path / "secret.png", root / "images" / "train" / "link.png")
    opened = []
    real = probe.read_header
    monkeypatch.setattr(probe, "read_header", lambda path, **kw: opened.append(Path(path)) or real(path, **kw))

    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.get_column("file_name").to_list() == ["images/train/ok.png"]
    assert all(p.name == "ok.png" for p in opened), opened
    reasons = _reasons(snap)
    assert (
        reasons["image id 1"]
        == "file name '../../../secret.png' escapes the dataset root: rejected, not opened; image dropped with its 1 annotation"
    )
    assert "is an absolute path outside the dataset root: rejected, not opened" in reasons["image id 2"]
    assert reasons["image id 4"].startswith(
        "file name resolves outside the dataset root (a symlink?): rejected, not opened"
    )


def test_exif_rotated_jpeg_has_displayed_size_and_pixels(tmp_path):
    # Stored 40 wide x 20 high; orientation 6 (rotate 90° CW to display) -> displayed 20 x 40.
    root = tiny_coco(tmp_path / "src", images=[_img(1, "rot.jpg", 40, 20)], annotations=[_ann(1, 1, [2, 2, 10, 30])])
    (root / "images" / "train" / "rot.jpg").write_bytes(jpeg_bytes(40, 20, orientation=6))
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.select("width", "height").row(0) == (20, 40)
    # The declared (stored) size disagrees with the displayed one: recorded, the file wins.
    (reason,) = snap.quarantine.get_column("reason").to_list()
    assert reason.startswith(
        "declared size differs from the image file (declared 40x20, file 20x40 as displayed, EXIF orientation 6)"
    )
    # The box fits the displayed image, so it is not clipped.
    assert snap.annotations.select("x2", "y2").row(0) == (12.0, 32.0)
    image, target = DetectionDataset(snap, "train").raw(0)
    assert tuple(image.shape) == (3, 40, 20)
    assert target["boxes"].canvas_size == (40, 20)


def test_yolo_label_faults(tmp_path):
    png(tmp_path / "images" / "train" / "a.png", 10, 10)
    png(tmp_path / "images" / "train" / "b.png", 10, 10)
    (tmp_path / "images" / "train" / "notes.txt").write_text("not an image")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n0 0.5 0.5\n0 abc 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.2\n"
    )
    (tmp_path / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: {0: thing}\n")
    snap = ingest(tmp_path, fmt="yolo", out=tmp_path / "snap").snapshot
    assert snap.images.height == 2  # b.png has no label file: a background image, not a fault
    assert snap.annotations.height == 2
    q = {(Path(s).name, i): r for s, i, r in snap.quarantine.rows()}
    assert q[("a.txt", "line 2")] == "class index 5 is not in data.yaml names (0..0): dropped"
    assert q[("a.txt", "line 3")] == "not a YOLO label line (3 numbers; class cx cy w h: 5 numbers expected): dropped"
    assert (
        q[("a.txt", "line 4")] == "not a YOLO label line (class cx cy w h: 5 numbers expected): dropped"
    )  # no content quoted
    assert q[("a.txt", "line 5")] == "box has a missing or non-finite coordinate (x1=nan, x2=nan): dropped"
    assert q[("a.txt", "line 6")] == "box beyond the image (x2=10.5 > width 10): clipped to the image"
    assert q[("ghost.txt", "file")] == "label file has no image in the dataset: its 1 boxes dropped"
    assert q[("notes.txt", "images/train/notes.txt")].startswith("not an image file")


def test_voc_faults(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    png(tmp_path / "JPEGImages" / "a.png", 10, 10)
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>x</name></object><object><bndbox/></object>"
        "<object><name>x</name><bndbox><xmin>q</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "Annotations" / "b.xml").write_text("<annotation><filename>b.png</file")
    (tmp_path / "Annotations" / "c.xml").write_text("<annotation><filename>../../c.png</filename></annotation>")
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\nmissing\n")
    snap = ingest(tmp_path, fmt="voc", out=tmp_path / "snap").snapshot
    assert snap.images.height == 1 and snap.annotations.height == 1
    reasons = sorted(snap.quarantine.get_column("reason").to_list())
    assert "object without a <bndbox>: dropped" in reasons
    assert "object without a <name>: dropped" in reasons
    assert "bndbox <xmin> 'q' is not a number: dropped" in reasons
    assert any(r.startswith("malformed XML") for r in reasons)
    assert "listed id 'missing' has no Annotations/missing.xml: skipped" in reasons
    assert any(r.startswith("file name '../../c.png' escapes the dataset root: rejected, not opened") for r in reasons)


def test_imagefolder_faults_and_labels(tmp_path):
    for split, cls, name in [("train", "cat", "1.png"), ("train", "dog", "2.png"), ("val", "cat", "3.png")]:
        png(tmp_path / split / cls / name, 8, 8)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "train" / "README.txt").write_text("stray")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"\0")
    snap = ingest(tmp_path, fmt="imagefolder", out=tmp_path / "snap").snapshot
    assert snap.task == "classification" and snap.class_names == ["cat", "dog"]
    rows = (
        snap.images.join(snap.labels, on="image_id")
        .select("file_name", "split", "category_id")
        .sort("file_name")
        .rows()
    )
    assert rows == [("train/cat/1.png", "train", 0), ("train/dog/2.png", "train", 1), ("val/cat/3.png", "val", 0)]
    reasons = snap.quarantine.get_column("reason").to_list()
    assert len(reasons) == 2
    assert "file is not inside a class folder: skipped" in reasons
    assert any(r.endswith("image dropped with its 1 label") for r in reasons)


@pytest.mark.parametrize(
    "fmt, make, message",
    [
        ("coco", lambda p: p, "COCO source does not exist"),
        ("coco", lambda p: (p.mkdir(), p)[1], "no annotations/instances_<split>.json found"),
        (
            "coco",
            lambda p: (p.parent.mkdir(exist_ok=True), p.write_text("{not json"), p)[2],
            "not a readable COCO JSON file",
        ),
        ("voc", lambda p: p, "VOC source does not exist"),
        ("yolo", lambda p: (p.mkdir(), p)[1], "data.yaml does not exist"),
        ("imagefolder", lambda p: p, "ImageFolder source does not exist"),
    ],
)
def test_unusable_sources_raise_naming_the_path(tmp_path, fmt, make, message):
    source = make(tmp_path / "src" / "data.json" if message.startswith("not a readable") else tmp_path / "src")
    with pytest.raises(ValueError, match=message) as info:
        ingest(source, fmt=fmt, out=tmp_path / "snap")
    assert str(source) in str(info.value)
    assert not (tmp_path / "snap").exists()


def test_quarantine_reasons_group_into_kinds():
    assert reason_kind("box x2 < x1 (w=-3): dropped") == "box x2 < x1"
    assert reason_kind("truncated JPEG: image dropped with its 3 annotations") == "truncated JPEG"
    assert reason_kind(
        "file name '../a.jpg' escapes the dataset root: rejected, not opened; image dropped"
    ) == reason_kind("file name '../zz/b.jpg' escapes the dataset root: rejected, not opened")
    assert reason_kind("refers to unknown image id 99: dropped") == "refers to unknown image id N"


def test_probe_reports_unreadable_headers_without_raising(tmp_path):
    (tmp_path / "d.png").mkdir()
    frame = probe.probe_images(tmp_path, ["d.png", "nope.png"], workers=2)
    assert frame.get_column("problem").to_list() == ["not a file (a directory)", "missing image file"]
    assert frame.get_column("width").null_count() == 2


def test_coco_json_with_nan_literals_is_read(tmp_path):
    # Python's json writes NaN/Infinity; other tools may too. They are bad boxes, not bad files.
    root = tiny_coco(
        tmp_path / "src", images=[_img(1, "a.png")], annotations=[_ann(1, 1, [1, 1, 2, 2])], sizes={"a.png": (32, 24)}
    )
    doc = json.loads((root / "annotations" / "instances_train.json").read_text())
    doc["annotations"].append(_ann(2, 1, [float("-inf"), 1, 2, 2]))
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.annotations.height == 1
    assert snap.quarantine.filter(pl.col("item") == "annotation id 2").get_column("reason").to_list() == [
        "box has a missing or non-finite coordinate (x1=-inf, x2=-inf): dropped"
    ]


def test_probe_refuses_paths_outside_the_root_before_opening(tmp_path, monkeypatch):
    root = tmp_path / "root"
    png(tmp_path / "outside" / "x.png", 4, 4)
    png(root / "in" / "y.png", 4, 4)
    os.symlink(tmp_path / "outside", root / "linked_dir")  # a folder link leading out
    os.symlink(root / "in" / "y.png", root / "in" / "alias.png")  # a file link staying in
    opened = []
    real = probe.read_header
    monkeypatch.setattr(probe, "read_header", lambda path, **kw: opened.append(Path(path).name) or real(path, **kw))
    names = [
        "../outside/x.png",
        str(tmp_path / "outside" / "x.png"),
        "linked_dir/x.png",
        "in/../../outside/x.png",
        "in/y.png",
        "in/alias.png",
    ]
    frame = probe.probe_images(root, names, workers=2)
    refused = frame.get_column("problem").str.contains("outside the dataset root").fill_null(False).to_list()
    assert refused == [True, True, True, True, False, False]
    assert sorted(opened) == ["y.png", "y.png"]
