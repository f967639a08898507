"""Folder locks: one run at a time writes into a run folder or a predictions folder.

Two trainings into one run folder would both pass the "no last.pt yet" check and then write
their checkpoints over each other; two evaluations into one predictions folder would mix their
shards. A folder in use has its lock file locked with ``fcntl.flock`` (exclusive, never waited
for): the second run fails at once with one line naming the folder. A run folder's lock file is
``.cvflow.lock`` inside it (the folder is cvflow's); a predictions folder's sits beside it
(:func:`sibling_lock_file`), so the folder holds nothing but its ``part-*.parquet``. The kernel drops the
lock when its holder exits, killed or not, so a crashed run never leaves the folder locked; the
empty lock file itself stays (removing it could let a third run lock a fresh file while the second
still holds the old one).

flock locks are per open file: a second ``folder_lock`` on the same folder in the same process
fails too (one holder per folder). Local file systems only; object stores have no locks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".cvflow.lock"


class FolderInUse(ValueError):
    """Another run holds the folder's lock; the message names the folder and what holds it."""


def sibling_lock_file(folder: str | Path) -> Path:
    """``<parent>/.<name>.cvflow.lock``: a lock file beside ``folder`` rather than in it."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.cvflow.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, what: str, lock_file: str | Path | None = None) -> Iterator[Path]:
    """Hold ``folder``'s lock exclusively for the duration of the ``with`` block.

    ``lock_file``: ``<folder>/.cvflow.lock`` when None. ``what`` names the job in the error
    (``"training"``, ``"evaluation"``). The folder is created when missing. Raises FolderInUse at
    once when another run (process or open file) holds it. Yields the lock file's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(lock_file) if lock_file is not None else folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(_in_use(folder, path, what)) from None
            raise
        _record_holder(fd, what)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_not_in_use(folder: str | Path, *, what: str, lock_file: str | Path | None = None) -> None:
    """Raise FolderInUse when another run holds ``folder``'s lock now (a check before starting:
    :func:`folder_lock` is what protects the folder). Nothing is created."""
    path = Path(lock_file) if lock_file is not None else Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(_in_use(Path(folder), path, what)) from None
            raise
    finally:
        os.close(fd)


def _record_holder(fd: int, what: str) -> None:
    """Write who holds the lock into the lock file (for the error a second run prints)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)


def _in_use(folder: Path, lock_file: Path, what: str) -> str:
    try:
        holder = lock_file.read_text().strip()
    except OSError:
        holder = ""
    by = f" ({holder})" if holder else ""
    return f"{folder} is in use by another run{by}: one {what} per folder at a time; wait for it to finish or choose another folder"
