"""Snapshots kept at a URI are staged locally once (tasks.storage)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from cvcore.data.snapshot import read_snapshot
from tasks.storage import file_sha256, stage_snapshot, staged_path


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
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_remote_snapshot_must_hold_its_images_and_a_manifest(shapes_detection, tmp_path):
    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_detection.path, remote)
    manifest = json.loads((remote / "manifest.json").read_text())
    (remote / "manifest.json").write_text(json.dumps(manifest | {"image_root": "/data/images"}))
    with pytest.raises(ValueError, match="image root '/data/images' is absolute"):
        stage_snapshot(remote.as_uri(), home=tmp_path / "home")
    with pytest.raises(ValueError, match="has no manifest.json"):
        stage_snapshot((tmp_path / "bucket").as_uri(), home=tmp_path / "home")
