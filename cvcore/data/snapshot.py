"""Dataset snapshots: a folder of canonical Parquet tables plus ``manifest.json`` (docs/ARCHITECTURE.md §3).

A snapshot is written atomically (a temporary sibling folder, then renames: cvcore.io.atomic_folder) and carries a
content digest over its tables and image hashes, so re-ingesting unchanged data gives the same
digest. Images are not copied: the manifest records the image root, and ``file_name`` is relative
to it. A relative ``image_root`` is relative to the snapshot folder itself (snapshots that make
new pixels keep them in their own ``images/``).

Replacing a folder deletes what was in it, so it has one rule (:func:`check_replaceable`), used
by every writer that replaces a folder it was given: only a cvflow snapshot may be replaced (its
``manifest.json`` says so), and never one that holds, contains or lies inside a protected path
(the source being ingested, its image root).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import polars as pl

from cvcore import schema
from cvcore.io import NAME_MAX, atomic_folder, is_plain_name, resolve_inside

Task = Literal["detection", "classification"]

_SORT_KEYS = {
    "images": ["image_id"],
    "categories": ["category_id"],
    "annotations": ["ann_id"],
    "labels": ["image_id"],
    "quarantine": ["source", "item", "reason"],
}


class SnapshotError(ValueError):
    """A snapshot folder is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot. Tables are eager polars frames in their schema (cvcore.schema)."""

    path: Path
    manifest: dict
    images: pl.DataFrame
    categories: pl.DataFrame
    annotations: pl.DataFrame | None  # detection snapshots
    labels: pl.DataFrame | None  # classification snapshots
    quarantine: pl.DataFrame

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def task(self) -> Task:
        return self.manifest["task"]

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def num_classes(self) -> int:
        return self.categories.height

    @property
    def class_names(self) -> list[str]:
        return self.categories.sort("category_id").get_column("name").to_list()

    @property
    def image_root(self) -> Path:
        root = Path(self.manifest["image_root"])
        return root if root.is_absolute() else (self.path / root)

    @property
    def splits(self) -> list[str]:
        return sorted(self.images.get_column("split").unique().to_list())

    def split_images(self, split: str) -> pl.DataFrame:
        """The images of one split, sorted by image_id. Raises SnapshotError for an unknown split."""
        rows = self.images.filter(pl.col("split") == split).sort("image_id")
        if rows.is_empty():
            raise SnapshotError(f"{self.path}: no images in split {split!r}; splits are {self.splits}")
        return rows

    def image_path(self, file_name: str) -> Path:
        """Absolute path of an image, confined to the image root (see resolve_inside)."""
        return resolve_inside(self.image_root, file_name)


# What a manifest written by write_snapshot always has; a user's folder with some other
# manifest.json (a web app's, a tool's) lacks them.
_MANIFEST_KEYS = ("name", "task", "schema_version", "digest", "image_root")
_MANIFEST_MAX_BYTES = 1 << 20  # a snapshot manifest is a few hundred bytes
# What snapshot writers put in a snapshot folder: the tables, the manifest, and the extra files of
# snapshots that make pixels (images/, augment.json). Anything else there was put by someone else.
_SNAPSHOT_ENTRIES = frozenset(
    {"manifest.json", "augment.json", "images", *(f"{table}.parquet" for table in _SORT_KEYS)}
)


def check_replaceable(out: str | Path, *, protected: Iterable[str | Path] = ()) -> None:
    """Raise SnapshotError unless the existing ``out`` may be deleted and replaced by a new snapshot.

    ``out`` may be replaced only when it is a folder whose ``manifest.json`` is a cvflow
    snapshot's (a JSON object with the keys write_snapshot writes: name, task, schema_version,
    digest, image_root) holding nothing but what snapshot writers put there (files of the user's
    inside, such as predictions or notes, would be deleted with it), and when no ``protected``
    path (a source being read, an image root) is ``out`` itself, inside ``out``, or holds ``out``
    (symlinks resolved). The message is one line naming the folder and why. Nothing is read but
    the manifest (at most 1 MiB) and the folder's listing.
    """
    out = Path(out)
    target = out.resolve()
    for path in protected:
        guarded = Path(path).resolve()
        if guarded == target:
            raise SnapshotError(
                f"refusing to replace {out}: it is {path} itself, which is being read; choose another --out"
            )
        if guarded.is_relative_to(target):
            raise SnapshotError(
                f"refusing to replace {out}: it holds {path}, which is being read; choose another --out"
            )
        if target.is_relative_to(guarded):
            raise SnapshotError(
                f"refusing to replace {out}: it is inside {path}, which is being read; choose another --out"
            )
    if not out.is_dir():
        raise SnapshotError(
            f"refusing to replace {out}: it is not a folder (only a cvflow snapshot folder is replaced); choose another --out"
        )
    why = _not_a_snapshot(out / "manifest.json")
    if why is not None:
        raise SnapshotError(
            f"refusing to replace {out}: it is not a cvflow snapshot ({why}); choose another --out or remove it yourself"
        )
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in _SNAPSHOT_ENTRIES)
    if foreign:  # a results file, a run, notes put inside the snapshot: replacing would delete them
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SnapshotError(
            f"refusing to replace {out}: it holds files a snapshot does not ({shown}); move them out or choose another --out"
        )


def check_out(out: str | Path, *, replace: bool, protected: Iterable[str | Path] = ()) -> None:
    """Raise SnapshotError unless a snapshot may be written at ``out``: it does not exist yet, or
    ``replace`` is true and :func:`check_replaceable` allows replacing it. Writers call this
    before their work, so a refused ``--out`` fails at once, and write_snapshot again at the end."""
    out = Path(out)
    _check_name(out)  # before any stat: a name over the limit makes exists() raise
    if not (out.exists() or out.is_symlink()):
        return
    if not replace:
        raise SnapshotError(f"{out} already exists; choose another --out or pass --replace")
    check_replaceable(out, protected=protected)


def _not_a_snapshot(manifest: Path) -> str | None:
    """Why ``manifest`` does not mark a cvflow snapshot, or None when it does."""
    if not manifest.is_file():
        return "no manifest.json"
    try:
        with manifest.open("rb") as fh:
            data = fh.read(_MANIFEST_MAX_BYTES + 1)
        doc = json.loads(data) if len(data) <= _MANIFEST_MAX_BYTES else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or any(key not in doc for key in _MANIFEST_KEYS):
        return "its manifest.json is not a snapshot manifest"
    return None


def content_digest(tables: dict[str, pl.DataFrame]) -> str:
    """sha256 over the canonical tables (sorted, schema-conformed), image hashes included."""
    h = hashlib.sha256()
    for table in sorted(tables):
        df = tables[table]
        if df is None:
            continue
        keys = [k for k in _SORT_KEYS.get(table, []) if k in df.columns]
        df = df.sort(keys) if keys else df
        h.update(table.encode())
        h.update(df.write_csv(float_precision=9).encode())
    return h.hexdigest()


def write_snapshot(
    out: str | Path,
    *,
    name: str,
    task: Task,
    source_format: str,
    image_root: str | Path,
    images: pl.DataFrame,
    categories: pl.DataFrame,
    annotations: pl.DataFrame | None = None,
    labels: pl.DataFrame | None = None,
    quarantine: pl.DataFrame | None = None,
    extra_files: dict[str, Path] | None = None,
    replace: bool = False,
    protected: Iterable[str | Path] = (),
) -> Snapshot:
    """Validate the tables and write them as a snapshot folder at ``out``, atomically.

    ``extra_files`` maps names inside the snapshot (e.g. ``"images"``) to existing files or
    folders that are moved in before the final rename (used by snapshots that make new pixels).
    An existing ``out`` is an error unless ``replace`` is true, and even then it is replaced
    only when :func:`check_replaceable` allows it, with ``protected`` (e.g. the source that was
    read) and an absolute ``image_root`` as the paths it must not touch. Returns the loaded
    Snapshot.
    """
    out = Path(out)
    absolute_root = [image_root] if Path(image_root).is_absolute() else []
    check_out(out, replace=replace, protected=[*protected, *absolute_root])
    if task == "detection" and annotations is None:
        raise SnapshotError(f"{out}: a detection snapshot needs an annotations table")
    if task == "classification" and labels is None:
        raise SnapshotError(f"{out}: a classification snapshot needs a labels table")
    tables = {
        "images": schema.validate(images, "images"),
        "categories": schema.validate(categories, "categories"),
        "quarantine": schema.validate(
            quarantine if quarantine is not None else schema.empty("quarantine"), "quarantine"
        ),
    }
    if annotations is not None:
        tables["annotations"] = schema.validate(annotations, "annotations")
    if labels is not None:
        tables["labels"] = schema.validate(labels, "labels")
    _check_consistency(out, tables)

    digest = content_digest({k: v for k, v in tables.items() if k != "quarantine"})
    manifest = {
        "name": name,
        "task": task,
        "source_format": source_format,
        "schema_version": schema.SCHEMA_VERSION,
        "counts": {k: v.height for k, v in tables.items()}
        | {"splits": dict(tables["images"].group_by("split").len().sort("split").iter_rows())},
        "digest": digest,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image_root": str(image_root),
    }
    try:
        with atomic_folder(out) as tmp:  # files written inside the new folder, which then replaces ``out`` whole
            for table, df in tables.items():
                df.write_parquet(tmp / f"{table}.parquet")
            for inner, src in (extra_files or {}).items():
                shutil.move(str(src), tmp / inner)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        raise _write_error(out, exc) from None
    return read_snapshot(out)


def check_writable(out: str | Path) -> None:
    """Raise SnapshotError when a snapshot could not be written at ``out``: its name is too long
    for a file name, or the nearest existing folder above it is not writable (read-only mount,
    no permission). Cheap (no file is created); writers call it before their work."""
    out = Path(out)
    _check_name(out)
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SnapshotError(
            f"{out}: cannot write there ({folder} is not a writable folder); choose another --out or CVFLOW_HOME"
        )


def _check_name(out: Path) -> None:
    if len(out.name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise SnapshotError(f"{out}: the folder name is longer than {NAME_MAX} bytes; choose a shorter --out")


def _write_error(out: Path, exc: OSError) -> SnapshotError:
    return SnapshotError(
        f"{out}: cannot write the snapshot ({exc.strerror or exc}); choose another --out or CVFLOW_HOME"
    )


def read_snapshot(path: str | Path) -> Snapshot:
    """Load a snapshot folder. Raises SnapshotError naming the missing or invalid file."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise SnapshotError(f"{path} is not a snapshot: {manifest_path.name} is missing")
    try:
        with manifest_path.open("rb") as fh:
            data = fh.read(_MANIFEST_MAX_BYTES + 1)
        if len(data) > _MANIFEST_MAX_BYTES:
            raise SnapshotError(f"{manifest_path}: larger than {_MANIFEST_MAX_BYTES} bytes, not a snapshot manifest")
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{manifest_path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise SnapshotError(f"{manifest_path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise SnapshotError(f"{manifest_path}: unreadable ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{manifest_path}: not a snapshot manifest (a JSON object expected)")
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise SnapshotError(
            f"{manifest_path}: schema version {manifest.get('schema_version')!r}, "
            f"this cvflow reads {schema.SCHEMA_VERSION}"
        )
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise SnapshotError(f"{manifest_path}: not a valid snapshot manifest ({problem})")

    def load(table: str, required: bool) -> pl.DataFrame | None:
        file = path / f"{table}.parquet"
        if not file.is_file():
            if required:
                raise SnapshotError(f"{path}: {file.name} is missing")
            return None
        try:
            frame = pl.read_parquet(file)
        except (pl.exceptions.PolarsError, OSError) as exc:  # truncated, overwritten, unreadable
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SnapshotError(f"{file}: not a readable Parquet table ({detail}); re-create the snapshot") from None
        return schema.validate(frame, table, source=str(file))

    task = manifest.get("task")
    tables = {
        "images": load("images", True),
        "categories": load("categories", True),
        "annotations": load("annotations", task == "detection"),
        "labels": load("labels", task == "classification"),
    }
    # What write_snapshot checked, again: a copied or edited folder may break it (duplicate ids
    # would mix two images' predictions; a split named ../x would become a folder outside).
    _check_consistency(path, tables)
    return Snapshot(
        path=path,
        manifest=manifest,
        **tables,
        quarantine=load("quarantine", False) if (path / "quarantine.parquet").exists() else schema.empty("quarantine"),
    )


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the fields of a manifest that readers use, or None.

    ``name``, ``digest`` and ``image_root`` are strings and ``task`` is one of the two tasks; a
    relative ``image_root`` stays inside the snapshot folder (no ``..`` out of it: a copied or
    downloaded snapshot must not make readers open files beside or above it).
    """
    for key in ("name", "digest", "image_root"):
        if not isinstance(manifest.get(key), str):
            return f"{key} is {'missing' if key not in manifest else type(manifest[key]).__name__}, not a string"
    if manifest.get("task") not in ("detection", "classification"):
        return f"task is {str(manifest.get('task'))[:40]!r}, not 'detection' or 'classification'"
    root = manifest["image_root"]
    if not os.path.isabs(root) and os.path.normpath(root).split(os.sep)[0] == "..":
        return f"the relative image root {root[:200]!r} leads outside the snapshot folder"
    return None


def _bad_split(images: pl.DataFrame) -> str | None:
    """What is wrong with the split names of an images table, or None.

    A split name becomes a folder name (predictions, plots, materialised images), so it must be one
    plain path component: not empty, ``.`` or ``..``, without ``/``, ``\\`` or NUL.
    """
    for name in images.get_column("split").unique().to_list():
        if not is_plain_name(name):
            return f"split name {str(name)[:80]!r} is not a plain name (it becomes a folder name); rename that split"
    return None


def _check_consistency(out: Path, tables: dict[str, pl.DataFrame]) -> None:
    images, cats = tables["images"], tables["categories"]
    bad = _bad_split(images)
    if bad is not None:
        raise SnapshotError(f"{out}: images.parquet: {bad}")
    duplicated = images.filter(pl.col("image_id").is_duplicated()).get_column("image_id")
    if duplicated.len():
        raise SnapshotError(
            f"{out}: images.parquet: duplicate image_id {duplicated.min()} ({duplicated.n_unique()} id(s) used twice or more)"
        )
    k = cats.height
    if sorted(cats.get_column("category_id").to_list()) != list(range(k)):
        raise SnapshotError(f"{out}: category ids must be contiguous 0..{k - 1}")
    image_ids = images.get_column("image_id")
    for table in ("annotations", "labels"):
        df = tables.get(table)
        if df is None:
            continue
        missing = df.filter(~pl.col("image_id").is_in(image_ids.implode())).get_column("image_id")
        if missing.len():
            raise SnapshotError(
                f"{out}: {table} refer to image ids missing from the images table (image_id {missing.min()})"
            )
        cid = df.get_column("category_id")
        if df.height and (cid.min() < 0 or cid.max() >= k):
            raise SnapshotError(f"{out}: {table} have category ids outside 0..{k - 1}")
