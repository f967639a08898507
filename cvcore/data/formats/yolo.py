"""YOLO detection (Ultralytics layout): ``data.yaml`` + ``images/`` + ``labels/`` to canonical tables.

Layout read: SOURCE is the folder of ``data.yaml`` (or the yaml file itself)::

    data.yaml         names: [..] or {0: .., 1: ..}; train/val/test: folder(s) or .txt list(s)
    images/<split>/   the images
    labels/<split>/   one <image stem>.txt per image: lines "class cx cy w h"

The dataset root is the yaml's folder, or its ``path:`` when that names an existing folder
(relative paths from the yaml's folder). Split folders, split lists, label files and listed
images must stay inside it, symlinks resolved (cvcore.data.safeio); every read is bounded.
A label file sits where the image is with the last ``images`` path component replaced by
``labels`` and the extension by ``.txt`` (Ultralytics' rule); no label file means no objects,
while a label file that cannot be read (outside the root, not a regular file, not UTF-8)
takes its image out of the dataset with a quarantine row.

Coordinates are fractions of the image size: ``cx cy w h`` with ``cx = (x1 + x2) / 2 / W``. The
reader returns ``x1 = cx - w/2`` etc. still as fractions (cvcore.boxes.xyxy_from_cxcywh;
``box_units="normalized"``); ingest multiplies by the width/height read from each image's header
(cvcore.boxes.scale_xyxy). Polygon lines (YOLO-seg, ``class x1 y1 x2 y2 ...``) become the
polygon's bounding box. Category ids are the ``names``
order (``source_id`` = the class index); image ids are 1..N in sorted file-name order.
"""

from __future__ import annotations

import math
import posixpath
from pathlib import Path

import polars as pl
import yaml

from cvcore import boxes
from cvcore.data import safeio
from cvcore.data.formats._common import (
    RawSource,
    canonical_split,
    ids_by_file_name,
    is_utf8,
    list_image_files,
    quarantine_frame,
    raw_annotations_frame,
    raw_images_frame,
    unsafe_file_name,
)

_SPLIT_KEYS = ("train", "val", "test")


def read_yolo(source: str | Path, *, images: str | Path | None = None) -> RawSource:
    """Parse a YOLO dataset folder (see the module docstring). ``images`` is not used by YOLO.

    Raises ValueError naming the path when data.yaml or a split folder is unusable; a bad label
    line becomes a quarantine row.
    """
    if images is not None:
        raise ValueError("--images does not apply to YOLO: data.yaml names the image folders")
    yaml_path = Path(source) / "data.yaml" if Path(source).is_dir() else Path(source)
    config = _load_yaml(yaml_path)
    root = _root(yaml_path, config)
    names = _names(yaml_path, config)
    quarantine: list[tuple[str, str, str]] = []

    listed: list[tuple[str, str]] = []  # (file_name, split)
    seen: dict[str, str] = {}
    for key in _SPLIT_KEYS:
        for entry in _as_list(config.get(key)):
            for file_name in _split_files(root, yaml_path, key, entry, quarantine):
                if file_name in seen:
                    quarantine.append(
                        (
                            str(yaml_path),
                            file_name,
                            f"image is in split {seen[file_name]!r} and again in {key!r}: kept in {seen[file_name]!r}",
                        )
                    )
                    continue
                seen[file_name] = key
                listed.append((file_name, canonical_split(key)))
    if not listed:
        raise ValueError(f"{yaml_path}: no images found for any of {list(_SPLIT_KEYS)}")

    ids = ids_by_file_name([f for f, _ in listed])
    image_rows = sorted((ids[f], f, split, None, None, str(yaml_path), f) for f, split in listed)
    # A box line's cx cy w h, or (a polygon line) its bounds px1 py1 px2 py2, the other four None.
    cols: dict[str, list] = {k: [] for k in ("ann_id", "image_id", "category_id", *_BOX, *_POLYGON, "source", "item")}
    # An image whose label file cannot be read has unknown boxes: it leaves the dataset (kept, it
    # would train as a background image), with the label file's quarantine row saying why.
    image_rows = [
        row
        for row in image_rows
        if unsafe_file_name(row[1]) is not None or _read_labels(root, row[1], row[0], len(names), cols, quarantine)
    ]
    _orphan_labels(root, [f for f, _ in listed], quarantine)
    cols["ann_id"] = list(range(1, len(cols["image_id"]) + 1))

    categories = pl.DataFrame(
        {"category_id": list(range(len(names))), "name": names, "source_id": list(range(len(names)))},
        schema={"category_id": pl.Int32, "name": pl.String, "source_id": pl.Int64},
    )
    return RawSource(
        format="yolo",
        task="detection",
        image_root=root,
        images=raw_images_frame(image_rows),
        categories=categories,
        annotations=raw_annotations_frame(cols, to_xyxy=_TO_XYXY),
        labels=None,
        quarantine=quarantine_frame(quarantine),
        box_units="normalized",
    )


