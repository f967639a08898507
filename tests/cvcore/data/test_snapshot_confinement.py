"""A snapshot someone else made (copied, downloaded, edited) cannot make cvflow read or write
outside it: its manifest's fields are checked when it is read, a row whose file name leads
outside the image root is skipped (that image alone, with its reason), and offline augmentation
writes only inside the new snapshot whatever the file names say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from cvcore.data.snapshot import SnapshotError, read_snapshot


@pytest.fixture
def copy(shapes_classification, tmp_path) -> Path:
    out = tmp_path / "snap"
    shutil.copytree(shapes_classification.path, out)
    return out


def with_manifest(folder: Path, **fields) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | fields))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"image_root": "../../.."}, "the relative image root '../../..' leads outside the snapshot folder"),
        ({"image_root": "images/../../x"}, "leads outside the snapshot folder"),
        ({"image_root": 5}, "image_root is int, not a string"),
        ({"image_root": None}, "image_root is NoneType, not a string"),
        ({"task": "segmentation"}, "task is 'segmentation', not 'detection' or 'classification'"),
        ({"name": ["x"]}, "name is list, not a string"),
        ({"digest": None}, "digest is NoneType, not a string"),
    ],
)
def test_a_manifest_with_bad_fields_is_an_error_naming_it(copy, fields, message):
    with_manifest(copy, **fields)
    with pytest.raises(SnapshotError, match="not a valid snapshot manifest") as info:
        read_snapshot(copy)
    assert str(info.value).startswith(f"{copy / 'manifest.json'}: ")
    assert message in str(info.value)


def test_inner_and_absolute_image_roots_still_read(copy):
    with_manifest(copy, image_root="images/../images")
    assert read_snapshot(copy).image_root.resolve() == (copy / "images").resolve()
    with_manifest(copy, image_root=str((copy / "images").resolve()))  # what ingest writes
    assert read_snapshot(copy).image_root == (copy / "images").resolve()


def escaping_rows(folder: Path, split: str) -> dict[int, str]:
    """Give three rows of ``split`` file names that lead outside the image root; their ids -> names."""
    (folder / "images" / "out.png").symlink_to("/etc/hostname")
    images = pl.read_parquet(folder / "images.parquet")
    ids = images.filter(pl.col("split") == split).get_column("image_id").head(3).to_list()
    names = dict(zip(ids, ["../../../../etc/passwd", "/etc/passwd", "out.png"]))
    renamed = pl.col("image_id").replace_strict(names, default=pl.col("file_name"), return_dtype=pl.String)
    images.with_columns(file_name=renamed).write_parquet(folder / "images.parquet")
    return names


def test_rows_leading_outside_the_image_root_are_skipped_alone(copy):
    from cvcore.data.torch_dataset import ClassificationDataset
    from cvcore.engine.infer import unreadable_reason

    names = escaping_rows(copy, "val")
    dataset = ClassificationDataset(read_snapshot(copy), "val")  # was a ValueError for the whole split
    refused = {int(dataset.image_ids[i]): dataset.refused[i] for i in dataset.refused}
    assert {i: name for i, (name, _) in refused.items()} == names
    for index in dataset.refused:
        assert dataset[index] is None
        assert "dataset root" in unreadable_reason(dataset, index) or "not a relative path" in unreadable_reason(
            dataset, index
        )
    readable = [i for i in range(len(dataset)) if i not in dataset.refused]
    assert len(readable) == len(dataset) - 3 and all(dataset[i] is not None for i in readable[:5])


def test_predictions_record_the_skipped_rows(copy, tmp_path):
    from cvcore.config import EvalConfig, RunConfig
    from cvcore.engine.checkpoint import LoadedModel
    from cvcore.engine.infer import predict_checkpoint, write_predictions
    from cvcore.engine.shards import read_unreadable_shards
    from cvcore.models import build_model

    names = escaping_rows(copy, "val")
    snapshot = read_snapshot(copy)
    model = build_model("resnet18", num_classes=4, img_size=16)
    meta = {
        "model_name": "resnet18", "task": "classification", "num_classes": 4, "class_names": snapshot.class_names, "img_size": 16,
        "options": {}, "config": RunConfig().model_dump(mode="json"),
    }  # fmt: skip
    run = predict_checkpoint(
        LoadedModel(model=model, meta=meta, path=tmp_path / "model.pt"),
        snapshot,
        "val",
        eval_config=EvalConfig(),
        batch_size=16,
        device="cpu",
    )
    path = write_predictions(run.batches, tmp_path / "p.parquet", task="classification", unreadable=run.unreadable)
    assert pl.read_parquet(path).height == snapshot.split_images("val").height - 3
    unreadable = read_unreadable_shards([path])
    assert dict(unreadable.select("image_id", "file_name").iter_rows()) == names


def test_materialize_writes_only_inside_the_new_snapshot(shapes_detection, tmp_path):
    """A file name that resolves inside the image root through a link, but whose text climbs out
    of ``images/source/`` in the new snapshot, once made augment overwrite a user's file beside it."""
    from cvcore.augment.stage import run_augment_stage
    from cvcore.config import AugmentConfig

    work = tmp_path / "work"
    src = work / "snap"
    shutil.copytree(shapes_detection.path, src)
    deep = src / "images" / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (src / "images" / "deep").symlink_to(deep)
    images = pl.read_parquet(src / "images.parquet")
    row = images.filter(pl.col("split") == "val").row(0, named=True)
    # Resolved, deep/../../../../../NAME is images/NAME (inside the root); joined as text to the
    # new snapshot's temporary images/source/, it climbs source, images, the temporary, out/: work/NAME.
    crafted = "deep/../../../../../" + row["file_name"]
    assert (src / "images" / crafted).resolve() == (src / "images" / row["file_name"]).resolve()
    images.with_columns(
        file_name=pl.when(pl.col("image_id") == row["image_id"]).then(pl.lit(crafted)).otherwise(pl.col("file_name"))
    ).write_parquet(src / "images.parquet")
    victim = work / row["file_name"]
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"a user's file")
    target = work / "out" / "aug"
    stats = run_augment_stage(src, AugmentConfig(preset="light"), preview_path=tmp_path / "p.png", split="train", n_preview=1,
                              n_stats=2, materialize=1, out=target, img_size=32)  # fmt: skip
    assert victim.read_bytes() == b"a user's file"
    assert sorted(p.name for p in work.iterdir()) == sorted(["snap", "out", victim.relative_to(work).parts[0]])
    new = read_snapshot(stats.snapshot)
    kept = new.images.filter(pl.col("split") == "val")
    assert kept.height == images.filter(pl.col("split") == "val").height
    for name in kept.get_column("file_name"):
        assert new.image_path(name).is_file() and new.image_path(name).resolve().is_relative_to(target.resolve())


