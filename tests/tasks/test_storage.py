"""Snapshots kept at a URI are staged locally once (tasks.storage)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from cvcore.data.snapshot import read_snapshot
from tasks.infer import predict_shard
from tasks.ingest import snapshot_ref
from tasks.storage import file_sha256, local_snapshot, remove_orphan_stagings, stage_snapshot, staged_path


def test_file_sha256_is_hashlibs(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"cvflow" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"cvflow" * 1000).hexdigest()


def test_a_remote_snapshot_is_copied_once_and_again_when_its_digest_changes(shapes_detection, tmp_path):
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    uri, home = remote.as_uri(), tmp_path / "home"
    local = stage_snapshot(uri, home=home)
    assert local == staged_path(uri, home=home) and local.is_relative_to(home / "cache" / "snapshots")
    snap = read_snapshot(local)
    assert snap.digest == shapes_detection.digest
    assert snap.image_path(snap.images["file_name"][0]).is_file()  # the images came along

    marker = local / "marker"
    marker.write_text("a file of the cached copy")
    assert stage_snapshot(uri, home=home) == local and marker.exists()  # same digest: the cache is used

    manifest = json.loads((remote / "manifest.json").read_text())
    (remote / "manifest.json").write_text(json.dumps(manifest | {"digest": "0" * 64}))
    assert stage_snapshot(uri, home=home) == local and not marker.exists()  # new content: copied again
    assert [p.name for p in local.parent.iterdir() if p.name.startswith(".")] == [f".{local.name}.lock"]  # no temporary left


def test_a_remote_snapshot_must_hold_its_images_and_a_manifest(shapes_detection, tmp_path):
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    manifest = json.loads((remote / "manifest.json").read_text())
    (remote / "manifest.json").write_text(json.dumps(manifest | {"image_root": "/data/images"}))
    with pytest.raises(ValueError, match="image root '/data/images' is absolute"):
        stage_snapshot(remote.as_uri(), home=tmp_path / "home")
    with pytest.raises(ValueError, match="has no manifest.json"):
        stage_snapshot((tmp_path / "bucket").as_uri(), home=tmp_path / "home")


def test_a_worker_restages_a_local_copy_whose_digest_is_not_the_refs(shapes_detection, tmp_path):
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    home = tmp_path / "home"
    stale = tmp_path / "stale"  # the flow's staged path, holding other content on this worker
    shutil.copytree(shapes_detection.path, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    (stale / "manifest.json").write_text(json.dumps(manifest | {"digest": "0" * 64}))
    ref = snapshot_ref(read_snapshot(shapes_detection.path)).model_copy(update={"path": stale, "uri": remote.as_uri()})
    local = local_snapshot(ref, home=home)
    assert local == staged_path(remote.as_uri(), home=home) and read_snapshot(local).digest == shapes_detection.digest
    assert local_snapshot(ref.model_copy(update={"path": local}), home=home) == local  # a matching copy is used as is


def test_predict_shard_refuses_a_changed_snapshot_or_another_checkpoint(shapes_classification, checkpoint, tmp_path):
    ref = snapshot_ref(read_snapshot(shapes_classification.path))
    digest = file_sha256(checkpoint)
    kwargs = {"out_dir": tmp_path / "preds", "shard": 0, "num_shards": 2, "device": "cpu"}
    with pytest.raises(ValueError, match=f"changed since the flow opened it.*{ref.digest}"):
        predict_shard.fn(checkpoint, ref.model_copy(update={"digest": "0" * 64}), "val", checkpoint_sha256=digest, **kwargs)
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
    other = shard_key(ref, "val", checkpoint_sha256="c" * 64, shard=1, num_shards=2)  # another run's model, same file name
    write_shard([empty_batch("detection")], tmp_path, key=other, num_images=4)
    with pytest.raises(ValueError, match="part-00001.parquet was replaced by another run.*one evaluation per predictions folder"):
        check_shards(ref, "val", out_dir=tmp_path, **ours)
    (tmp_path / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match="part-00001.parquet was replaced by another run \\(it is gone"):
        check_shards(ref, "val", out_dir=tmp_path, **ours)


def test_staging_folders_of_killed_runs_are_removed_once_nothing_changed_in_them_for_an_hour(tmp_path):
    import os
    import time

    cache = tmp_path / "cache"
    orphan, busy, kept = cache / ".shapes-abc.1", cache / ".shapes-abc.2", cache / "shapes-abc"
    for folder in (orphan, busy, kept):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "0.png").write_bytes(b"png")
    two_hours_ago = time.time() - 7200
    for path in [p for folder in (orphan, busy, kept) for p in (folder, folder / "images", folder / "images" / "0.png")]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    (busy / "images" / "1.png").write_bytes(b"png")  # deep down, a copy still going on: the top folder's mtime is old
    os.utime(busy / "images", (two_hours_ago, two_hours_ago))
    assert remove_orphan_stagings(cache) == [orphan]
    assert not orphan.exists() and busy.exists() and kept.exists()


def test_concurrent_stagings_of_one_uri_take_turns(shapes_detection, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    uri, home = remote.as_uri(), tmp_path / "home"
    with ThreadPoolExecutor(4) as pool:
        staged = list(pool.map(lambda _: stage_snapshot(uri, home=home), range(4)))
    assert set(staged) == {staged_path(uri, home=home)} and read_snapshot(staged[0]).digest == shapes_detection.digest
    assert [p.name for p in staged[0].parent.iterdir() if p.name.startswith(".")] == [f".{staged[0].name}.lock"]
