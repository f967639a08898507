"""Prefect task opening a snapshot wherever it is kept: a local folder or an object store.

The staging itself (a local copy of a snapshot kept at a URI, reused while its digest matches)
is cvcore.io.stage_snapshot; this module only wraps it as a retried Prefect task.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cvcore.data.snapshot import read_snapshot
from cvcore.io import is_uri, resolve_location, stage_snapshot
from tasks.ingest import snapshot_ref
from tasks.refs import SnapshotRef


@task(name="fetch-snapshot", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def fetch_snapshot(location: str, *, home: Path) -> SnapshotRef:
    """Open the snapshot at ``location``: a local folder, or an object-store URI staged locally.

    The ref's ``path`` is the local folder (the staged copy under ``<home>/cache/snapshots/``
    for a URI) and its ``uri`` the URI (None for a local folder or ``file://``).
    """
    if not is_uri(location) or resolve_location(location).is_local:  # a path, or file:// (no copy needed)
        return snapshot_ref(read_snapshot(resolve_location(location).path))
    path = stage_snapshot(location, home=home)
    return snapshot_ref(read_snapshot(path)).model_copy(update={"uri": location})
