"""Reads of the files a dataset source provides: confined to its root, regular files only, bounded.

Every annotation file a reader opens (COCO JSON, VOC XML and ImageSets lists, YOLO labels and
split lists, data.yaml) goes through :func:`read_bytes` / :func:`read_text`, and every image
header read (cvcore.data.probe) through the same checks, so one rule holds for all of them:

- confined: the path, symlinks resolved, must lie inside the dataset root; otherwise it is
  refused before it is opened (``labels/x.txt -> /etc/passwd`` is never read);
- regular files only: a FIFO, socket or device is refused from its ``stat`` without an open
  (opening a FIFO for reading blocks until a writer comes; reading a device may never end), and
  the file is opened non-blocking and checked again, so a swap after the check cannot hang;
- bounded: at most ``limit`` bytes are read; a longer file is refused, not truncated.

:class:`SourceFileError` messages are short reasons without parentheses, the path or any of
the file's content ("not a regular file, a FIFO"); callers put them in parentheses after what
was not read, and the path in front (an error line) or in the quarantine row's ``source``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Default read bounds per kind of file (bytes). COCO's largest public file (instances_train2017,
# 448 MB) fits the JSON bound; the others are far above any real file of their kind.
MAX_JSON_BYTES = 4 << 30
MAX_XML_BYTES = 16 << 20
MAX_TEXT_BYTES = 256 << 20  # split lists (ImageSets/Main/*.txt, YOLO train.txt)
MAX_LABEL_BYTES = 16 << 20  # one YOLO label file
MAX_YAML_BYTES = 1 << 20

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


class SourceFileError(ValueError):
    """A source file that is not read: outside the root, not a regular file, too large, unreadable."""


def not_regular(mode: int) -> str | None:
    """Why a file of ``st_mode`` ``mode`` may not be read ("not a regular file, a FIFO"), or None."""
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file, {_KINDS.get(stat.S_IFMT(mode), 'a special file')}"


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` with symlinks resolved, if it lies inside ``root`` (also resolved); else SourceFileError.

    Nothing is opened. A relative ``path`` is taken relative to ``root``.
    """
    try:
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(Path(root) / path))
    except ValueError:  # a NUL byte in the name
        raise SourceFileError("its name is not a usable path, a NUL byte?") from None
    if real != real_root and not real.is_relative_to(real_root):
        raise SourceFileError(f"it resolves outside the dataset root {root}, a symlink?")
    return real


def read_bytes(path: str | Path, *, limit: int, root: str | Path | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (SourceFileError beyond).

    With ``root``, ``path`` must resolve inside it (:func:`inside`). Raises FileNotFoundError
    when the file does not exist (readers treat a missing file in their own way) and
    SourceFileError for every other reason not to read it.
    """
    real = inside(root, path) if root is not None else Path(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SourceFileError(f"unreadable, {exc.strerror or exc}") from None
    problem = not_regular(st.st_mode)
    if problem:
        raise SourceFileError(problem)
    if st.st_size > limit:
        raise SourceFileError(f"too large, {st.st_size} bytes; at most {limit} are read")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceFileError(f"unreadable, {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        problem = not_regular(os.fstat(fd).st_mode)  # replaced between stat and open
        if problem:
            raise SourceFileError(problem)
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise SourceFileError(f"unreadable, {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SourceFileError(f"too large, more than {limit} bytes")
    return data


def read_text(path: str | Path, *, limit: int, root: str | Path | None = None) -> str:
    """:func:`read_bytes` decoded as UTF-8 (a leading byte-order mark dropped); SourceFileError
    ("not UTF-8 text") for other bytes, without quoting them."""
    data = read_bytes(path, limit=limit, root=root)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceFileError(f"not UTF-8 text, byte {exc.start}") from None