@pytest.mark.parametrize("split", ["../../../escaped", "a/b", "..", ""])
def test_a_split_name_that_is_not_a_plain_name_is_refused_on_read_and_write(copy, split):
    """A split name becomes a folder (augment --materialize wrote ``images/<split>/*.png``, so
    ``../../../escaped`` put 200 PNGs beside --out); read and write refuse it in one line."""
    from cvcore.data.snapshot import write_snapshot

    images = pl.read_parquet(copy / "images.parquet")
    hostile = images.with_columns(
        split=pl.when(pl.col("split") == "val").then(pl.lit(split)).otherwise(pl.col("split"))
    )
    hostile.write_parquet(copy / "images.parquet")
    with pytest.raises(SnapshotError, match="is not a plain name") as info:
        read_snapshot(copy)
    assert str(info.value).startswith(f"{copy}: images.parquet: split name {split!r}")
    with pytest.raises(SnapshotError, match="is not a plain name"):
        write_snapshot(copy.parent / "new", name="x", task="classification", source_format="test", image_root="images", images=hostile,
                       categories=pl.read_parquet(copy / "categories.parquet"), labels=pl.read_parquet(copy / "labels.parquet"))  # fmt: skip
    assert not (copy.parent / "new").exists()


def test_materialize_with_ids_at_the_int64_limit_is_one_line_before_writing(copy, tmp_path):
    """Materialised images get ids above the snapshot's highest: at int64's maximum that overflowed
    in polars (a traceback, after the work); now a ValueError naming the snapshot, nothing written."""
    from cvcore.augment.stage import run_augment_stage
    from cvcore.config import AugmentConfig

    top = 2**63 - 1
    for table in ("images", "labels"):
        frame = pl.read_parquet(copy / f"{table}.parquet")
        last = frame.get_column("image_id").max()
        frame.with_columns(
            image_id=pl.when(pl.col("image_id") == last).then(pl.lit(top, pl.Int64)).otherwise(pl.col("image_id"))
        ).write_parquet(copy / f"{table}.parquet")
    out = tmp_path / "aug"
    with pytest.raises(ValueError, match=f"image_id values go up to {top}, leaving no room for"):
        run_augment_stage(copy, AugmentConfig(preset="light"), preview_path=tmp_path / "p.png", split="train", n_preview=1, n_stats=2,
                          materialize=1, out=out, img_size=32)  # fmt: skip
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".aug")]


