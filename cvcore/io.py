"""File I/O the whole library shares: atomic writes, confined paths, storage locations, staged snapshots.

**Atomic files.** Every file cvflow writes for a user (checkpoints, run configs, markers, Parquet
tables, plots, JSON reports) appears whole or not at all: it is written to a hidden temporary
sibling ``.<name>.<8 random chars>.tmp`` (``tempfile.mkstemp``; :data:`TEMPORARY_NAME`, the name
run-folder clean-up looks for), then renamed over ``path`` (``os.replace``, atomic on POSIX). An
error or a kill mid-write leaves the previous file, if any, untouched, and the temporary is
removed on an error (:func:`atomic_path`, :func:`atomic_write`); a killed writer's is removed
later (:func:`remove_temporaries`). A folder written as a whole (a
snapshot) is built in a hidden sibling folder and swapped in with renames (:func:`atomic_folder`).

**Locations.** Where predictions and snapshots may live: a local path or a URI that ``pyarrow.fs``
resolves (``s3://bucket/prefix``, ``gs://...``, ``file:///...``); credentials and endpoints come
from the usual environment variables of each store (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for S3-compatible
servers such as MinIO), which ``pl.scan_parquet`` reads too, so one URI works for writing and
reading (:class:`Location`, :func:`resolve_location`, :func:`atomic_output`).

**Staged snapshots.** Models read pixels from local files, so a snapshot kept at a URI is copied
once per machine into ``<CVFLOW_HOME>/cache/snapshots/`` (the manifest, the Parquet tables and
the snapshot's own ``images/`` folder) and reused while its content digest equals the remote
manifest's (:func:`stage_snapshot`). The remote snapshot must keep its images inside it (a
relative image root): an absolute image root names a folder of the machine that made it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

# The hidden temporary of a file being written by atomic_path / atomic_write (mkstemp's 8 random
# characters of [a-z0-9_]): ``.last.pt.k3j_x9a2.tmp``.
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# A temporary untouched this long belongs to a killed writer: a live one writes far more often,
# so removing older ones never pulls a file from under a concurrent writer.
ORPHAN_AGE_S = 3600
# Longest file name most file systems take (bytes); temporary names are cut to stay under it.
NAME_MAX = 255


# ---------------------------------------------------------------------------------------------
# Atomic files and folders (local file systems)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write ``path`` through; renamed over ``path`` on success.

    For writers that take a file name (``pq.ParquetWriter``, ``os.link``, ``shutil.copyfile``,
    ``PIL.Image.save``): the temporary exists (empty) when yielded and may be replaced by the
    writer. The parent folder is created. On an exception the temporary is deleted and ``path``
    is left as it was. The data is not fsynced (use :func:`atomic_write` for that).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{_cut(path.name, 40)}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; fsync and rename it over ``path`` on success.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``encoding`` defaults to UTF-8). Usage::

        with atomic_write(run_dir / "metrics.json", "w") as fh:
            json.dump(metrics, fh)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield a new empty hidden folder beside ``out``; on success it becomes ``out``, on an error it is deleted.

    The folder is ``.<out name>.<random>`` (``tempfile.mkdtemp`` on the same file system; the
    name cut so it stays a legal file name). An existing ``out`` (the caller decides whether it
    may be replaced) is first renamed into another fresh hidden folder, the new one renamed in,
    and only then the old one deleted: ``out`` is missing for two renames, never half-written,
    and no other folder is ever deleted. The parent folder is created.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_folder(out)
    try:
        yield tmp
        if not (out.exists() or out.is_symlink()):
            tmp.rename(out)
            return
        trash = _temp_folder(out)
        out.rename(trash / "old")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _temp_folder(out: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{_cut(out.name, 32)}.", dir=out.parent))


def _cut(name: str, reserve: int) -> str:
    """``name`` cut to ``NAME_MAX - reserve`` UTF-8 bytes (whole characters), room for a prefix and suffix."""
    return name.encode("utf-8", "surrogateescape")[: NAME_MAX - reserve].decode("utf-8", "ignore")


def remove_temporaries(folder: str | Path, *, of: str | None = None, older_than_s: float = 0.0) -> list[Path]:
    """Delete the hidden temporaries killed writers left directly in ``folder``; the deleted paths.

    Temporaries are :func:`atomic_path`'s ``.<name>.<8 chars>.tmp`` (:data:`TEMPORARY_NAME`): those
    of the file named ``of``, or all of them. With ``older_than_s`` > 0 only those last modified
    over that many seconds ago go (a live writer's are younger; :data:`ORPHAN_AGE_S`); 0 deletes
    them all, for a caller that holds the folder's lock (no other writer there).
    """
    folder = Path(folder)
    pattern = TEMPORARY_NAME if of is None else re.compile(rf"^\.{re.escape(_cut(of, 40))}\.[a-z0-9_]{{8}}\.tmp$")
    cutoff = time.time() - older_than_s
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in os.scandir(folder):
        try:
            if not (pattern.match(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            if older_than_s <= 0 or entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            continue  # removed meanwhile by another clean-up
    if removed:
        log.info(
            "removed %d temporary file(s) of killed writers from %s: %s",
            len(removed),
            folder,
            [p.name for p in removed],
        )
    return removed


# ---------------------------------------------------------------------------------------------
# Local paths


def is_plain_name(name: object) -> bool:
    """True when ``name`` is one plain path component (a split or snapshot name that becomes a
    folder name): a non-empty string, not ``.`` or ``..``, without ``/``, ``\\`` or NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def existing_output(path: str | Path, *, kind: str) -> bool:
    """Whether an output ``path`` (a ``kind`` of file, e.g. "PNG file") already holds a regular file.

    False when nothing is there; True for a regular file (links followed), which the caller
    replaces only after checking it wrote that file itself. A folder, FIFO, device or dangling
    link there is a ValueError naming ``path``: a rename over it would replace what is not a file.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of the {kind} to write")
    if not path.is_file():
        raise ValueError(f"refusing to overwrite {path}: it exists and is not a regular file; choose another path")
    return True


def resolve_inside(root: str | Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing anything that escapes ``root``.

    Absolute paths, ``..`` components, backslashes and symlinks leading outside are rejected with
    a ValueError naming the file name before any file is opened.
    """
    if not relative or os.path.isabs(relative) or Path(relative).is_absolute() or "\\" in relative:
        raise ValueError(f"file name {relative!r} is not a relative path inside {root}")
    root_resolved = Path(root).resolve()
    target = (root_resolved / relative).resolve()
    if not target.is_relative_to(root_resolved):
        raise ValueError(f"file name {relative!r} escapes the dataset root {root}")
    return target


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest (64 characters) of a file's bytes, read in chunks by ``hashlib.file_digest``."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------
# Locations: local folders and object stores


@dataclass(frozen=True)
class Location:
    """A file or folder on some file system: ``fs`` + ``path`` for pyarrow, ``uri`` for polars and people.

    ``uri`` is an absolute local path for local files, else the URI as given (``s3://b/p``).
    """

    fs: pafs.FileSystem
    path: str
    uri: str

    def child(self, name: str) -> "Location":
        """The location ``name`` inside this folder (``name`` is one path component)."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a single file name inside {self.uri}")
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.uri.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        """The last path component (``part-00000.parquet``)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        """The folder holding this location."""
        path, uri = self.path.rstrip("/").rsplit("/", 1)[0], self.uri.rstrip("/").rsplit("/", 1)[0]
        return Location(self.fs, path or "/", uri or "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` locations (object stores, ``file://``), False for plain paths."""
    return isinstance(location, str) and "://" in location


def resolve_location(location: str | Path) -> Location:
    """The file system and path behind a local path or a URI (``s3://``, ``gs://``, ``file://``).

    Raises ValueError naming the location when pyarrow knows no file system for its scheme, or
    when the URI has a query or fragment (``s3://b/p?region=...``): file names are appended to
    the URI, which would put them inside the query, and polars reads the options differently;
    the region and endpoint come from ``AWS_DEFAULT_REGION`` / ``AWS_ENDPOINT_URL``.
    """
    if not is_uri(location):
        path = str(Path(location).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), path, path)
    parts = urlsplit(str(location))
    if parts.query or parts.fragment or str(location).rstrip("/").endswith(("?", "#")):
        raise ValueError(
            f"{location}: a storage URI must not carry options after '?' or '#'; set the endpoint and region in "
            "the environment instead (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION; for other stores their own variables)"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(str(location))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"cannot open {location}: {exc}") from None
    uri = path if isinstance(fs, pafs.LocalFileSystem) else str(location).rstrip("/")
    return Location(fs, path.rstrip("/"), uri)


def as_location(location: str | Path | Location) -> Location:
    """``location`` itself when it is a Location, else :func:`resolve_location` of it."""
    return location if isinstance(location, Location) else resolve_location(location)


@contextmanager
def atomic_output(target: Location) -> Iterator[pa.NativeFile]:
    """An output stream to a hidden temporary beside ``target``, moved onto ``target`` when the block ends.

    The temporary is ``.<name>.<32 hex digits>.tmp`` (``uuid4``). The move is an atomic rename
    locally and a server-side copy on object stores, where an object appears whole or not at
    all; an exception in the block deletes the temporary and re-raises. Local parent folders are
    created (object stores have none).
    """
    tmp = target.parent.child(f".{target.name}.{uuid.uuid4().hex}.tmp")
    if target.is_local:
        target.fs.create_dir(target.parent.path, recursive=True)
    try:
        with target.fs.open_output_stream(tmp.path) as stream:
            yield stream
        target.fs.move(tmp.path, target.path)
    except BaseException:
        delete_quietly(tmp)
        raise


def delete_quietly(file: Location) -> None:
    """Delete ``file``; nothing happens when it is already gone or cannot be deleted (clean-up only)."""
    try:
        file.fs.delete_file(file.path)
    except (FileNotFoundError, OSError):
        pass  # already gone, or never created: nothing to clean up


# ---------------------------------------------------------------------------------------------
# Snapshots kept at a URI, staged locally


def staged_path(uri: str, *, home: str | Path) -> Path:
    """The local cache folder of the snapshot at ``uri``: ``<home>/cache/snapshots/<name>-<12 hex of sha256(uri)>``."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in uri.rstrip("/").rsplit("/", 1)[-1]) or "snapshot"
    return Path(home) / "cache" / "snapshots" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def stage_snapshot(uri: str, *, home: str | Path) -> Path:
    """A local copy of the snapshot folder at ``uri`` (copied when missing or out of date); its path.

    Every file under the remote folder is copied, each confined to the local folder (a key
    with ``..`` or an absolute name is refused). The copy is made in a hidden sibling folder and
    swapped into place (:func:`atomic_folder`), so a crash never leaves a half-staged snapshot;
    processes of one machine staging the same URI at once take turns (a lock file
    ``.<name>.lock`` beside the copy). Raises ValueError naming the URI when it holds no
    ``manifest.json``, the manifest has no digest, or its image root is absolute.
    """
    src = resolve_location(uri)
    try:
        with src.fs.open_input_stream(src.child("manifest.json").path) as fh:
            manifest = json.loads(fh.read())
    except FileNotFoundError:
        raise ValueError(f"{uri} is not a snapshot: it has no manifest.json") from None
    image_root = str(manifest.get("image_root", ""))
    if os.path.isabs(image_root) or is_uri(image_root):
        raise ValueError(
            f"{uri}: the snapshot's image root {manifest['image_root']!r} is absolute; a remote snapshot must keep its images inside it"
        )
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
        remove_orphan_stagings(dst.parent)
        with atomic_folder(dst) as tmp:
            files = _copy_tree(src, tmp)
    log.info("staged %s (%d files) into %s", uri, files, dst)
    return dst


def _copy_tree(src: Location, dst: Path) -> int:
    """Copy every file under ``src`` into the local folder ``dst`` (keys confined to it); the number of files."""
    infos = [
        i for i in src.fs.get_file_info(pafs.FileSelector(src.path, recursive=True)) if i.type == pafs.FileType.File
    ]
    for info in infos:
        target = resolve_inside(dst, info.path[len(src.path) :].lstrip("/"))  # ValueError for keys that would escape
        target.parent.mkdir(parents=True, exist_ok=True)
        with src.fs.open_input_stream(info.path) as fin, open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
    return len(infos)


def local_snapshot(path: str | Path, *, uri: str | None, digest: str, home: str | Path) -> Path:
    """The snapshot folder on this machine: ``path``, or a staged copy of ``uri``.

    A Dask worker on another machine does not have the flow's staged copy; it stages its own.
    With a ``uri``, ``path`` is used only while its manifest's digest is ``digest``: a copy of
    other content there (an older staging, another snapshot) is staged again, and the caller
    still compares the result's digest (the remote snapshot may have changed since).
    """
    manifest = Path(path) / "manifest.json"
    if uri is None or (manifest.is_file() and _manifest_digest(manifest) == digest):
        return Path(path)
    return stage_snapshot(uri, home=home)


_STAGING_LOCK = re.compile(r"^\.(?P<name>.+-[0-9a-f]{12})\.lock$")  # stage_snapshot's lock of staged_path's name
_STAGING_TEMPORARY = re.compile(r"^(?P<prefix>\..+)\.[a-z0-9_]{8}$")  # _temp_folder: mkdtemp's 8 random characters


def remove_orphan_stagings(cache: str | Path, *, older_than_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Delete the hidden staging folders in ``cache`` in which nothing changed for ``older_than_s`` seconds.

    :func:`stage_snapshot` copies into a hidden sibling of its copy ``<name>-<12 hex>`` and renames
    it; a killed process leaves it behind. Only the names staging makes are candidates: the
    :func:`atomic_folder` temporaries ``.<name>-<12 hex>.<8 chars>`` (the name cut as it cuts
    it) of a copy whose lock file ``.<name>-<12 hex>.lock`` is in ``cache`` (every staging
    takes it first); any other hidden folder (a user's) is left alone. The newest modification
    time anywhere inside counts (a folder's own mtime does not change while files are written
    deeper down), so a copy still in progress in another process is kept. Returns the deleted folders.
    """
    cache = Path(cache)
    cutoff = time.time() - older_than_s
    entries = sorted(cache.iterdir()) if cache.is_dir() else []
    staged = [m["name"] for e in entries if (m := _STAGING_LOCK.match(e.name)) and e.is_file()]
    temporaries = {
        f".{_cut(name, 32)}" for name in staged
    }  # _temp_folder's prefix, before mkdtemp's "." and 8 characters
    removed = []
    for entry in entries:
        if (
            (m := _STAGING_TEMPORARY.match(entry.name)) and m["prefix"] in temporaries
            and entry.is_dir() and not entry.is_symlink() and _newest_mtime(entry) < cutoff
        ):  # fmt: skip
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


def _manifest_digest(manifest: Path) -> str | None:
    """The ``digest`` of a manifest.json, None when the file is unreadable or has none."""
    try:
        return json.loads(manifest.read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        return None  # a broken cached copy: stage it again
