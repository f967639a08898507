"""Image header reads: size as displayed, EXIF orientation, sha256 and integrity, in parallel.

Memory per file is bounded whatever its size: the sha256 is streamed in 1 MiB chunks, PIL
parses the header from the open file without decoding pixels, and an image of more than
``max_pixels`` (default :data:`MAX_PIXELS`, 64 megapixels) is refused from its header before
anything is decoded. Width and height are as displayed: EXIF orientations 5-8 (rotations by
90°) swap them, matching what cvcore.data.torch_dataset.load_image returns.

Only regular files are opened (cvcore.data.safeio): a FIFO, socket or device in place of an
image is refused from its ``stat``, so it can never block a read.

Truncation is caught without a decode in the common case: a complete JPEG ends with its EOI
marker, a complete PNG with its IEND chunk. Files that fail that cheap check (or other formats)
are fully decoded once to decide (within the pixel cap), so trailing bytes after EOI never
cause a false rejection.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import polars as pl
from PIL import Image, UnidentifiedImageError

from cvcore.data.safeio import not_regular


PROBE = pl.Schema(
    {
        "file_name": pl.String,
        "width": pl.Int32,  # pixels as displayed; null when the image is unusable
        "height": pl.Int32,
        "sha256": pl.String,
        "orientation": pl.Int8,  # EXIF orientation 1..8 (1 when absent)
        "problem": pl.String,  # why the image is unusable, or null
    }
)

# Decoded pixels an image may have (width x height). 64 MP is well above any camera or dataset
# image and below PIL's own warning threshold (Image.MAX_IMAGE_PIXELS, ~89 MP); PIL's
# DecompressionBombError (twice that) stays the ceiling whatever is configured.
MAX_PIXELS = 64_000_000
_CHUNK = 1 << 20
_TAIL = 4096  # bytes kept from the end of a file for the end-marker check

_EOI = b"\xff\xd9"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_ORIENTATION_TAG = 0x0112
# What PIL raises on broken files: OSError (incl. UnidentifiedImageError), SyntaxError from some
# plugins, struct.error / EOFError / ValueError on short or nonsensical headers.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class ImageProblem(ValueError):
    """An image file that cannot be used; the message says why in a few words."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header of one image file says."""

    width: int  # pixels, as displayed
    height: int
    sha256: str  # hex digest of the file's bytes
    orientation: int  # EXIF orientation 1..8
    format: str  # PIL format name: JPEG, PNG, ...