def test_a_copied_snapshot_with_duplicate_image_ids_is_an_error_naming_the_id(copy):
    """Two rows with one image_id would share predictions and ground truth; write_snapshot refused
    them, read_snapshot read them silently."""
    images = pl.read_parquet(copy / "images.parquet")
    val = images.filter(pl.col("split") == "val").get_column("image_id")
    images.with_columns(
        image_id=pl.when(pl.col("image_id") == val[1]).then(val[0]).otherwise(pl.col("image_id"))
    ).write_parquet(copy / "images.parquet")
    with pytest.raises(SnapshotError, match=f"^{copy}: images.parquet: duplicate image_id {val[0]} "):
        read_snapshot(copy)


def test_a_split_whose_every_file_name_leads_outside_is_an_error(copy):
    """Skipping rows one by one must not turn into a training that "finishes" on no image."""
    from cvcore.data.torch_dataset import ClassificationDataset

    images = pl.read_parquet(copy / "images.parquet")
    images.with_columns(
        file_name=pl.when(pl.col("split") == "val").then(pl.lit("../../x.png")).otherwise(pl.col("file_name"))
    ).write_parquet(copy / "images.parquet")
    with pytest.raises(
        ValueError, match=f"^{copy}: every image file name of split 'val' leads outside the image root, e.g. "
    ):
        ClassificationDataset(read_snapshot(copy), "val")
    assert len(ClassificationDataset(read_snapshot(copy), "train")) > 0


def test_replace_refuses_a_snapshot_holding_files_it_did_not_write(tmp_path):
    """--replace deleted the whole folder: predictions, a bake-off or notes kept inside went with it."""
    from cvcore.data.synthetic import make_shapes_classification

    out = tmp_path / "snap"
    make_shapes_classification(out, n_train=4, n_val=4, seed=0)
    make_shapes_classification(out, n_train=4, n_val=4, seed=1, replace=True)  # a snapshot alone: replaced
    (out / "notes.md").write_text("mine\n")
    (out / "runs" / "r1").mkdir(parents=True)
    with pytest.raises(
        SnapshotError, match=f"^refusing to replace {out}: it holds files a snapshot does not \\(notes.md, runs\\)"
    ):
        make_shapes_classification(out, n_train=4, n_val=4, seed=2, replace=True)
    assert (out / "notes.md").read_text() == "mine\n" and (out / "runs" / "r1").is_dir()


def test_a_huge_manifest_is_not_read_whole(copy):
    (copy / "manifest.json").write_text('{"name": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(
        SnapshotError, match=f"^{copy / 'manifest.json'}: larger than 1048576 bytes, not a snapshot manifest$"
    ):
        read_snapshot(copy)
