"""predict: streaming record batches in the predictions schema, boxes in original pixels."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from cvcore import schema
from cvcore.data.torch_dataset import dataset_for
from cvcore.engine.infer import predict, shard_indices, write_predictions
from cvcore.engine.shards import ShardKey, write_shard

from engine_helpers import resize_transform, tiny_classifier


class BoxEcho(nn.Module):
    """A fake detector: per image, a box over the whole input (score 0.9, label 2), a box over its
    top-left quarter (score 0.5, label 1) and a low-score box (0.0005, label 0)."""

    def forward(self, images):
        out = []
        for im in images:
            h, w = im.shape[-2:]
            boxes = torch.tensor([[0, 0, w, h], [0, 0, w / 2, h / 2], [1, 1, 2, 2]], dtype=torch.float32)
            out.append({"boxes": boxes, "labels": torch.tensor([2, 1, 0]), "scores": torch.tensor([0.9, 0.5, 0.0005])})
        return out


def test_classification_rows_match_the_model(shapes_classification):
    ds = dataset_for(shapes_classification, "val", resize_transform(32))
    model = tiny_classifier()
    batches = list(predict(model, ds, task="classification", batch_size=5, device="cpu"))
    assert len(batches) == 4  # 16 images in batches of 5: one record batch per loader batch
    assert all(b.schema == schema.arrow_schema("classifications") for b in batches)
    df = schema.validate(pl.from_arrow(pa.Table.from_batches(batches)), "classifications")
    assert df.get_column("image_id").to_list() == ds.image_ids.tolist()
    with torch.no_grad():
        probs = torch.softmax(model.eval()(torch.stack([ds[i][0] for i in range(len(ds))])), 1).numpy()
    scores = np.stack(df.get_column("scores").to_numpy())
    np.testing.assert_allclose(scores, probs, rtol=1e-5, atol=1e-6)
    assert df.get_column("category_id").to_list() == probs.argmax(1).tolist()
    np.testing.assert_allclose(df.get_column("score").to_numpy(), probs.max(1), rtol=1e-5)


def test_detection_boxes_are_mapped_back_to_original_pixels(shapes_detection):
    # 64 px originals resized to 32 px: every coordinate doubles on the way back.
    ds = dataset_for(shapes_detection, "val", resize_transform(32))
    df = pl.from_arrow(
        pa.Table.from_batches(
            predict(BoxEcho(), ds, task="detection", batch_size=3, device="cpu", score_threshold=0.001)
        )
    )
    df = schema.validate(df, "detections")
    assert df.height == 2 * len(ds)  # the 0.0005 box is below the threshold
    whole = df.filter(pl.col("category_id") == 2)
    assert whole.select("x1", "y1", "x2", "y2").unique().rows() == [(0.0, 0.0, 64.0, 64.0)]
    quarter = df.filter(pl.col("category_id") == 1)
    assert quarter.select("x1", "y1", "x2", "y2").unique().rows() == [(0.0, 0.0, 32.0, 32.0)]
    assert sorted(df.get_column("image_id").unique().to_list()) == sorted(ds.image_ids.tolist())


def test_max_detections_keeps_the_highest_scores(shapes_detection):
    ds = dataset_for(shapes_detection, "val", resize_transform(32))
    df = pl.from_arrow(
        pa.Table.from_batches(
            predict(BoxEcho(), ds, task="detection", batch_size=4, device="cpu", max_detections=1, score_threshold=0.0)
        )
    )
    assert df.height == len(ds) and df.get_column("score").unique().to_list() == [pytest.approx(0.9)]


def test_undecodable_images_are_skipped(corrupt_classification):
    ds = dataset_for(corrupt_classification, "val", resize_transform(32))
    df = pl.from_arrow(
        pa.Table.from_batches(predict(tiny_classifier(), ds, task="classification", batch_size=4, device="cpu"))
    )
    assert df.height == len(ds) - 1
    assert ds.image_ids[0] not in df.get_column("image_id").to_list()


def test_indices_restrict_prediction_to_a_shard(shapes_classification, tmp_path):
    ds = dataset_for(shapes_classification, "val", resize_transform(32))
    parts = []
    for shard in range(3):
        idx = shard_indices(len(ds), num_shards=3, shard=shard)
        parts.append(idx)
        key = ShardKey("a" * 64, "b" * 64, "val", shard, 3, "classification")
        batches = predict(tiny_classifier(), ds, task="classification", batch_size=4, device="cpu", indices=idx)
        assert write_shard(batches, tmp_path, key=key, num_images=len(idx)).key == key
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [i for r in parts for i in r] == list(range(len(ds)))
    df = pl.scan_parquet(tmp_path / "*.parquet").collect()
    assert sorted(df.get_column("image_id").to_list()) == sorted(ds.image_ids.tolist())


def test_write_predictions_is_atomic(tmp_path):
    path = tmp_path / "preds.parquet"

    def failing():
        yield pa.RecordBatch.from_pylist(
            [{"image_id": 1, "category_id": 0, "score": 0.5, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0}],
            schema=schema.arrow_schema("detections"),
        )
        raise RuntimeError("model crashed mid-split")

    with pytest.raises(RuntimeError, match="mid-split"):
        write_predictions(failing(), path)
    assert list(tmp_path.iterdir()) == []  # neither a partial file nor a temp file


def test_empty_predictions_need_a_task_for_their_schema(tmp_path):
    with pytest.raises(ValueError, match="no prediction batches"):
        write_predictions([], tmp_path / "a.parquet")
    path = write_predictions([], tmp_path / "a.parquet", task="detection")
    assert pq.read_schema(path).names == list(schema.DETECTIONS)
    assert pq.ParquetFile(path).metadata.num_rows == 0


def test_batches_are_gathered_into_row_groups(tmp_path, monkeypatch):
    from cvcore.engine import infer

    monkeypatch.setattr(infer, "ROW_GROUP_ROWS", 10)
    row = {"image_id": 1, "category_id": 0, "score": 0.5, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0}
    batches = [pa.RecordBatch.from_pylist([row] * 4, schema=schema.arrow_schema("detections")) for _ in range(7)]
    meta = pq.ParquetFile(write_predictions(batches, tmp_path / "p.parquet")).metadata
    assert meta.num_rows == 28
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [12, 12, 4]


def test_an_unreadable_image_is_reported_with_its_file_and_reason(corrupt_classification, tmp_path):
    from cvcore.engine.infer import Unreadable
    from cvcore.engine.shards import read_unreadable_shards

    ds = dataset_for(corrupt_classification, "val", resize_transform(32))
    found: list[Unreadable] = []
    batches = predict(
        tiny_classifier(), ds, task="classification", batch_size=4, device="cpu", on_unreadable=found.append
    )
    path = write_predictions(batches, tmp_path / "p.parquet", unreadable=found)
    [bad] = found
    assert bad.image_id == int(ds.image_ids[0]) and bad.file_name == ds.paths[0]
    assert "cannot identify image file" in bad.reason  # PIL's own message, not a guess
    assert pl.read_parquet(path).height == len(ds) - 1
    table = read_unreadable_shards([path])
    assert table.schema == {"image_id": pl.Int64, "file_name": pl.String, "reason": pl.String}
    assert table.rows() == [(bad.image_id, bad.file_name, bad.reason)]


def test_shard_footers_carry_the_unreadable_images_and_others_have_none(corrupt_classification, tmp_path):
    from cvcore.engine.infer import Unreadable
    from cvcore.engine.shards import read_shard, read_unreadable_shards

    ds = dataset_for(corrupt_classification, "val", resize_transform(32))
    files = []
    for shard in range(2):
        found: list[Unreadable] = []
        idx = shard_indices(len(ds), num_shards=2, shard=shard)
        key = ShardKey("a" * 64, "b" * 64, "val", shard, 2, "classification")
        batches = predict(
            tiny_classifier(),
            ds,
            task="classification",
            batch_size=4,
            device="cpu",
            indices=idx,
            on_unreadable=found.append,
        )
        files.append(write_shard(batches, tmp_path, key=key, num_images=len(idx), unreadable=found).uri)
        assert read_shard(files[-1]).key == key  # the shard record is untouched by the extra entry
    assert read_unreadable_shards(files[1:]).is_empty()  # the bad image is the split's first: shard 0
    assert read_unreadable_shards(files).get_column("image_id").to_list() == [int(ds.image_ids[0])]


def test_a_killed_writers_old_temporary_is_removed_and_a_young_one_kept(tmp_path):
    import os
    import time

    path = tmp_path / "preds.parquet"
    old, young, other = (
        tmp_path / ".preds.parquet.k1ll3d_x.tmp",
        tmp_path / ".preds.parquet.live0001.tmp",
        tmp_path / ".other.parquet.abcdefgh.tmp",
    )
    for f in (old, young, other):
        f.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for f in (old, other):
        os.utime(f, (two_hours_ago, two_hours_ago))
    write_predictions([], path, task="detection")
    assert not old.exists()  # a killed predict's, hours old
    assert young.exists()  # maybe a concurrent writer's: kept
    assert other.exists()  # another file's temporaries are not this writer's to judge
