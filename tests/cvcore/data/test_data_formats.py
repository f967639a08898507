"""Format readers: the same dataset as COCO, VOC and YOLO gives the same canonical tables;
hand-checked conventions of each format; the COCO writer against pycocotools."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from data_formats_helpers import png, write_coco_folder, write_voc_folder, write_yolo_folder

from cvcore.data.formats import canonical_split, read_coco, read_voc, read_yolo, write_coco
from cvcore.data.ingest import ingest


@pytest.fixture(scope="module")
def three_forms(shapes_detection, tmp_path_factory):
    """The session's synthetic detection snapshot ingested from its COCO, VOC and YOLO forms."""
    root = tmp_path_factory.mktemp("forms")
    sources = {
        "coco": write_coco_folder(shapes_detection, root / "coco"),
        "voc": write_voc_folder(shapes_detection, root / "voc"),
        "yolo": write_yolo_folder(shapes_detection, root / "yolo"),
    }
    return {fmt: ingest(src, fmt=fmt, out=root / f"snap_{fmt}").snapshot for fmt, src in sources.items()}


def _boxes_by_file(snapshot) -> pl.DataFrame:
    """Annotations keyed by image file basename and class name (ids may differ by format)."""
    images = snapshot.images.select(
        "image_id", pl.col("file_name").str.split("/").list.last().alias("file"), "split", "width", "height"
    )
    return (
        snapshot.annotations.join(images, on="image_id")
        .join(snapshot.categories.select("category_id", "name"), on="category_id")
        .select("file", "split", "width", "height", "name", "x1", "y1", "x2", "y2", "iscrowd", "difficult")
        .sort("file", "x1", "y1", "x2", "y2")
    )


def test_coco_voc_yolo_give_identical_canonical_tables(three_forms, shapes_detection):
    reference = _boxes_by_file(shapes_detection)
    for fmt, snap in three_forms.items():
        assert snap.quarantine.is_empty(), (fmt, snap.quarantine)
        assert sorted(snap.class_names) == sorted(shapes_detection.class_names)
        got = _boxes_by_file(snap)
        assert got.height == reference.height, fmt
        for col in ("file", "split", "width", "height", "name", "iscrowd", "difficult"):
            assert got.get_column(col).to_list() == reference.get_column(col).to_list(), (fmt, col)
        for col in ("x1", "y1", "x2", "y2"):
            np.testing.assert_allclose(
                got.get_column(col).to_numpy(),
                reference.get_column(col).to_numpy(),
                rtol=0,
                atol=1e-6,
                err_msg=f"{fmt} {col}",
            )

        # The same image bytes are recorded the same way whatever the annotation format.
        def shas(s):
            return s.images.select(pl.col("file_name").str.split("/").list.last(), "sha256").sort("file_name").rows()

        assert shas(snap) == shas(shapes_detection), fmt

    # Beyond the join on file names: the canonical tables themselves are identical. VOC/YOLO
    # number images by sorted file name and objects in file order, which here is the synthetic
    # set's own numbering (train_* before val_*), so ids match COCO's kept ids; category ids
    # differ only by each format's class order (VOC sorts names), so compare through names.
    def canonical(snap):
        names = snap.categories.select("category_id", "name")
        anns = snap.annotations.join(names, on="category_id").drop("category_id", "area").sort("ann_id")
        return snap.images.drop("file_name").sort("image_id"), anns

    coco_images, coco_anns = canonical(three_forms["coco"])
    for fmt in ("voc", "yolo"):
        images, anns = canonical(three_forms[fmt])
        assert images.equals(coco_images), fmt
        assert anns.select("ann_id", "image_id", "name").equals(coco_anns.select("ann_id", "image_id", "name")), fmt
        diff = anns.select("x1", "y1", "x2", "y2").to_numpy() - coco_anns.select("x1", "y1", "x2", "y2").to_numpy()
        assert np.abs(diff).max() <= 1e-6, fmt
    # VOC and YOLO have no area of their own: theirs is the box's. COCO keeps the source area.
    voc, yolo, coco = (three_forms[f].annotations.sort("x1", "y1", "image_id") for f in ("voc", "yolo", "coco"))
    np.testing.assert_allclose(voc.get_column("area").to_numpy(), yolo.get_column("area").to_numpy(), atol=1e-6)
    assert sorted(coco.get_column("area").to_list()) == sorted(
        shapes_detection.annotations.get_column("area").to_list()
    )


