"""Where the pipeline's files live: checkpoint digests and snapshots kept on an object store.

A snapshot may sit at a URI (``s3://bucket/snapshots/shapes``, see cvcore.engine.shards for the
schemes and the environment variables that configure them). Models read pixels from local files,
so such a snapshot is staged once per machine into ``<CVFLOW_HOME>/cache/snapshots/``: the
manifest, the Parquet tables and the snapshot's own ``images/`` folder. A cached copy is reused
while its content digest equals the remote manifest's. The remote snapshot must keep its images
inside it (a relative image root): an absolute image root names a folder of the machine that
made it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
from prefect import task
from prefect.cache_policies import NO_CACHE

from cvcore.data.snapshot import read_snapshot, resolve_inside
from cvcore.engine.shards import ORPHAN_AGE_S, Location, is_uri, resolve_location
from tasks.ingest import snapshot_ref
from tasks.refs import SnapshotRef

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (read in chunks by hashlib.file_digest)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def staged_path(uri: str, *, home: Path) -> Path:
    """The local cache folder of the snapshot at ``uri``: ``<home>/cache/snapshots/<name>-<hash>``."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in uri.rstrip("/").rsplit("/", 1)[-1]) or "snapshot"
    return Path(home) / "cache" / "snapshots" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def stage_snapshot(uri: str, *, home: Path) -> Path:
    """A local copy of the snapshot folder at ``uri`` (copied when missing or out of date).

    Every file under the remote folder is copied, each confined to the local folder (a key
    with ``..`` or an absolute name is refused). The copy is made in a temporary sibling and
    renamed into place, so a crash never leaves a half-staged snapshot; processes of one machine
    staging the same URI at once take turns (a lock file beside the copy). Raises ValueError
    naming the URI when it holds no ``manifest.json`` or its image root is absolute.
    """
    src = resolve_location(uri)
    manifest_loc = src.child("manifest.json")
    try:
        with src.fs.open_input_stream(manifest_loc.path) as fh:
            manifest = json.loads(fh.read())
    except FileNotFoundError:
        raise ValueError(f"{uri} is not a snapshot: it has no manifest.json") from None
    if os.path.isabs(str(manifest.get("image_root", ""))) or is_uri(str(manifest.get("image_root", ""))):
        raise ValueError(f"{uri}: the snapshot's image root {manifest['image_root']!r} is absolute; a remote snapshot must keep its images inside it")
    dst = staged_path(uri, home=home)
    digest = manifest.get("digest")
    if digest is None:
        raise ValueError(f"{uri}: manifest.json has no digest; it is not a snapshot cvflow wrote")
    if _manifest_digest(dst / "manifest.json") == digest:
        return dst  # the common case, without taking the lock
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Dask workers (or threads) of one machine stage the same URI at once: one copies while the
    # others wait, then find the copy up to date. flock is released when the file is closed,
    # also when the process dies; the lock file itself stays (deleting it would race).
    with open(dst.parent / f".{dst.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _manifest_digest(dst / "manifest.json") == digest:
            return dst  # staged by whoever held the lock before us
        files = _copy_into_place(src, dst)
    log.info("staged %s (%d files) into %s", uri, files, dst)
    return dst


def _copy_into_place(src: Location, dst: Path) -> int:
    """Copy every file under ``src`` into a hidden sibling of ``dst``, then swap it in; the number of files.

    The old copy is renamed aside (one rename), the new one renamed in (one rename), and only
    then the old one deleted, so ``dst`` is missing for two renames, never half-written.
    """
    remove_orphan_stagings(dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        infos = [i for i in src.fs.get_file_info(pafs.FileSelector(src.path, recursive=True)) if i.type == pafs.FileType.File]
        for info in infos:
            relative = info.path[len(src.path) :].lstrip("/")
            target = resolve_inside(tmp, relative)  # ValueError for keys that would escape the folder
            target.parent.mkdir(parents=True, exist_ok=True)
            with src.fs.open_input_stream(info.path) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout, length=1 << 20)
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex}"
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return len(infos)


def remove_orphan_stagings(cache: Path, *, older_than_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Delete the hidden staging folders in ``cache`` in which nothing changed for ``older_than_s``.

    stage_snapshot copies into a hidden sibling (``.<name>.<random>``) and renames it; a killed
    process leaves it behind. The newest modification time anywhere inside counts (a folder's own
    mtime does not change while files are written deeper down), so a copy still in progress in
    another process is kept. Returns the deleted folders.
    """
    cutoff = time.time() - older_than_s
    removed = []
    for entry in sorted(cache.iterdir()) if cache.is_dir() else []:
        if entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink() and _newest_mtime(entry) < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        log.info("removed %d staging folder(s) of killed runs: %s", len(removed), [str(p) for p in removed])
    return removed


def _newest_mtime(folder: Path) -> float:
    """The latest mtime (seconds) of ``folder`` and everything under it (links not followed)."""
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue  # removed while walking
    return newest


def local_snapshot(ref: SnapshotRef, *, home: Path) -> Path:
    """The snapshot folder of ``ref`` on this machine: its path, or a staged copy of its URI.

    A Dask worker on another machine does not have the flow's staged copy; it stages its own.
    With a URI, ``ref.path`` is used only while its manifest's digest is ``ref.digest``: a copy
    of other content there (an older staging, another snapshot) is staged again, and the caller
    still compares the result's digest (the remote snapshot may have changed since).
    """
    manifest = Path(ref.path) / "manifest.json"
    if ref.uri is None or (manifest.is_file() and _manifest_digest(manifest) == ref.digest):
        return Path(ref.path)
    return stage_snapshot(ref.uri, home=home)


def _manifest_digest(manifest: Path) -> str | None:
    """The ``digest`` of a manifest.json, None when the file is unreadable or has none."""
    try:
        return json.loads(manifest.read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        return None  # a broken cached copy: stage it again


@task(name="fetch-snapshot", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def fetch_snapshot(location: str, *, home: Path) -> SnapshotRef:
    """Open the snapshot at ``location``: a local folder, or an object-store URI staged locally."""
    if not is_uri(location) or resolve_location(location).is_local:  # a path, or file:// (no copy needed)
        return snapshot_ref(read_snapshot(resolve_location(location).path))
    path = stage_snapshot(location, home=home)
    return snapshot_ref(read_snapshot(path)).model_copy(update={"uri": location})
