"""The source fingerprint that keys the ingest cache: content of annotations, stat of images."""

from __future__ import annotations

import os
from types import SimpleNamespace

from tasks.ingest import _ingest_cache_key, _may_pass, ingest_source, open_snapshot, source_fingerprint


def _source(root):
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"\x89PNG fake pixels")
    (root / "instances.json").write_text('{"images": []}')
    return root


def test_fingerprint_follows_content_not_location(tmp_path):
    a, b = _source(tmp_path / "a"), _source(tmp_path / "b")
    st = os.stat(a / "images" / "a.png")
    os.utime(b / "images" / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))  # same file, copied with its times
    assert source_fingerprint(a) == source_fingerprint(b)


def test_fingerprint_changes_with_annotations_or_touched_images(tmp_path):
    src = _source(tmp_path / "s")
    before = source_fingerprint(src)
    (src / "instances.json").write_text('{"images": [1]}')
    after_annotations = source_fingerprint(src)
    st = os.stat(src / "images" / "a.png")
    os.utime(src / "images" / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after_image = source_fingerprint(src)
    assert len({before, after_annotations, after_image}) == 3
    assert source_fingerprint(src, None) == after_image  # an absent image folder adds nothing


def test_cache_key_is_the_fingerprint_and_the_options(tmp_path):
    params = {"source": tmp_path / "coco.json", "fmt": "coco", "home": tmp_path, "fingerprint": "f" * 64, "name": "d"}
    key = _ingest_cache_key(None, params)
    assert key.startswith("ingest-" + "f" * 64)
    assert _ingest_cache_key(None, params | {"source": tmp_path / "elsewhere.json"}) == key  # location does not matter
    assert _ingest_cache_key(None, params | {"fmt": "voc"}) != key
    assert _ingest_cache_key(None, params | {"val_fraction": 0.2}) != key


def test_a_bad_source_or_snapshot_is_not_retried():
    # A ValueError (an unusable source, a damaged snapshot) fails at once; an OSError may pass.
    assert not _may_pass(None, None, SimpleNamespace(data=ValueError("no usable image")))
    assert _may_pass(None, None, SimpleNamespace(data=OSError("stale file handle")))
    assert ingest_source.retry_condition_fn is _may_pass and open_snapshot.retry_condition_fn is _may_pass