def test_reingesting_any_form_gives_the_same_digest(three_forms, tmp_path):
    for fmt, snap in three_forms.items():
        again = ingest(snap.image_root, fmt=fmt, out=tmp_path / fmt).snapshot
        assert again.digest == snap.digest, fmt


def test_voc_corners_are_one_based_inclusive(tmp_path):
    (tmp_path / "Annotations").mkdir()
    png(tmp_path / "JPEGImages" / "a.png", 20, 10)
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>20</width><height>10</height></size>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>10</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>5.5</xmin><ymin>3</ymin><xmax>7</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )
    raw = read_voc(tmp_path)
    anns = raw.annotations.sort("ann_id")
    # xmin=1..xmax=20 covers all 20 columns: continuous [0, 20].
    assert anns.select("x1", "y1", "x2", "y2").rows() == [(0.0, 1.0, 20.0, 10.0), (4.5, 2.0, 7.0, 4.0)]
    assert anns.get_column("difficult").to_list() == [True, False]
    # names sorted: cat=0, dog=1; source ids 1-based
    assert raw.categories.rows() == [(0, "cat", 1), (1, "dog", 2)]
    assert anns.get_column("category_id").to_list() == [1, 0]
    assert raw.images.row(0, named=True)["file_name"] == "JPEGImages/a.png"


def test_yolo_normalised_centre_boxes_and_polygons(tmp_path):
    png(tmp_path / "images" / "train" / "a.png", 40, 20)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.1 0.1 0.3 0.1 0.3 0.6\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [x, y]\n")
    snap = ingest(tmp_path, fmt="yolo", out=tmp_path / "snap").snapshot
    anns = snap.annotations.sort("ann_id")
    assert anns.select("category_id", "x1", "y1", "x2", "y2").rows() == [
        (1, 10.0, 5.0, 30.0, 15.0),
        (0, 4.0, 2.0, 12.0, 12.0),
    ]
    assert snap.categories.rows() == [(0, "x", 0), (1, "y", 1)]
    assert anns.get_column("area").to_list() == [200.0, 80.0]


def test_coco_keeps_ids_and_orders_categories_by_source_id(tmp_path):
    png(tmp_path / "images" / "val2017" / "p.png", 10, 10)
    (tmp_path / "annotations").mkdir()
    doc = {
        "images": [{"id": 42, "file_name": "p.png", "width": 10, "height": 10}],
        "annotations": [{"id": 7, "image_id": 42, "category_id": 90, "bbox": [1, 2, 3, 4], "area": 5.5, "iscrowd": 1}],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}],
    }
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    raw = read_coco(tmp_path)
    assert raw.categories.rows() == [(0, "car", 3), (1, "zebra", 90)]
    assert raw.images.select("image_id", "file_name", "split").rows() == [(42, "images/val2017/p.png", "val")]
    a = raw.annotations.row(0, named=True)
    assert (
        a["ann_id"],
        a["image_id"],
        a["category_id"],
        a["x1"],
        a["y1"],
        a["x2"],
        a["y2"],
        a["area"],
        a["iscrowd"],
    ) == (
        7,
        42,
        1,
        1.0,
        2.0,
        4.0,
        6.0,
        5.5,
        True,
    )


def test_single_coco_file_with_images_dir(tmp_path):
    png(tmp_path / "pics" / "q.png", 8, 8)
    ann = tmp_path / "labels.json"
    ann.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "q.png"}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
        )
    )
    snap = ingest(ann, fmt="coco", out=tmp_path / "snap", images=tmp_path / "pics").snapshot
    assert snap.images.select("file_name", "width", "split").rows() == [("q.png", 8, "train")]
    assert snap.image_path("q.png") == (tmp_path / "pics" / "q.png").resolve()