def read_header(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Read one image's header. Raises ImageProblem (missing, not a regular file, empty, not an
    image, larger than ``max_pixels``, truncated). Memory use does not grow with the file's size."""
    path = Path(path)
    try:
        fd = _open_regular(path)
    except ImageProblem:
        raise
    except FileNotFoundError:
        raise ImageProblem("missing image file") from None
    except OSError as exc:
        raise ImageProblem(f"unreadable image file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        try:
            digest, tail, size = _stream_sha256(fh)
        except OSError as exc:
            raise ImageProblem(f"unreadable image file ({exc.strerror or exc})") from None
        if size == 0:
            raise ImageProblem("empty image file (0 bytes)")
        fh.seek(0)
        head = fh.read(16)
        fh.seek(0)
        width, height, orientation, fmt = _parse_header(fh, head, tail, max_pixels)
    if orientation in (5, 6, 7, 8):  # transposed or rotated by 90°: displayed sides swap
        width, height = height, width
    if width <= 0 or height <= 0:
        raise ImageProblem(f"image header gives size {width}x{height}")
    return ImageHeader(width=width, height=height, sha256=digest, orientation=orientation, format=fmt)


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` if it is a regular file; ImageProblem otherwise.

    The kind is checked from ``stat`` before the open (a FIFO is never opened) and again on the
    descriptor (opened non-blocking, so a file swapped in between cannot block either)."""
    problem = not_regular(os.stat(path).st_mode)
    if problem:
        raise ImageProblem("not a file (a directory)" if "directory" in problem else f"{problem}: not opened")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    problem = not_regular(os.fstat(fd).st_mode)
    if problem:
        os.close(fd)
        raise ImageProblem(f"{problem}: not read")
    return fd


def _stream_sha256(fh) -> tuple[str, bytes, int]:
    """(hex sha256, last _TAIL bytes, size in bytes) of an open file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    tail, size = b"", 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
        tail = (tail + chunk)[-_TAIL:]
    return h.hexdigest(), tail, size


def _parse_header(fh, head: bytes, tail: bytes, max_pixels: int) -> tuple[int, int, int, str]:
    """(stored width, height, EXIF orientation, format) from the open file, checked for the pixel
    cap and for truncation (a full decode only when the end marker is not where it belongs)."""
    try:
        with Image.open(fh) as im:
            fmt = im.format or "image"
            width, height = im.size
            if width * height > max_pixels:
                raise ImageProblem(
                    f"image too large ({width}x{height} = {width * height / 1e6:.1f} megapixels, the limit is {max_pixels / 1e6:g})"
                )
            orientation = _orientation(im)
            if not _looks_complete(fmt, tail):
                _full_decode(im, fmt)
    except ImageProblem:  # a ValueError, which _PIL_ERRORS below would swallow
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not an image file (no known image format)") from None
    except Image.DecompressionBombError:
        raise ImageProblem(
            f"image too large (more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels, PIL refuses to decode it)"
        ) from None
    except _PIL_ERRORS as exc:
        if _is_truncation(exc):
            raise ImageProblem(f"truncated {_magic_format(head)}") from None
        raise ImageProblem(f"unreadable image header ({exc})") from None
    return width, height, orientation, fmt


def probe_images(
    root: str | Path,
    file_names: Iterable[str],
    *,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    on_progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Read the headers of ``file_names`` (relative to ``root``) in parallel threads.

    ``max_pixels``: images with more decoded pixels (width x height) get a problem instead of
    a size (read_header).

    Returns a PROBE frame in input order: width/height/sha256 for good images, ``problem`` for
    the others. Names that resolve outside ``root`` (``..``, absolute, symlinks) are refused
    before any open. Threads suit the work: file reads and hashing release the GIL, and on
    network storage the latency of many small reads dominates. Files go to the threads in
    chunks, so pool overhead stays small next to a tiny file's header read.
    ``on_progress(done, total)`` is called as chunks finish. ``workers`` defaults to 4 per CPU,
    at most 32.
    """
    names = list(file_names)
    workers = max(1, workers or min(32, 4 * (os.cpu_count() or 1)))
    inside = _Confined(root)

    def one(name: str) -> tuple:
        try:
            path = inside.path(name)
        except ValueError:  # a NUL byte: no file system path (ingest rejects these earlier)
            return (name, None, None, None, None, "file name is not a usable path (a NUL byte?): rejected, not opened")
        if path is None:
            return (
                name,
                None,
                None,
                None,
                None,
                "file name resolves outside the dataset root (a symlink?): rejected, not opened",
            )
        try:
            h = read_header(path, max_pixels=max_pixels)
        except ImageProblem as exc:
            return (name, None, None, None, None, str(exc))
        return (name, h.width, h.height, h.sha256, h.orientation, None)

    chunk = max(1, min(256, len(names) // (4 * workers) or 1))
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    rows: list[tuple] = []
    # PIL warns on opening an image above ~89 MP; here such an image becomes a problem row with
    # its size (the pixel cap), so the warning would only repeat it without naming the file.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for part in pool.map(lambda c: [one(n) for n in c], chunks):
            rows += part
            if on_progress is not None:
                on_progress(len(rows), len(names))
    return pl.DataFrame(rows, schema=PROBE, orient="row")


class _Confined:
    """Paths under a root with symlinks resolved, refusing any that land outside it.

    The same rule as cvcore.io.resolve_inside, but each folder is resolved once and
    cached (a full ``Path.resolve()`` per file costs an lstat per path component, which is more
    than the header read of a small image). A file is only resolved itself when it is a link.
    """

    def __init__(self, root: str | Path):
        self.root = os.path.realpath(root)
        self.dirs: dict[str, str | None] = {}

    def path(self, name: str) -> str | None:
        if not name or os.path.isabs(name) or "\\" in name:
            return None
        folder, base = os.path.split(os.path.join(self.root, name))
        real = self.dirs.get(folder, "")
        if real == "":
            real = os.path.realpath(folder)
            real = real if self._inside(real) else None
            self.dirs[folder] = real  # benign race: threads compute the same value
        if real is None or base in ("", ".", ".."):
            return None
        full = os.path.join(real, base)
        if os.path.islink(full):
            full = os.path.realpath(full)
            if not self._inside(full):
                return None
        return full

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation from the header only (1 when absent or unreadable)."""
    # PNG keeps eXIf possibly after the pixel data; PIL's getexif() would then decode the whole
    # image to find it, so only a header-time eXIf chunk is used for PNG.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except (*_PIL_ERRORS, KeyError, TypeError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _looks_complete(fmt: str, tail: bytes) -> bool:
    """Whether the last bytes of a file end as a complete file of ``fmt`` does."""
    if fmt in ("JPEG", "MPO"):
        return tail.rstrip(b"\x00\r\n ")[-2:] == _EOI
    if fmt == "PNG":
        return tail[-12:] == _IEND
    return False


def _full_decode(im: Image.Image, fmt: str) -> None:
    try:
        im.load()
    except _PIL_ERRORS as exc:
        raise ImageProblem(f"truncated {fmt}" if _is_truncation(exc) else f"undecodable {fmt} ({exc})") from None


def _is_truncation(exc: BaseException) -> bool:
    return isinstance(exc, EOFError) or "truncated" in str(exc).lower()


def _magic_format(data: bytes) -> str:
    """Format name from the first bytes, for files whose header PIL could not finish reading."""
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data.startswith(b"\x89PNG"):
        return "PNG"
    return "image file"
