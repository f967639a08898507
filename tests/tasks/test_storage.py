"""The pipeline's snapshot and checkpoint checks around storage: fetch-snapshot (tasks.storage) and the shard
tasks' refusals (tasks.infer). The staging itself is tested with cvcore.io (tests/cvcore/test_io.py)."""

from __future__ import annotations

import pytest

from cvcore.data.snapshot import read_snapshot
from cvcore.io import file_sha256
from tasks.infer import predict_shard
from tasks.ingest import snapshot_ref
from tasks.storage import fetch_snapshot


def test_predict_shard_refuses_a_changed_snapshot_or_another_checkpoint(shapes_classification, checkpoint, tmp_path):
    ref = snapshot_ref(read_snapshot(shapes_classification.path))
    digest = file_sha256(checkpoint)
    kwargs = {"out_dir": tmp_path / "preds", "shard": 0, "num_shards": 2, "device": "cpu"}
    with pytest.raises(ValueError, match=f"changed since the flow opened it.*{ref.digest}"):
        predict_shard.fn(
            checkpoint, ref.model_copy(update={"digest": "0" * 64}), "val", checkpoint_sha256=digest, **kwargs
        )
    with pytest.raises(ValueError, match=f"{checkpoint}.*not the checkpoint the flow hashed.*{digest}"):
        predict_shard.fn(checkpoint, ref, "val", checkpoint_sha256="f" * 64, **kwargs)
    assert not (tmp_path / "preds").exists() or not list((tmp_path / "preds").iterdir())  # nothing labelled wrongly
    done = predict_shard.fn(checkpoint, ref, "val", checkpoint_sha256=digest, **kwargs)
    assert done.predicted == (0,) and done.num_images == 8


def test_check_shards_fails_when_another_run_replaced_a_shard(shapes_detection, tmp_path):
    from cvcore.engine.infer import empty_batch
    from cvcore.engine.shards import write_shard
    from tasks.infer import check_shards, shard_key

    ref = snapshot_ref(read_snapshot(shapes_detection.path))
    ours = {"checkpoint_sha256": "a" * 64, "num_shards": 2}
    for i in range(2):
        write_shard([empty_batch("detection")], tmp_path, key=shard_key(ref, "val", shard=i, **ours), num_images=4)
    check_shards(ref, "val", out_dir=tmp_path, **ours)  # all ours: no error
    other = shard_key(
        ref, "val", checkpoint_sha256="c" * 64, shard=1, num_shards=2
    )  # another run's model, same file name
    write_shard([empty_batch("detection")], tmp_path, key=other, num_images=4)
    with pytest.raises(
        ValueError, match="part-00001.parquet was replaced by another run.*one evaluation per predictions folder"
    ):
        check_shards(ref, "val", out_dir=tmp_path, **ours)
    (tmp_path / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match="part-00001.parquet was replaced by another run \\(it is gone"):
        check_shards(ref, "val", out_dir=tmp_path, **ours)


def test_fetch_snapshot_opens_a_local_folder_or_file_uri_in_place(shapes_detection, tmp_path):
    home = tmp_path / "home"
    for location in (str(shapes_detection.path), shapes_detection.path.as_uri()):
        ref = fetch_snapshot.fn(location, home=home)
        assert ref.digest == shapes_detection.digest and ref.path == shapes_detection.path.resolve() and ref.uri is None
    assert not home.exists()  # nothing staged for a local snapshot