def test_canonical_split_names():
    assert [canonical_split(s) for s in ("train2017", "val2012", "Valid", "validation", "test", "trainval")] == [
        "train",
        "val",
        "val",
        "val",
        "test",
        "trainval",
    ]


def test_write_coco_round_trips_through_pycocotools(three_forms, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    snap = three_forms["coco"]
    preds = snap.annotations.select("image_id", "category_id", pl.lit(0.9).alias("score"), "x1", "y1", "x2", "y2")
    files = write_coco(snap, tmp_path / "gt.json", predictions=preds)
    assert files.results == tmp_path / "gt_results.json"
    gt = COCO(str(files.ground_truth))
    assert len(gt.getAnnIds()) == snap.annotations.height
    for a in snap.annotations.head(5).iter_rows(named=True):
        x, y, w, h = gt.loadAnns(a["ann_id"])[0]["bbox"]
        assert (x, y, x + w, y + h) == (a["x1"], a["y1"], a["x2"], a["y2"])
    # Source ids go back out: the COCO reader's ids, not the contiguous ones.
    assert sorted(gt.getCatIds()) == sorted(snap.categories.get_column("source_id").to_list())
    ev = COCOeval(gt, gt.loadRes(str(files.results)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    # And our reader reads our writer: same tables.
    again = ingest(files.ground_truth, fmt="coco", out=tmp_path / "again", images=snap.image_root).snapshot
    assert again.annotations.equals(snap.annotations)
    assert again.categories.equals(snap.categories)


def test_layout_variants_users_ship(tmp_path):
    # VOC: a bare folder of XML files with the images elsewhere (--images).
    xmls = tmp_path / "xmls"
    xmls.mkdir()
    png(tmp_path / "pics" / "a.png", 10, 10)
    (xmls / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )
    voc = ingest(xmls, fmt="voc", out=tmp_path / "voc", images=tmp_path / "pics").snapshot
    assert voc.images.select("file_name", "split").rows() == [("a.png", "train")]
    assert voc.annotations.select("x1", "x2").rows() == [(0.0, 4.0)]

    # VOCdevkit holding one year folder, trainval + test lists only.
    year = tmp_path / "VOCdevkit" / "VOC2007"
    (year / "Annotations").mkdir(parents=True)
    (year / "ImageSets" / "Main").mkdir(parents=True)
    for stem in ("p", "q"):
        png(year / "JPEGImages" / f"{stem}.png", 10, 10)
        (year / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.png</filename></annotation>")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("p\n")
    (year / "ImageSets" / "Main" / "test.txt").write_text("q\n")
    devkit = read_voc(tmp_path / "VOCdevkit")
    assert sorted(devkit.images.select("file_name", "split").rows()) == [
        ("JPEGImages/p.png", "trainval"),
        ("JPEGImages/q.png", "test"),
    ]

    # YOLO: split given as a .txt list of images, names as a list, `path:` pointing at the root.
    yolo = tmp_path / "yolo"
    png(yolo / "data" / "images" / "b.png", 10, 10)
    (yolo / "data" / "labels").mkdir(parents=True)
    (yolo / "data" / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (yolo / "data" / "train.txt").write_text("./images/b.png\n")
    (yolo / "data.yaml").write_text("path: data\ntrain: train.txt\nnames: [thing]\n")
    raw = read_yolo(yolo)
    assert raw.image_root == (yolo / "data").resolve()
    assert raw.images.select("file_name", "split").rows() == [("images/b.png", "train")]
    assert raw.annotations.select("x1", "y1", "x2", "y2").rows() == [(0.4, 0.3, 0.6, 0.7)]

    # COCO as Roboflow exports it: <split>/_annotations.coco.json beside the images.
    rf = tmp_path / "rf" / "valid"
    png(rf / "c.png", 10, 10)
    (rf / "_annotations.coco.json").write_text(
        json.dumps(
            {"images": [{"id": 0, "file_name": "c.png"}], "annotations": [], "categories": [{"id": 0, "name": "obj"}]}
        )
    )
    coco = read_coco(rf / "_annotations.coco.json")
    assert coco.images.select("file_name", "split").rows() == [("c.png", "val")]
