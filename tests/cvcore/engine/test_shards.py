"""Prediction shards: streamed, atomic, self-describing files (cvcore.engine.shards)."""

from __future__ import annotations

import shutil

import polars as pl
import pyarrow as pa
import pytest

from cvcore import schema
from cvcore.engine.infer import ROW_GROUP_ROWS, empty_batch
from cvcore.engine.shards import (
    ShardKey,
    check_predictions_folder,
    find_complete_shard,
    list_shards,
    read_shard,
    remove_orphan_temporaries,
    remove_stale_shards,
    shard_name,
    write_shard,
)
from cvcore.io import resolve_location


def _key(shard: int = 0, *, num_shards: int = 2, checkpoint: str = "a" * 64, split: str = "val") -> ShardKey:
    return ShardKey(
        checkpoint_sha256=checkpoint,
        snapshot_digest="b" * 64,
        split=split,
        shard=shard,
        num_shards=num_shards,
        task="detection",
    )


def _batch(image_ids: list[int]) -> pa.RecordBatch:
    rows = [
        {"image_id": i, "category_id": i % 3, "score": 0.5, "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0}
        for i in image_ids
    ]
    return pa.RecordBatch.from_pylist(rows, schema=schema.arrow_schema("detections"))


def test_a_shard_round_trips_with_its_key_and_reads_with_scan_parquet(tmp_path):
    written = write_shard(
        [_batch([1, 2]), empty_batch("detection"), _batch([3])], tmp_path / "preds", key=_key(1), num_images=4
    )
    assert written.uri == str(tmp_path / "preds" / "part-00001.parquet") and written.num_rows == 3
    assert read_shard(written.uri) == written
    assert find_complete_shard(tmp_path / "preds", _key(1)) == written
    assert find_complete_shard(tmp_path / "preds", _key(0)) is None  # no file for shard 0
    shutil.copy(written.uri, tmp_path / "preds" / shard_name(0))  # shard 1's file under shard 0's name
    assert find_complete_shard(tmp_path / "preds", _key(0)) is None  # another shard: refused
    (tmp_path / "preds" / shard_name(0)).unlink()
    assert find_complete_shard(tmp_path / "preds", _key(1, checkpoint="c" * 64)) is None  # another model
    assert find_complete_shard(tmp_path / "preds", _key(1, num_shards=3)) is None  # another sharding
    frame = pl.scan_parquet(tmp_path / "preds" / "part-*.parquet").collect()
    assert frame.schema == schema.DETECTIONS and frame["image_id"].to_list() == [1, 2, 3]
    assert [p.name for p in (tmp_path / "preds").iterdir()] == ["part-00001.parquet"]  # no temporary left


def test_an_empty_shard_is_a_complete_file_with_the_schema(tmp_path):
    written = write_shard([], tmp_path, key=_key(0), num_images=0)
    assert written.num_rows == 0 and pl.read_parquet(written.uri).schema == schema.DETECTIONS
    assert find_complete_shard(tmp_path, _key(0)) == written


def test_large_shards_are_written_in_several_row_groups(tmp_path):
    import pyarrow.parquet as pq

    n = ROW_GROUP_ROWS // 4 + 1
    written = write_shard(
        (_batch(list(range(i * n, (i + 1) * n))) for i in range(8)), tmp_path, key=_key(0), num_images=8 * n
    )
    meta = pq.read_metadata(written.uri)
    assert meta.num_rows == 8 * n and meta.num_row_groups == 2  # 4 batches fill a group; memory holds one group


def test_a_failure_midway_leaves_no_file_at_all(tmp_path):
    def batches():
        yield _batch([1])
        raise RuntimeError("the model crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        write_shard(batches(), tmp_path, key=_key(0), num_images=2)
    assert list(tmp_path.iterdir()) == []
    assert find_complete_shard(tmp_path, _key(0)) is None


def test_a_batch_of_another_schema_is_refused_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="part-00000.parquet.*detections schema"):
        write_shard([empty_batch("classification")], tmp_path, key=_key(0), num_images=1)
    assert list(tmp_path.iterdir()) == []


def test_files_that_are_not_shards_are_not_complete(tmp_path):
    pl.DataFrame({"image_id": [1]}).write_parquet(tmp_path / shard_name(0))  # a Parquet file without our metadata
    (tmp_path / shard_name(1)).write_bytes(b"not parquet")
    assert read_shard(tmp_path / shard_name(0)) is None and read_shard(tmp_path / shard_name(1)) is None
    assert read_shard(tmp_path / "missing.parquet") is None


def test_an_error_reaching_a_shard_propagates_instead_of_making_it_stale(tmp_path, monkeypatch):
    from cvcore.engine import shards

    ours = write_shard([_batch([1])], tmp_path, key=_key(0), num_images=1)

    def unreachable(*args, **kwargs):
        raise OSError("When reading information for key 'p/part-00000.parquet': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(shards.pq, "read_metadata", unreachable)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        read_shard(ours.uri)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        remove_stale_shards(tmp_path, key=_key(1))
    monkeypatch.undo()
    assert find_complete_shard(tmp_path, _key(0)) == ours  # still there


def test_stale_shards_of_another_sharding_are_removed_and_ours_kept(tmp_path):
    # Before the data-loss audit another model's shards were deleted here too; they are now refused (next test).
    ours = write_shard([_batch([1])], tmp_path, key=_key(0), num_images=1)
    shutil.copy(ours.uri, tmp_path / shard_name(1))  # shard 0 of these predictions under shard 1's name
    write_shard(
        [_batch([3])], tmp_path, key=ShardKey("a" * 64, "b" * 64, "val", 2, 3, "detection"), num_images=1
    )  # 3 shards
    spark = tmp_path / "part-00000-5e3b2c1a-4d2f-4b8e-9a41-0c3c3f1e2d7a-c000.snappy.parquet"
    pl.DataFrame({"image_id": [4]}).write_parquet(spark)  # another tool's part file: not listed, kept
    (tmp_path / "notes.txt").write_text("kept: not a part file")
    removed = remove_stale_shards(tmp_path, key=_key(1))
    assert sorted(removed) == [str(tmp_path / shard_name(i)) for i in (1, 2)]
    assert [loc.uri for loc in list_shards(tmp_path)] == [ours.uri]
    assert (tmp_path / "notes.txt").exists() and spark.exists()


@pytest.mark.parametrize(
    "other",
    [{"checkpoint_sha256": "c" * 64}, {"snapshot_digest": "d" * 64}, {"split": "test"}],
    ids=["another-model", "another-snapshot", "another-split"],
)
def test_shards_of_another_model_or_data_are_refused_and_nothing_is_deleted(tmp_path, other):
    import dataclasses
    import re

    ours = write_shard(
        [_batch([1])], tmp_path, key=_key(0, num_shards=3), num_images=1
    )  # another sharding of ours: fine alone
    theirs = dataclasses.replace(_key(1), **other)
    write_shard([_batch([2])], tmp_path, key=theirs, num_images=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    held = f"checkpoint {theirs.checkpoint_sha256[:12]}, snapshot {theirs.snapshot_digest[:12]}, split {theirs.split!r}"
    expected = (
        f"predictions folder {tmp_path} holds another evaluation's predictions (part-00001.parquet: {held}; "
        f"this one: checkpoint {'a' * 12}, snapshot {'b' * 12}, split 'val'); pass another predictions folder (--predictions) or delete it"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        remove_stale_shards(tmp_path, key=_key(1))
    assert {
        p.name: p.read_bytes() for p in tmp_path.iterdir()
    } == before  # ours of the other sharding too: nothing went
    if "snapshot_digest" not in other:  # the pre-flight before a source is ingested: the snapshot is not known yet
        with pytest.raises(ValueError, match=re.escape(f"part-00001.parquet: {held}")):
            check_predictions_folder(tmp_path, checkpoint_sha256="a" * 64, split="val")
    with pytest.raises(
        ValueError,
        match=re.escape(f"part-00000.parquet: checkpoint {'a' * 12}, snapshot {'b' * 12}, split 'val'; this one"),
    ):
        check_predictions_folder(
            tmp_path,
            checkpoint_sha256=theirs.checkpoint_sha256,
            split=theirs.split,
            snapshot_digest=theirs.snapshot_digest,
        )
    (tmp_path / shard_name(1)).unlink()
    assert check_predictions_folder(tmp_path, checkpoint_sha256="a" * 64, split="val") == [read_shard(ours.uri)]
    assert check_predictions_folder(tmp_path / "missing", checkpoint_sha256="a" * 64, split="val") == []


def test_a_shard_with_a_malformed_record_is_refused_not_deleted(tmp_path):
    import pyarrow.parquet as pq

    bad = tmp_path / shard_name(0)
    pq.write_table(pa.table({"image_id": [1]}).replace_schema_metadata({"cvflow.shard": b"{not json"}), bad)
    with pytest.raises(
        ValueError, match=f"holds {bad} with a malformed cvflow shard record; pass another predictions folder"
    ):
        remove_stale_shards(tmp_path, key=_key(1))
    assert bad.exists()


@pytest.mark.parametrize("content", [b"not parquet", None], ids=["not-parquet", "parquet-without-key"])
def test_a_part_file_cvflow_did_not_write_is_refused_not_deleted(tmp_path, content):
    foreign = tmp_path / shard_name(3)
    if content is None:
        pl.DataFrame({"image_id": [4]}).write_parquet(foreign)
    else:
        foreign.write_bytes(content)
    with pytest.raises(ValueError, match=f"{foreign} is not a cvflow shard; choose an empty folder"):
        remove_stale_shards(tmp_path, key=_key(1))
    assert foreign.exists()


def test_locations_resolve_paths_and_file_uris_and_refuse_escapes(tmp_path):
    assert resolve_location(tmp_path).uri == str(tmp_path)
    assert resolve_location(tmp_path.as_uri()).path == str(tmp_path)
    with pytest.raises(ValueError, match="single file name"):
        resolve_location(tmp_path).child("../x")
    with pytest.raises(ValueError, match="cannot open"):
        resolve_location("nosuchscheme://bucket/x")
    with pytest.raises(ValueError, match="outside"):
        _key(2, num_shards=2)


@pytest.mark.parametrize(
    "uri", ["s3://b/p/?region=eu-west-1&endpoint_override=localhost:9000", "s3://b/p#frag", "gs://b/p?"]
)
def test_uris_with_options_are_refused_naming_the_environment_variables(uri):
    with pytest.raises(ValueError, match=r"must not carry options.*AWS_ENDPOINT_URL, AWS_DEFAULT_REGION") as info:
        resolve_location(uri)
    assert uri in str(info.value)


def test_temporaries_of_killed_runs_are_removed_once_an_hour_old(tmp_path):
    import os
    import time

    old, young = tmp_path / f".part-00002.parquet.{'1' * 32}.tmp", tmp_path / f".part-00003.parquet.{'2' * 32}.tmp"
    unrelated = tmp_path / ".part-notes.tmp"
    for f in (old, young, unrelated):
        f.write_bytes(b"half a shard")
    two_hours_ago = time.time() - 7200
    for f in (old, unrelated):
        os.utime(f, (two_hours_ago, two_hours_ago))
    assert remove_orphan_temporaries(tmp_path) == [str(old)]
    assert not old.exists() and young.exists() and unrelated.exists()  # a young one may be a concurrent writer's
    assert remove_orphan_temporaries(tmp_path / "missing") == []
