"""Hostile or careless sources: no read outside the root, no hang, no leak, one row per bad entry."""

from __future__ import annotations

import faulthandler
import json
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from data_formats_helpers import png, tiny_coco

from cvcore.data import probe, safeio
from cvcore.data.health import format_health
from cvcore.data.ingest import ingest

SECRET = "root:x:0:0:root:/root:/bin/bash"


@pytest.fixture(autouse=True)
def no_hang():
    """A read that blocks (a FIFO opened for reading) fails the run instead of hanging it."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(f"{SECRET}\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    return secret


def _yolo(root: Path, names=("a.png", "b.png")) -> Path:
    for n in names:
        png(root / "images" / "train" / n, 10, 10)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("train: images/train\nnames: [thing]\n")
    return root


def _everything(result) -> str:
    """The quarantine table and the printed report as one text, to look for leaked content."""
    q = result.snapshot.quarantine
    return "\n".join("\t".join(r) for r in q.rows()) + format_health(result.report)


def _reasons(snapshot) -> dict[str, str]:
    return dict(snapshot.quarantine.select("item", "reason").iter_rows())


# Defect 2: every annotation file is confined to the dataset root, and never echoed.


def test_yolo_label_file_linked_outside_is_not_read_and_its_image_leaves(tmp_path):
    secret = _outside(tmp_path)
    root = _yolo(tmp_path / "src")
    (root / "labels" / "train" / "a.txt").symlink_to(secret)
    result = ingest(root, fmt="yolo", out=tmp_path / "snap")
    assert result.snapshot.images.get_column("file_name").to_list() == ["images/train/b.png"]
    reason = _reasons(result.snapshot)["images/train/a.png"]
    assert reason.startswith("label file not read (it resolves outside the dataset root")
    assert reason.endswith("image dropped, its boxes are unknown")
    assert "root:x" not in _everything(result) and "daemon" not in _everything(result)


def test_an_image_whose_yolo_label_file_is_unreadable_is_dropped_not_kept_as_background(tmp_path):
    root = _yolo(tmp_path / "src")
    (root / "labels" / "train" / "a.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\x00binary")
    snap = ingest(root, fmt="yolo", out=tmp_path / "snap").snapshot
    assert snap.images.get_column("file_name").to_list() == ["images/train/b.png"]  # b: no label file, background
    assert _reasons(snap) == {
        "images/train/a.png": "label file not read (not UTF-8 text, byte 18): image dropped, its boxes are unknown"
    }


def test_yolo_label_lines_are_never_quoted(tmp_path):
    root = _yolo(tmp_path / "src")
    (root / "labels" / "train" / "a.txt").write_text(f"{SECRET}\n0 0.5 0.5 0.2 0.2\nhunter2 secret words here\n")
    result = ingest(root, fmt="yolo", out=tmp_path / "snap")
    assert result.snapshot.annotations.height == 1
    rows = {i: r for _, i, r in result.snapshot.quarantine.rows()}
    assert rows["line 1"] == rows["line 3"] == "not a YOLO label line (class cx cy w h: 5 numbers expected): dropped"
    assert "root:x" not in _everything(result) and "hunter2" not in _everything(result)


def test_yolo_split_list_linked_outside_is_refused(tmp_path):
    secret = _outside(tmp_path)
    root = _yolo(tmp_path / "src")
    (root / "train.txt").symlink_to(secret)
    (root / "data.yaml").write_text("train: train.txt\nnames: [thing]\n")
    with pytest.raises(ValueError, match=r"data.yaml: train: 'train.txt' escapes the dataset root") as info:
        ingest(root, fmt="yolo", out=tmp_path / "snap")
    assert "root:x" not in str(info.value)


def test_voc_xml_and_split_list_linked_outside_are_not_read(tmp_path):
    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    png(src / "JPEGImages" / "a.png", 10, 10)
    png(src / "JPEGImages" / "b.png", 10, 10)
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
    (src / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.png</filename><object><name>cat</name>{box}</object></annotation>"
    )
    evil = tmp_path / "outside" / "b.xml"
    evil.parent.mkdir()
    evil.write_text(f"<annotation><filename>b.png</filename><object><name>secret</name>{box}</object></annotation>")
    (src / "Annotations" / "b.xml").symlink_to(evil)
    result = ingest(src, fmt="voc", out=tmp_path / "snap")
    assert result.snapshot.class_names == ["cat"] and result.snapshot.images.height == 1
    assert _reasons(result.snapshot)["image b"].startswith(
        "annotation file not read (it resolves outside the dataset root"
    )

    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "ImageSets" / "Main" / "train.txt").symlink_to(_outside(tmp_path))
    with pytest.raises(ValueError, match=r"train.txt: split list not read \(it resolves outside") as info:
        ingest(src, fmt="voc", out=tmp_path / "snap2")
    assert "root:x" not in str(info.value)


def test_voc_list_lines_that_are_not_ids_are_not_quoted(tmp_path):
    src = tmp_path / "voc"
    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "Annotations").mkdir()
    png(src / "JPEGImages" / "a.png", 10, 10)
    (src / "Annotations" / "a.xml").write_text("<annotation><filename>a.png</filename></annotation>")
    (src / "ImageSets" / "Main" / "train.txt").write_text(f"a\n{SECRET}\n")
    (src / "Annotations" / "c.xml").write_text("<html><body>not voc</body></html>")
    (src / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    result = ingest(src, fmt="voc", out=tmp_path / "snap")
    rows = {i: r for _, i, r in result.snapshot.quarantine.rows()}
    assert rows["line 2"] == "not a VOC image id (a plain file name expected): rejected, not opened"
    assert rows["image c"] == "not a VOC annotation (the root element is not <annotation>): image dropped"
    assert "root:x" not in _everything(result)


def test_coco_file_linked_outside_the_source_folder_is_refused(tmp_path):
    root = tiny_coco(
        tmp_path / "src", images=[{"id": 1, "file_name": "a.png"}], annotations=[], sizes={"a.png": (8, 8)}
    )
    outside = tmp_path / "elsewhere" / "instances_val.json"
    outside.parent.mkdir()
    outside.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
        )
    )
    (root / "annotations" / "instances_val.json").symlink_to(outside)
    with pytest.raises(
        ValueError,
        match=r"instances_val.json: not a readable COCO JSON file \(it resolves outside .*pass the file itself as SOURCE",
    ):
        ingest(root, fmt="coco", out=tmp_path / "snap")
    # Named as SOURCE, the user chose it: it is read where it is.
    assert (
        ingest(outside, fmt="coco", out=tmp_path / "snap", images=root / "images" / "train").snapshot.images.height == 1
    )


# Defect 4: a FIFO (any non-regular file) is never opened for reading.


def test_fifos_in_place_of_images_and_annotation_files_are_refused(tmp_path):
    coco = tiny_coco(
        tmp_path / "coco",
        images=[{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "f.png"}],
        annotations=[],
        sizes={"a.png": (8, 8)},
    )
    os.mkfifo(coco / "images" / "train" / "f.png")
    snap = ingest(coco, fmt="coco", out=tmp_path / "s1").snapshot
    assert snap.images.height == 1
    assert (
        _reasons(snap)["image id 2"] == "not a regular file, a FIFO: not opened: image dropped with its 0 annotations"
    )

    yolo = _yolo(tmp_path / "yolo")
    os.mkfifo(yolo / "labels" / "train" / "a.txt")
    os.mkfifo(yolo / "images" / "train" / "c.png")  # a folder listing includes it, the header check refuses it
    snap = ingest(yolo, fmt="yolo", out=tmp_path / "s2").snapshot
    assert snap.images.get_column("file_name").to_list() == ["images/train/b.png"]
    reasons = _reasons(snap)
    assert (
        reasons["images/train/a.png"]
        == "label file not read (not a regular file, a FIFO): image dropped, its boxes are unknown"
    )
    assert reasons["images/train/c.png"].startswith("not a regular file, a FIFO: not opened")

    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    png(voc / "JPEGImages" / "a.png", 8, 8)
    (voc / "Annotations" / "a.xml").write_text("<annotation><filename>a.png</filename></annotation>")
    os.mkfifo(voc / "Annotations" / "b.xml")
    snap = ingest(voc, fmt="voc", out=tmp_path / "s3").snapshot
    assert (
        snap.images.height == 1
        and _reasons(snap)["image b"] == "annotation file not read (not a regular file, a FIFO): image dropped"
    )

    folder = tmp_path / "folder"
    png(folder / "cat" / "1.png", 8, 8)
    os.mkfifo(folder / "cat" / "2.png")
    snap = ingest(folder, fmt="imagefolder", out=tmp_path / "s4").snapshot
    assert snap.images.height == 1 and _reasons(snap)["cat/2.png"].startswith("not a regular file, a FIFO")

    fifo_json = tmp_path / "instances_train.json"
    os.mkfifo(fifo_json)
    with pytest.raises(
        ValueError, match=r"instances_train.json: not a readable COCO JSON file \(not a regular file, a FIFO\)"
    ):
        ingest(fifo_json, fmt="coco", out=tmp_path / "s5", images=coco)
    os.mkfifo(tmp_path / "data.yaml")
    with pytest.raises(ValueError, match=r"data.yaml: YOLO data.yaml not read \(not a regular file, a FIFO\)"):
        ingest(tmp_path / "data.yaml", fmt="yolo", out=tmp_path / "s6")


def test_reads_are_bounded(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"0 0.5 0.5 0.1 0.1\n" * 100)
    with pytest.raises(safeio.SourceFileError, match="too large, 1800 bytes; at most 1000 are read"):
        safeio.read_text(big, limit=1000)
    assert len(safeio.read_text(big, limit=1800)) == 1800


# Defect 5: one bad entry is one quarantine row, never an aborted ingest.


def test_coco_ids_out_of_range_or_not_integers_and_nul_names_are_one_row_each(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 2**40, "height": 8},  # declared width beyond int32: ignored
        {"id": 2**70, "file_name": "b.png"},
        {"id": 1e300, "file_name": "c.png"},
        {"id": "4", "file_name": "d.png"},
        {"id": 4.5, "file_name": "e.png"},
        {"id": 6, "file_name": "f\x00.png"},
        {"id": 7, "file_name": "caf\udce9.png"},  # a lone surrogate: json reads it, Parquet cannot hold it
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {"id": 2**70, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {"id": 3, "image_id": 2**64, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {"id": 4, "image_id": 1, "category_id": 2**70, "bbox": [1, 1, 2, 2]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10**400, "x"]},
    ]
    cats = [{"id": 1, "name": "a"}, {"id": 2**70, "name": "huge"}]
    root = tiny_coco(tmp_path / "src", images=images, annotations=anns, categories=cats, sizes={"a.png": (8, 8)})
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.select("image_id", "width").rows() == [(1, 8)]
    assert snap.annotations.get_column("ann_id").to_list() == [1]
    reasons = _reasons(snap)
    assert reasons["image entry 1"] == "image id 1180591620717411303424 is outside the 64-bit integer range: dropped"
    assert reasons["image entry 2"] == "image id 1e+300 is outside the 64-bit integer range: dropped"
    assert reasons["image entry 3"] == "image id '4' is not an integer: dropped"
    assert reasons["image entry 4"] == "image id 4.5 is not an integer: dropped"
    assert reasons["image id 6"] == "file name 'f\\x00.png' contains a NUL byte: rejected, not opened; image dropped"
    assert reasons["image id 7"] == "file name 'caf\\udce9.png' is not valid UTF-8: rejected, not opened; image dropped"
    assert reasons["annotation entry 1"] == "id 1180591620717411303424 is outside the 64-bit integer range: dropped"
    assert reasons["annotation id 3"] == "image_id 18446744073709551616 is outside the 64-bit integer range: dropped"
    assert reasons["annotation id 4"].startswith("unknown category id 1180591620717411303424")
    assert reasons["annotation id 5"].startswith("annotation 'bbox' is not 4 numbers")
    assert reasons["category entry 1"].startswith("category without an integer 'id'")
    assert snap.quarantine.height == 11


def test_a_non_utf8_file_name_in_an_imagefolder_is_one_row(tmp_path):
    png(tmp_path / "src" / "cat" / "1.png", 8, 8)
    data = (tmp_path / "src" / "cat" / "1.png").read_bytes()
    with open(os.path.join(os.fsencode(tmp_path / "src" / "cat"), b"caf\xe9.png"), "wb") as fh:
        fh.write(data)
    os.mkdir(os.path.join(os.fsencode(tmp_path / "src"), b"\xff\xfe"))
    snap = ingest(tmp_path / "src", fmt="imagefolder", out=tmp_path / "snap").snapshot
    assert snap.images.get_column("file_name").to_list() == ["cat/1.png"] and snap.class_names == ["cat"]
    reasons = snap.quarantine.select("item", "reason").rows()
    assert ("cat/caf\\udce9.png", "file name is not valid UTF-8: skipped, not opened") in reasons
    assert ("folder", "class folder name is not valid UTF-8: its images skipped, not opened") in reasons
    assert snap.quarantine.height == 2


def test_deeply_nested_json_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "src" / "annotations").mkdir(parents=True)
    path = tmp_path / "src" / "annotations" / "instances_train.json"
    path.write_text('{"images": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ValueError) as info:
        ingest(tmp_path / "src", fmt="coco", out=tmp_path / "snap")
    assert str(info.value) == f"{path}: not a readable COCO JSON file (nested too deeply)"


# Memory: streamed hashes, a pixel cap from the header.


def test_header_read_streams_the_file(tmp_path):
    padded = tmp_path / "padded.png"
    png(padded, 16, 16)
    with padded.open("ab") as fh:
        fh.write(b"\0" * (48 << 20))  # 48 MiB of padding after IEND
    tracemalloc.start()
    try:
        header = probe.read_header(padded)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (header.width, header.height) == (16, 16)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 48 MiB file"


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG signature and IHDR claiming w x h, then IEND: a size without pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_pixel_cap_quarantines_huge_images_from_their_header(tmp_path):
    root = tiny_coco(
        tmp_path / "src",
        images=[{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "huge.png"}, {"id": 3, "file_name": "mid.png"}],
        annotations=[],
        sizes={"a.png": (8, 8), "mid.png": (300, 200)},
    )
    (root / "images" / "train" / "huge.png").write_bytes(_png_header_only(12_000, 12_000))  # 144 MP
    snap = ingest(root, fmt="coco", out=tmp_path / "s1").snapshot
    assert sorted(snap.images.get_column("image_id")) == [1, 3]
    assert _reasons(snap)["image id 2"] == (
        "image too large (12000x12000 = 144.0 megapixels, the limit is 64): image dropped with its 0 annotations"
    )
    capped = ingest(root, fmt="coco", out=tmp_path / "s2", max_pixels=50_000).snapshot
    assert capped.images.get_column("image_id").to_list() == [1]
    assert _reasons(capped)["image id 3"].startswith("image too large (300x200 = 0.1 megapixels, the limit is 0.05)")


# Defect 6: COCO split files number their ids apart; they are kept apart.


def _split_file(root: Path, split: str, names: list[str], boxes: list[tuple[int, int, list]]) -> None:
    """instances_<split>.json with images 1..N (``names``) and annotations (ann_id, image_id, bbox)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        png(root / "images" / split / n, 20, 20, seed=i)
    doc = {
        "images": [{"id": i, "file_name": n, "width": 20, "height": 20} for i, n in enumerate(names, start=1)],
        "annotations": [{"id": a, "image_id": im, "category_id": 1, "bbox": b, "area": 4.0} for a, im, b in boxes],
        "categories": [{"id": 1, "name": "digit"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def test_coco_split_files_with_colliding_ids_are_kept_apart(tmp_path):
    root = tmp_path / "src"
    _split_file(root, "train", ["t1.png", "t2.png", "t3.png"], [(1, 1, [0, 0, 2, 2]), (2, 3, [1, 1, 3, 3])])
    _split_file(root, "val", ["v1.png", "v2.png"], [(1, 1, [5, 5, 4, 4]), (2, 2, [6, 6, 2, 2]), (3, 9, [1, 1, 1, 1])])
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    images = snap.images.sort("image_id").select("image_id", "file_name", "split").rows()
    assert images == [
        (1, "images/train/t1.png", "train"),
        (2, "images/train/t2.png", "train"),
        (3, "images/train/t3.png", "train"),
        (4, "images/val/v1.png", "val"),
        (5, "images/val/v2.png", "val"),
    ]
    boxes = (
        snap.annotations.join(snap.images, on="image_id")
        .sort("ann_id")
        .select("ann_id", "file_name", "x1", "x2")
        .rows()
    )
    assert boxes == [
        (1, "images/train/t1.png", 0.0, 2.0),
        (2, "images/train/t3.png", 1.0, 4.0),
        (3, "images/val/v1.png", 5.0, 9.0),
        (4, "images/val/v2.png", 6.0, 8.0),
    ]
    reasons = {(Path(s).name, i): r for s, i, r in snap.quarantine.rows()}
    assert reasons == {
        (
            "instances_val.json",
            "image ids",
        ): "image ids shared with 'instances_train.json' (2 ids): ids are per file, so this file's images are renumbered: new id = source id + 3; their annotations follow",
        (
            "instances_val.json",
            "annotation ids",
        ): "annotation ids shared with 'instances_train.json' (2 ids): this file's annotations are renumbered: new id = source id + 2",
        ("instances_val.json", "annotation id 3"): "refers to unknown image id 9: dropped",
    }


def test_an_annotation_never_lands_on_another_files_image(tmp_path):
    root = tmp_path / "src"
    _split_file(root, "train", ["t1.png"], [(1, 1, [0, 0, 2, 2])])
    _split_file(root, "val", ["v1.png"], [(7, 1, [1, 1, 2, 2])])
    doc = json.loads((root / "annotations" / "instances_val.json").read_text())
    doc["images"][0]["id"] = 2  # disjoint image ids: kept as they are
    doc["annotations"].append({"id": 8, "image_id": 2, "category_id": 1, "bbox": [3, 3, 2, 2]})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.images.sort("image_id").get_column("image_id").to_list() == [1, 2]
    assert snap.annotations.sort("ann_id").select("ann_id", "image_id").rows() == [(1, 1), (8, 2)]
    assert _reasons(snap) == {
        "annotation id 7": "refers to image id 1 of 'instances_train.json', not of this file: dropped"
    }


def test_coco_export_numbers_annotation_ids_from_1(tmp_path):
    root = tmp_path / "src"
    _split_file(root, "train", ["t1.png", "t2.png"], [(0, 1, [0, 0, 2, 2]), (5, 2, [1, 1, 3, 3]), (3, 2, [4, 4, 3, 3])])
    snap = ingest(root, fmt="coco", out=tmp_path / "snap").snapshot
    assert snap.annotations.get_column("ann_id").to_list() == [0, 3, 5]
    from cvcore.data.formats import write_coco

    doc = json.loads(write_coco(snap, tmp_path / "gt.json").ground_truth.read_text())
    assert [(a["id"], a["bbox"]) for a in doc["annotations"]] == [
        (1, [0.0, 0.0, 2.0, 2.0]),
        (2, [4.0, 4.0, 3.0, 3.0]),
        (3, [1.0, 1.0, 3.0, 3.0]),
    ]


# A damaged snapshot is one error naming the file.


def test_a_damaged_snapshot_is_an_error_naming_the_file(tmp_path):
    from cvcore.data.snapshot import SnapshotError, read_snapshot
    from cvcore.data.synthetic import make_shapes_classification

    snap = make_shapes_classification(tmp_path / "snap", n_train=4, n_val=0)
    table = snap.path / "images.parquet"
    data = table.read_bytes()
    table.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match=rf"^{table}: not a readable Parquet table \(.*\); re-create the snapshot$"):
        read_snapshot(snap.path)
    (snap.path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(
        SnapshotError, match=r"manifest.json: not (valid JSON \(nested too deeply\)|a snapshot manifest)"
    ):
        read_snapshot(snap.path)