_BOX = ("cx", "cy", "w", "h")
_POLYGON = ("px1", "py1", "px2", "py2")
# x1..y2 (fractions of the image size): a box line's from its centre and size, a polygon's bounds as they are.
_TO_XYXY = [
    pl.coalesce(expr, pl.col(bound)).alias(expr.meta.output_name())
    for expr, bound in zip(boxes.xyxy_from_cxcywh(*_BOX), _POLYGON)
]


def label_path(file_name: str) -> str:
    """The label file of an image (both relative to the root): last ``images`` -> ``labels``, ``.txt``."""
    parts = file_name.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return posixpath.splitext("/".join(parts))[0] + ".txt"


def _load_yaml(path: Path) -> dict:
    try:
        text = safeio.read_text(path, limit=safeio.MAX_YAML_BYTES)
    except FileNotFoundError:
        raise ValueError(f"{path}: YOLO data.yaml does not exist") from None
    except safeio.SourceFileError as exc:
        raise ValueError(f"{path}: YOLO data.yaml not read ({exc})") from None
    try:
        config = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"{path}: not a readable YAML file ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping with 'names' and split folders")
    return config


def _root(yaml_path: Path, config: dict) -> Path:
    base = yaml_path.parent.resolve()
    path = config.get("path")
    if isinstance(path, str) and path.strip():
        candidate = (base / path).resolve()
        if candidate.is_dir():
            return candidate
    return base


