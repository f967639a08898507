"""Ingestion tasks: a source dataset (COCO / VOC / YOLO / ImageFolder) to a validated snapshot.

``ingest_source`` is cached on the source's content fingerprint: an unchanged source is not
re-ingested (the Prefect dashboard shows the task as Cached), and the snapshot lands in
``<CVFLOW_HOME>/snapshots/<name>/<fingerprint[:12]>`` so different versions of a dataset never
overwrite each other while older runs still point at them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from cvcore.data.snapshot import Snapshot, read_snapshot
from cvcore.io import is_plain_name
from tasks.artifacts import artifact_key
from tasks.refs import SnapshotRef

# Files read in full for the fingerprint; image files only by name, size and mtime (hashing
# every pixel of a large dataset on each nightly run would cost more than ingesting it; the
# snapshot itself still records each image's sha256).
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def source_fingerprint(*paths: str | Path | None) -> str:
    """sha256 over every file under ``paths``: content of annotation files, stat of images.

    Stable across runs and machines as long as the files are unchanged (relative names are used).
    """
    h = hashlib.sha256()
    for root in (Path(p) for p in paths if p is not None):
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for file in files:
            if not file.is_file():
                continue
            rel = file.relative_to(root).as_posix() if root.is_dir() else file.name
            h.update(rel.encode() + b"\0")
            if file.suffix.lower() in _IMAGE_SUFFIXES:
                st = file.stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            else:
                with file.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            h.update(b"\n")
    return h.hexdigest()


def snapshot_ref(snapshot: Snapshot) -> SnapshotRef:
    return SnapshotRef(
        path=snapshot.path.resolve(),
        name=snapshot.name,
        task=snapshot.task,
        digest=snapshot.digest,
        splits=tuple(snapshot.splits),
    )


def _ingest_cache_key(context: TaskRunContext, params: dict) -> str:
    # Key on what the data is, not where it is: the fingerprint, the format and the options.
    # (A cached result whose snapshot folder was deleted since is caught by the flow, which
    # re-runs the task with refresh_cache; see flows/train.py load_data.)
    options = (params["fmt"], params.get("images"), params.get("val_fraction"), params.get("seed"), params.get("name"))
    return f"ingest-{params['fingerprint']}-{hashlib.sha256(repr(options).encode()).hexdigest()[:12]}"


def _out_dir(params: dict) -> Path:
    name = params.get("name") or Path(params["source"]).stem
    if not is_plain_name(name):  # a source path ending in .. or / has no usable stem
        name = "dataset"
    return Path(params["home"]) / "snapshots" / name / params["fingerprint"][:12]


def _may_pass(task, task_run, state) -> bool:
    """Retry what may pass on a second try (a file system hiccup), not a bad source or snapshot:
    a ValueError (SnapshotError, an unusable source, not one usable image) fails at once instead
    of twice more after 2 s and 10 s. (Prefect hands the exception in ``state.data``.)"""
    return not isinstance(state.data, ValueError)


@task(
    name="ingest", cache_key_fn=_ingest_cache_key, persist_result=True, retries=2, retry_delay_seconds=[2, 10],
    retry_condition_fn=_may_pass,
)  # fmt: skip
def ingest_source(
    source: Path,
    *,
    fmt: str,
    home: Path,
    fingerprint: str,
    images: Path | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    name: str | None = None,
) -> SnapshotRef:
    """Validate ``source`` (format ``fmt``) into a snapshot under ``home``; quarantine is reported.

    ``fingerprint`` is :func:`source_fingerprint` of ``source`` and ``images`` (the flow computes
    it so the cache key is known before the task runs).
    """
    from cvcore.data.health import format_health, health_report
    from cvcore.data.ingest import ingest

    out = _out_dir({"source": source, "fingerprint": fingerprint, "home": home, "name": name})
    if (out / "manifest.json").is_file():
        snapshot = read_snapshot(out)  # made by an earlier run whose cache entry is gone
    else:
        snapshot = ingest(
            source, fmt=fmt, out=out, images=images, val_fraction=val_fraction, seed=seed, name=name
        ).snapshot
    report = format_health(health_report(snapshot))
    create_markdown_artifact(
        f"# Dataset {snapshot.name}\n\n`{snapshot.path}`\n\n{report}", key=artifact_key("health", snapshot.name)
    )
    quarantined = snapshot.quarantine.height
    get_run_logger().info(
        "snapshot %s: %s images, %d quarantined item(s)", snapshot.path, snapshot.images.height, quarantined
    )
    return snapshot_ref(snapshot)


@task(name="open-snapshot", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_may_pass)
def open_snapshot(path: Path) -> SnapshotRef:
    """Read and validate an existing snapshot folder (cvflow ingest / demo data)."""
    snapshot = read_snapshot(path)
    get_run_logger().info("snapshot %s (%s): %s", snapshot.name, snapshot.task, snapshot.manifest["counts"]["splits"])
    return snapshot_ref(snapshot)


@task(name="make-demo-data", cache_policy=NO_CACHE)
def make_demo_data(
    out: Path, *, task_kind: str, n_train: int, n_val: int, n_test: int, image_size: int, seed: int = 0
) -> SnapshotRef:
    """The built-in synthetic shapes dataset (cvcore.data.synthetic), made once per settings."""
    from cvcore.data import synthetic

    if (out / "manifest.json").is_file():
        return snapshot_ref(read_snapshot(out))
    if task_kind == "detection":
        snap = synthetic.make_shapes_detection(
            out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size, seed=seed
        )
    else:
        snap = synthetic.make_shapes_classification(
            out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size, seed=seed
        )
    get_run_logger().info("made %s demo data at %s", task_kind, out)
    return snapshot_ref(snap)
