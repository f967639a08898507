"""File I/O the whole library shares: the one atomic write.

Every file cvflow writes for a user (checkpoints, run configs, markers, Parquet tables, plots,
JSON reports) appears whole or not at all: it is written to a hidden temporary sibling
``.<name>.<8 random chars>.tmp`` (``tempfile.mkstemp``; the name run-folder clean-up looks
for), flushed to disk, then renamed over ``path`` (``os.replace``, atomic on POSIX). An error or
a kill mid-write leaves the previous file, if any, untouched, and the temporary is removed on
an error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write ``path`` through; renamed over ``path`` on success.

    For writers that take a file name (``pq.ParquetWriter``, ``os.link``, ``shutil.copyfile``):
    the temporary exists (empty) when yielded and may be replaced by the writer. The parent folder
    is created. On an exception the temporary is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the name short enough for a 255-byte file name limit whatever the target's length.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
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
