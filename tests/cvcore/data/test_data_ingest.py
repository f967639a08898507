"""ingest(): snapshots written atomically with a stable digest, seeded stratified splits, the
health report, the torch Datasets over ingested data, and the synthetic data's exact boxes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from data_formats_helpers import png, tiny_coco, write_coco_folder

from cvcore.data.health import format_health, health_report
from cvcore.data.ingest import ingest
from cvcore.data.snapshot import SnapshotError, read_snapshot
from cvcore.data.split import classification_strata, detection_strata, stratified_split
from cvcore.data.torch_dataset import ClassificationDataset, DetectionDataset, collate_classification, collate_detection


@pytest.fixture(scope="module")
def coco_source(shapes_detection, tmp_path_factory):
    return write_coco_folder(shapes_detection, tmp_path_factory.mktemp("coco") / "src")


def test_reingest_gives_the_same_digest_and_a_change_gives_another(coco_source, tmp_path):
    a = ingest(coco_source, fmt="coco", out=tmp_path / "a").snapshot
    b = ingest(coco_source, fmt="coco", out=tmp_path / "b").snapshot
    assert a.digest == b.digest
    assert a.manifest["counts"]["images"] == a.images.height and a.manifest["source_format"] == "coco"

    changed = tmp_path / "changed"
    shutil.copytree(coco_source, changed)
    victim = changed / "images" / "train" / a.images.row(0, named=True)["file_name"].split("/")[-1]
    png(victim, 64, 64, seed=123)  # same size, other pixels: only the sha256 changes
    c = ingest(changed, fmt="coco", out=tmp_path / "c").snapshot
    assert c.digest != a.digest
    assert c.annotations.equals(a.annotations)


def test_existing_output_is_refused_unless_replace(coco_source, tmp_path):
    ingest(coco_source, fmt="coco", out=tmp_path / "snap")
    with pytest.raises(SnapshotError, match="already exists"):
        ingest(coco_source, fmt="coco", out=tmp_path / "snap")
    again = ingest(coco_source, fmt="coco", out=tmp_path / "snap", replace=True).snapshot
    assert read_snapshot(tmp_path / "snap").digest == again.digest


def test_a_failed_write_leaves_no_snapshot_and_no_temporary_folder(coco_source, tmp_path, monkeypatch):
    calls = []
    real = pl.DataFrame.write_parquet

    def failing(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing)
    with pytest.raises(SnapshotError, match=r"snap: cannot write the snapshot \(disk full\)"):
        ingest(coco_source, fmt="coco", out=tmp_path / "out" / "snap")
    assert list((tmp_path / "out").iterdir()) == []


def test_val_fraction_splits_a_single_split_source_seeded_and_stratified(tmp_path):
    # 40 images: class "a" on 30 of them, rare class "b" on 10 (with an "a" too), 10 without objects.
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(1, 51)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 3, 3]} for i in range(1, 41)]
    anns += [{"id": 100 + i, "image_id": i, "category_id": 3, "bbox": [4, 4, 2, 2]} for i in range(31, 41)]
    root = tiny_coco(
        tmp_path / "src", images=images, annotations=anns, sizes={f"{i}.png": (8, 8) for i in range(1, 51)}
    )
    first = ingest(root, fmt="coco", out=tmp_path / "s1", val_fraction=0.2, seed=3).snapshot
    again = ingest(root, fmt="coco", out=tmp_path / "s2", val_fraction=0.2, seed=3).snapshot
    other = ingest(root, fmt="coco", out=tmp_path / "s3", val_fraction=0.2, seed=4).snapshot
    assert first.digest == again.digest and first.images.equals(again.images)
    assert not first.images.equals(other.images)

    val = first.split_images("val").get_column("image_id").to_list()
    assert len(val) == 10
    # Strata (rarest class per image): only-a 1..30 -> 6 val, b 31..40 -> 2 val, empty 41..50 -> 2 val.
    assert sum(i <= 30 for i in val) == 6 and sum(31 <= i <= 40 for i in val) == 2 and sum(i > 40 for i in val) == 2


def test_val_fraction_is_refused_for_multi_split_sources(coco_source, tmp_path):
    with pytest.raises(ValueError, match="already has splits"):
        ingest(coco_source, fmt="coco", out=tmp_path / "s", val_fraction=0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ingest(coco_source, fmt="coco", out=tmp_path / "s", val_fraction=1.5)


def test_stratified_split_largest_remainder_and_strata():
    images = pl.DataFrame({"image_id": list(range(1, 8)), "split": ["train"] * 7})
    strata = pl.Series([0, 0, 0, 1, 1, 2, -1])
    out = stratified_split(images, strata, val_fraction=0.5, seed=0)
    assert out.columns == images.columns and out.get_column("image_id").to_list() == list(range(1, 8))
    split = dict(zip(out.get_column("image_id"), out.get_column("split")))
    assert sum(v == "val" for v in split.values()) == 4  # round(7 * 0.5) = 4 (banker's rounding: 3.5 -> 4)
    assert sum(split[i] == "val" for i in (4, 5)) == 1  # stratum 1: exactly half

    anns = pl.DataFrame({"image_id": [1, 1, 2, 3], "category_id": [0, 1, 0, 0]})
    det = detection_strata(pl.DataFrame({"image_id": [1, 2, 3, 4]}), anns)
    assert det.to_list() == [1, 0, 0, -1]  # image 1 holds the rare class 1
    cls = classification_strata(pl.DataFrame({"image_id": [1, 2]}), pl.DataFrame({"image_id": [2], "category_id": [5]}))
    assert cls.to_list() == [-1, 5]


def test_health_report_counts_and_markdown(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16.0},  # small
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500.0},  # medium
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 10000.0},  # large
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, -1, 2], "area": 1.0},  # quarantined
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [5, 5, -2, 2], "area": 1.0},  # quarantined
    ]
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"}]
    root = tiny_coco(
        tmp_path / "src", images=images, annotations=anns, sizes={n: (120, 120) for n in ("a.png", "b.png", "c.png")}
    )
    result = ingest(root, fmt="coco", out=tmp_path / "snap")
    report = result.report
    assert format_health(report) == format_health(health_report(result.snapshot))
    assert report.num_images == 3 and report.num_objects == 3 and report.num_quarantined == 2
    assert report.classes.select("name", "total").rows() == [("a", 2), ("b", 1)]
    assert report.box_sizes.get_column("annotations").to_list() == [1, 1, 1]
    assert report.quarantine.select("kind", "count").rows() == [("box x2 < x1", 2)]
    assert "1 images have no annotations (background images)" in report.warnings
    text = format_health(report)
    assert "| train | 3 | 3 |" in text
    assert "| box x2 < x1 | 2 | annotation id 4: box x2 < x1 (w=-1): dropped |" in text
    assert "| small (< 32²) | 1 | 33.3% |" in text


def test_detection_dataset_over_an_ingested_snapshot_with_two_workers(coco_source, shapes_detection, tmp_path):
    snap = ingest(coco_source, fmt="coco", out=tmp_path / "snap").snapshot
    ds = DetectionDataset(snap, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_detection)
    seen = {}
    for images, targets in loader:
        for image, target in zip(images, targets):
            assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
            seen[target["image_id"]] = target["boxes"].tolist()
    assert len(seen) == len(ds) == shapes_detection.split_images("train").height
    truth = shapes_detection.annotations.sort("ann_id")
    for image_id, boxes in seen.items():
        expected = truth.filter(pl.col("image_id") == image_id).select("x1", "y1", "x2", "y2").rows()
        assert [tuple(b) for b in boxes] == expected


def test_classification_dataset_over_an_ingested_imagefolder_with_two_workers(tmp_path):
    for i in range(6):
        png(tmp_path / "src" / "train" / ("cat" if i % 2 else "dog") / f"{i}.png", 16, 16, seed=i)
    snap = ingest(tmp_path / "src", fmt="imagefolder", out=tmp_path / "snap").snapshot
    ds = ClassificationDataset(snap, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_classification)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]


def test_synthetic_boxes_are_exactly_the_bounding_boxes_of_their_shapes(shapes_detection):
    # Shapes are painted in one solid colour on a noisy background, 2 px apart: the pixels of
    # that colour near a box must span exactly the box.
    snap = shapes_detection
    anns = snap.annotations
    for row in snap.images.iter_rows(named=True):
        arr = np.asarray(Image.open(snap.image_path(row["file_name"])).convert("RGB"))
        for a in anns.filter(pl.col("image_id") == row["image_id"]).iter_rows(named=True):
            x1, y1, x2, y2 = (int(a[k]) for k in ("x1", "y1", "x2", "y2"))
            assert (x1, y1, x2, y2) == (a["x1"], a["y1"], a["x2"], a["y2"])  # integer pixel edges
            region = arr[y1:y2, x1:x2].reshape(-1, 3)
            colours, counts = np.unique(region, axis=0, return_counts=True)
            colour = colours[counts.argmax()]
            H, W = arr.shape[:2]
            ex1, ey1, ex2, ey2 = max(0, x1 - 2), max(0, y1 - 2), min(W, x2 + 2), min(H, y2 + 2)
            mask = (arr[ey1:ey2, ex1:ex2] == colour).all(axis=-1)
            ys, xs = np.nonzero(mask)
            assert (xs.min() + ex1, ys.min() + ey1, xs.max() + ex1 + 1, ys.max() + ey1 + 1) == (x1, y1, x2, y2)
            assert a["area"] == mask.sum()


def test_ingest_manifest_records_the_image_root(coco_source, tmp_path):
    snap = ingest(coco_source, fmt="coco", out=tmp_path / "snap", name="mine").snapshot
    manifest = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert manifest["name"] == "mine" and manifest["image_root"] == str(coco_source.resolve())
    for f in snap.images.get_column("file_name").head(3):
        assert snap.image_path(f).is_file()