def _names(yaml_path: Path, config: dict) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ValueError(f"{yaml_path}: 'names' keys must be class indices 0..K-1") from None
        if keys != list(range(len(keys))):
            raise ValueError(f"{yaml_path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise ValueError(f"{yaml_path}: 'names' must be a non-empty list of class names")
    names = [str(n) for n in names]
    if not all(is_utf8(n) for n in names):
        raise ValueError(f"{yaml_path}: a class name in 'names' is not valid UTF-8")
    nc = config.get("nc")
    if nc is not None and nc != len(names):
        raise ValueError(f"{yaml_path}: nc is {nc} but 'names' has {len(names)} entries")
    return names


def _as_list(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _split_files(root: Path, yaml_path: Path, key: str, entry: object, quarantine: list) -> list[str]:
    """Image files of one split entry (a folder or a .txt list), relative to ``root``."""
    if not isinstance(entry, str) or unsafe_file_name(entry):
        raise ValueError(f"{yaml_path}: {key}: {entry!r} must be a folder or .txt file inside {root}")
    path = (root / entry).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{yaml_path}: {key}: {entry!r} escapes the dataset root {root}")
    if path.is_dir():
        return list_image_files(path, root, quarantine)  # every file: non-images are quarantined by the header check
    if path.suffix == ".txt" and path.exists():
        return _listed_files(root, path, quarantine)
    raise ValueError(f"{yaml_path}: {key}: {entry!r} does not exist under {root}")


def _listed_files(root: Path, txt: Path, quarantine: list) -> list[str]:
    """Image paths from a split list: ``./x`` relative to the list's folder, others to the root."""
    try:
        text = safeio.read_text(txt, limit=safeio.MAX_TEXT_BYTES, root=root)
    except (FileNotFoundError, safeio.SourceFileError) as exc:
        raise ValueError(f"{txt}: split list not read ({_why(exc)})") from None
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("./"):
            line = (txt.parent.relative_to(root) / line[2:]).as_posix()
        elif Path(line).is_absolute() and Path(line).resolve().is_relative_to(root):
            line = Path(line).resolve().relative_to(root).as_posix()
        out.append(posixpath.normpath(line) if unsafe_file_name(line) is None else line)
    return out


def _why(exc: Exception) -> str:
    return "missing" if isinstance(exc, FileNotFoundError) else str(exc)


def _read_labels(root: Path, file_name: str, image_id: int, k: int, cols: dict, quarantine: list) -> bool:
    """Append the boxes of one image's label file to ``cols``; False (and a quarantine row) when
    the file exists but cannot be read, so the image's boxes are unknown."""
    label = root / label_path(file_name)
    try:
        text = safeio.read_text(label, limit=safeio.MAX_LABEL_BYTES, root=root)
    except FileNotFoundError:
        return True  # YOLO convention: an image without a label file has no objects
    except safeio.SourceFileError as exc:
        quarantine.append((str(label), file_name, f"label file not read ({exc}): image dropped, its boxes are unknown"))
        return False
    for line_no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        item = f"line {line_no}"
        parsed = _parse_line(tokens, k)
        if isinstance(parsed, str):
            quarantine.append((str(label), item, parsed))
            continue
        cls, box, polygon = parsed
        cols["image_id"].append(image_id)
        cols["category_id"].append(cls)
        for names, values in ((_BOX, box), (_POLYGON, polygon)):
            for name, value in zip(names, values or (None,) * 4):
                cols[name].append(value)
        cols["source"].append(str(label))
        cols["item"].append(item)
    return True


def _parse_line(tokens: list[str], k: int) -> tuple[int, list[float] | None, tuple[float, ...] | None] | str:
    """(class, normalised cx cy w h of a box line or None, normalised bounds x1 y1 x2 y2 of a
    polygon line or None) of one label line, or the reason it is rejected."""
    # Reasons never quote the line: a file that is not a label file (a symlink to /etc/passwd
    # inside the root, a stray text file) must not leak its content into the report.
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return "not a YOLO label line (class cx cy w h: 5 numbers expected): dropped"
    cls = values[0]
    if not (math.isfinite(cls) and cls.is_integer() and 0 <= cls < k):
        return f"class index {values[0]:g} is not in data.yaml names (0..{k - 1}): dropped"
    coords = values[1:]
    if len(coords) == 4:
        return int(cls), coords, None
    if len(coords) >= 6 and len(coords) % 2 == 0:  # polygon (YOLO-seg): its bounding box
        xs, ys = coords[0::2], coords[1::2]
        return int(cls), None, (min(xs), min(ys), max(xs), max(ys))
    return f"not a YOLO label line ({len(tokens)} numbers; class cx cy w h: 5 numbers expected): dropped"


def _orphan_labels(root: Path, file_names: list[str], quarantine: list) -> None:
    """Label files in the splits' label folders whose image is not in the dataset."""
    expected = {label_path(f) for f in file_names if unsafe_file_name(f) is None}
    folders = {posixpath.dirname(p) for p in expected}
    for folder in sorted(folders):
        try:
            safeio.inside(root, folder)  # a labels folder linked elsewhere is not listed
        except safeio.SourceFileError:
            continue
        for label in sorted((root / folder).glob("*.txt")):
            rel = label.relative_to(root).as_posix()
            if rel in expected:
                continue
            try:
                text = safeio.read_text(label, limit=safeio.MAX_LABEL_BYTES, root=root)
            except (FileNotFoundError, safeio.SourceFileError) as exc:
                quarantine.append(
                    (str(label), "file", f"label file has no image in the dataset (not read: {_why(exc)}): dropped")
                )
                continue
            n = sum(1 for line in text.splitlines() if line.strip())
            quarantine.append((str(label), "file", f"label file has no image in the dataset: its {n} boxes dropped"))
