"""The library's one I/O module (cvcore.io): atomic files and folders, confined paths, locations,
snapshots kept at a URI staged locally once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvcore.data.snapshot import read_snapshot
from cvcore.io import (
    TEMPORARY_NAME,
    atomic_folder,
    atomic_output,
    atomic_path,
    atomic_write,
    file_sha256,
    local_snapshot,
    remove_orphan_stagings,
    remove_temporaries,
    resolve_inside,
    resolve_location,
    stage_snapshot,
    staged_path,
)


class Boom(RuntimeError):
    pass


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_binary_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "state.bin"  # the parent folder is created
    with atomic_write(target) as fh:
        fh.write(b"first")
        assert not target.exists()  # nothing at the target until the block ends
        (tmp_file,) = [p for p in target.parent.iterdir()]
        assert TEMPORARY_NAME.match(tmp_file.name) and tmp_file.name.startswith(".state.bin.")
    assert target.read_bytes() == b"first" and _hidden(target.parent) == []
    with atomic_write(target, "wb") as fh:
        fh.write(b"second")
    assert target.read_bytes() == b"second"


def test_atomic_write_text_mode_is_utf8(tmp_path):
    target = tmp_path / "metrics.json"
    with atomic_write(target, "w") as fh:
        json.dump({"name": "Zoë", "mAP": 0.5}, fh, ensure_ascii=False)
    assert target.read_bytes() == '{"name": "Zoë", "mAP": 0.5}'.encode("utf-8")
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with atomic_write(target, "a"):
            pass
    assert json.loads(target.read_text(encoding="utf-8"))["name"] == "Zoë"


def test_an_exception_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")
    with pytest.raises(Boom):
        with atomic_write(target, "w") as fh:
            fh.write("new: half")
            raise Boom()
    assert target.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("new: half")
            raise Boom()
    assert target.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["config.yaml"]
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "never.parquet"):
            raise Boom()
    assert os.listdir(tmp_path) == ["config.yaml"]  # no file where there was none


def test_atomic_path_hands_a_file_name_to_writers_that_take_one(tmp_path):
    target = tmp_path / "table.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tmp" and tmp.is_file()
        pq.write_table(pa.table({"x": [1, 2, 3]}), tmp)
    assert pq.read_table(target).column("x").to_pylist() == [1, 2, 3] and _hidden(tmp_path) == []


def test_temporary_names_stay_legal_for_a_target_at_the_name_limit(tmp_path):
    target = tmp_path / ("é" * 127)  # 254 bytes of UTF-8
    with atomic_write(target) as fh:
        fh.write(b"x")
    assert target.read_bytes() == b"x"


def test_stale_temporaries_of_a_killed_writer_are_removed_once_an_hour_old(tmp_path):
    target = tmp_path / "preds.parquet"
    old, young = tmp_path / ".preds.parquet.abcd1234.tmp", tmp_path / ".preds.parquet.efgh5678.tmp"
    other = tmp_path / ".other.parquet.abcd1234.tmp"  # another file's temporary: not this writer's
    for f in (old, young, other):
        f.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for f in (old, other):
        os.utime(f, (two_hours_ago, two_hours_ago))
    assert remove_temporaries(tmp_path, of=target.name, older_than_s=3600) == [old]
    assert not old.exists() and young.exists() and other.exists()
    assert remove_temporaries(tmp_path / "missing", of="x.parquet", older_than_s=3600) == []
    assert sorted(p.name for p in remove_temporaries(tmp_path)) == [
        other.name,
        young.name,
    ]  # all, at any age (under a lock)
    assert os.listdir(tmp_path) == []


def test_atomic_folder_swaps_a_whole_folder_in_and_keeps_the_old_one_on_an_error(tmp_path):
    out = tmp_path / "snap"
    with atomic_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".snap.") and not out.exists()
        (tmp / "a.txt").write_text("one")
    assert [p.name for p in out.iterdir()] == ["a.txt"] and _hidden(tmp_path) == []
    with pytest.raises(Boom):
        with atomic_folder(out) as tmp:
            (tmp / "b.txt").write_text("two")
            raise Boom()
    assert [p.name for p in out.iterdir()] == ["a.txt"] and _hidden(tmp_path) == []
    with atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert [p.name for p in out.iterdir()] == ["b.txt"] and _hidden(tmp_path) == []  # replaced, the old copy deleted


def test_resolve_inside_refuses_escapes(tmp_path):
    assert resolve_inside(tmp_path, "a/b.png") == tmp_path.resolve() / "a" / "b.png"
    for bad, reason in [
        ("../x.png", "escapes the dataset root"),
        ("/etc/passwd", "not a relative path"),
        ("a\\b.png", "not a relative path"),
        ("", "not a relative path"),
    ]:
        with pytest.raises(ValueError, match=reason):
            resolve_inside(tmp_path, bad)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ValueError, match="'link/x' escapes the dataset root"):
        resolve_inside(tmp_path, "link/x")


def test_file_sha256_is_hashlibs(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"cvflow" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"cvflow" * 1000).hexdigest()


def test_locations_name_their_parent_and_children(tmp_path):
    loc = resolve_location(tmp_path / "preds")
    child = loc.child("part-00000.parquet")
    assert (
        child.name == "part-00000.parquet"
        and child.parent == loc
        and child.uri == str(tmp_path / "preds" / "part-00000.parquet")
    )
    assert resolve_location(tmp_path.as_uri()).is_local


def test_atomic_output_moves_a_finished_stream_into_place_and_deletes_a_failed_one(tmp_path):
    target = resolve_location(tmp_path / "out").child("data.bin")
    with atomic_output(target) as stream:
        stream.write(b"whole")
        assert not (tmp_path / "out" / "data.bin").exists()
    assert (tmp_path / "out" / "data.bin").read_bytes() == b"whole"
    with pytest.raises(Boom):
        with atomic_output(target) as stream:
            stream.write(b"half")
            raise Boom()
    assert (tmp_path / "out" / "data.bin").read_bytes() == b"whole" and os.listdir(tmp_path / "out") == ["data.bin"]


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
    assert [p.name for p in local.parent.iterdir() if p.name.startswith(".")] == [
        f".{local.name}.lock"
    ]  # no temporary left


def test_a_remote_snapshot_must_hold_its_images_and_a_manifest(shapes_detection, tmp_path):
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    manifest = json.loads((remote / "manifest.json").read_text())
    (remote / "manifest.json").write_text(json.dumps(manifest | {"image_root": "/data/images"}))
    with pytest.raises(ValueError, match="image root '/data/images' is absolute"):
        stage_snapshot(remote.as_uri(), home=tmp_path / "home")
    with pytest.raises(ValueError, match="has no manifest.json"):
        stage_snapshot((tmp_path / "bucket").as_uri(), home=tmp_path / "home")


def test_a_worker_restages_a_local_copy_whose_digest_is_not_the_expected_one(shapes_detection, tmp_path):
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    home = tmp_path / "home"
    stale = tmp_path / "stale"  # the flow's staged path, holding other content on this worker
    shutil.copytree(shapes_detection.path, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    (stale / "manifest.json").write_text(json.dumps(manifest | {"digest": "0" * 64}))
    local = local_snapshot(stale, uri=remote.as_uri(), digest=shapes_detection.digest, home=home)
    assert local == staged_path(remote.as_uri(), home=home) and read_snapshot(local).digest == shapes_detection.digest
    assert (
        local_snapshot(local, uri=remote.as_uri(), digest=shapes_detection.digest, home=home) == local
    )  # a matching copy is used as is
    assert (
        local_snapshot(stale, uri=None, digest=shapes_detection.digest, home=home) == stale
    )  # no URI: the path is all there is


def test_staging_folders_of_killed_runs_are_removed_once_nothing_changed_in_them_for_an_hour(tmp_path):
    kept = staged_path("s3://bucket/shapes", home=tmp_path)  # <home>/cache/snapshots/shapes-<12 hex>
    cache = kept.parent
    orphan, busy = cache / f".{kept.name}.k1l_9z0a", cache / f".{kept.name}.0b2c3d4e"  # atomic_folder's mkdtemp names
    # Hidden folders of the user's, just as old: not staging's names, or no staging of that name ever took its lock.
    users = [
        cache / ".git",
        cache / ".shapes-abc.1",
        cache / ".other-0123456789ab.abcdefgh",
        cache / f".{kept.name}.keep",
    ]
    for folder in (orphan, busy, kept, *users):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "0.png").write_bytes(b"png")
    (cache / f".{kept.name}.lock").touch()  # stage_snapshot's lock file, taken before it copies
    two_hours_ago = time.time() - 7200
    for path in [
        p for folder in (orphan, busy, kept, *users) for p in (folder, folder / "images", folder / "images" / "0.png")
    ]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    (busy / "images" / "1.png").write_bytes(b"png")  # deep down, a copy still going on: the top folder's mtime is old
    os.utime(busy / "images", (two_hours_ago, two_hours_ago))
    assert remove_orphan_stagings(cache) == [orphan]
    assert not orphan.exists() and busy.exists() and kept.exists()
    assert all((folder / "images" / "0.png").is_file() for folder in users)  # a user's hidden folder there survives


def test_a_killed_stagings_own_temporary_is_the_one_removed(shapes_detection, tmp_path, monkeypatch):
    """The names remove_orphan_stagings matches are those stage_snapshot really makes (not a hand-made guess)."""
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    home = tmp_path / "home"

    import cvcore.io as io_module

    left = []

    def killed(src, dst):
        left.append(dst)
        raise RuntimeError("killed")  # in the middle of the copy

    monkeypatch.setattr(io_module, "_copy_tree", killed)
    monkeypatch.setattr(io_module.shutil, "rmtree", lambda *a, **k: None)  # as SIGKILL: atomic_folder cannot clean up
    with pytest.raises(RuntimeError, match="killed"):
        stage_snapshot(remote.as_uri(), home=home)
    monkeypatch.undo()
    (temporary,) = left
    assert temporary.is_dir()
    os.utime(temporary, (time.time() - 7200, time.time() - 7200))
    users = temporary.parent / ".my-notes"
    users.mkdir()
    os.utime(users, (time.time() - 7200, time.time() - 7200))
    assert remove_orphan_stagings(temporary.parent) == [temporary]
    assert users.is_dir()


def test_concurrent_stagings_of_one_uri_take_turns(shapes_detection, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    uri, home = remote.as_uri(), tmp_path / "home"
    with ThreadPoolExecutor(4) as pool:
        staged = list(pool.map(lambda _: stage_snapshot(uri, home=home), range(4)))
    assert set(staged) == {staged_path(uri, home=home)} and read_snapshot(staged[0]).digest == shapes_detection.digest
    assert [p.name for p in staged[0].parent.iterdir() if p.name.startswith(".")] == [f".{staged[0].name}.lock"]
