"""COCO detection JSON: reader to canonical tables, and writer back to COCO (ground truth + results).

Layout read (what COCO users ship): a folder with ``annotations/instances_<split>.json`` and the
images under ``images/<split>/``, ``<split>/`` or ``images/``; or one annotation file, with the
images in ``--images DIR`` (default: beside the file). Conventions:

- boxes: COCO ``bbox`` is ``[x, y, w, h]`` in pixels from the top-left corner, so the canonical
  box is ``x1 = x, y1 = y, x2 = x + w, y2 = y + h`` (no ±1: COCO boxes are continuous). The sum
  is one float64 rounding step, so an IoU computed from ``x1..y2`` can differ from pycocotools'
  (which works on ``x, y, w, h``) in the last bit, which matters only for a pair whose IoU is
  exactly at a threshold;
- ``area`` is the source's (segmentation) area, used for COCO's small/medium/large;
- image and annotation ids are kept, per file: when split files number their images (or
  annotations) alike, as many exporters do (``instances_train.json`` and ``instances_val.json``
  both from 1), the later file's ids (files in name order) move past all earlier ones by one
  offset, recorded in a quarantine row of that file (``new id = source id + offset``); an
  annotation is only ever attached to an image of its own file. Files with disjoint ids (the
  official COCO files) keep theirs unchanged;
- categories become 0..K-1 sorted by their COCO id, which stays in ``source_id`` (and goes back
  out in :func:`write_coco`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

try:
    import orjson
except ImportError:  # optional speed-up; the standard library parses the same files
    orjson = None

from cvcore import boxes
from cvcore.data import safeio
from cvcore.data.formats._common import (
    INT64_MAX,
    INT64_MIN,
    RawSource,
    as_int64,
    canonical_split,
    is_utf8,
    join_name,
    quarantine_frame,
    raw_annotations_frame,
    raw_images_frame,
    shown,
    unsafe_file_name,
)
from cvcore.data.snapshot import Snapshot
from cvcore.io import atomic_write

_INSTANCES = re.compile(r"^instances_(.+)\.json$")
_KNOWN_SPLITS = {"train", "val", "test", "trainval"}
_NUMBER = (int, float)  # exact types only: bool is not a coordinate


def read_coco(source: str | Path, *, images: str | Path | None = None) -> RawSource:
    """Parse a COCO dataset folder or one COCO JSON file (see the module docstring).

    Raises ValueError naming the path when the source as a whole is unusable (missing, no
    instances files, not JSON, no categories); single bad entries become quarantine rows.
    """
    source = Path(source)
    files = _annotation_files(source)
    # Files found in a folder must stay inside it; a file named as SOURCE is read where it is.
    confine = source if source.is_dir() else None
    root = Path(images) if images is not None else (source if source.is_dir() else source.parent)
    if not root.is_dir():
        raise ValueError(f"{root}: image folder does not exist")
    root = root.resolve()

    cats: dict[int, tuple[str, str]] = {}  # coco id -> (name, file it came from)
    quarantine: list[tuple[str, str, str]] = []
    image_rows: list[tuple] = []
    ann_cols = _ann_columns()
    earlier: list[_FileIds] = []
    for raw_split, path in files:  # one parsed file in memory at a time
        doc = _load_json(path, root=confine)
        file_cats = _merge_categories(cats, doc.get("categories"), path, quarantine)
        entries = _list_field(doc, "images", path)
        prefix = _image_prefix(root, raw_split, entries)
        file_images, file_anns = [], _ann_columns()
        _parse_images(entries, path, canonical_split(raw_split), prefix, file_images, quarantine)
        _parse_annotations(_list_field(doc, "annotations", path), path, file_cats, file_anns, quarantine)
        del doc, entries
        file_images, file_anns = _keep_files_apart(path, file_images, file_anns, earlier, quarantine)
        image_rows += file_images
        for k, column in file_anns.items():
            ann_cols[k] += column
    if not cats:
        raise ValueError(f"{files[0][1]}: no usable categories; a COCO detection file needs a 'categories' list")
    ordered = sorted(cats)
    cat_index = {cid: i for i, cid in enumerate(ordered)}
    ann_cols["category_id"] = [cat_index[c] for c in ann_cols["category_id"]]  # COCO ids -> 0..K-1
    categories = pl.DataFrame(
        {"category_id": list(range(len(ordered))), "name": [cats[c][0] for c in ordered], "source_id": ordered},
        schema={"category_id": pl.Int32, "name": pl.String, "source_id": pl.Int64},
    )

    return RawSource(
        format="coco",
        task="detection",
        image_root=root,
        images=raw_images_frame(image_rows),
        categories=categories,
        annotations=raw_annotations_frame(ann_cols, to_xyxy=boxes.xyxy_from_xywh()),
        labels=None,
        quarantine=quarantine_frame(quarantine),
    )


def _ann_columns() -> dict[str, list]:
    return {
        k: []
        for k in (
            "ann_id",
            "image_id",
            "category_id",
            "x",
            "y",
            "w",
            "h",
            "area",
            "iscrowd",
            "difficult",
            "source",
            "item",
        )
    }


@dataclass(frozen=True)
class _FileIds:
    """The image and annotation ids one annotation file ended up with (sorted, unique)."""

    name: str
    images: np.ndarray  # int64[N]
    annotations: np.ndarray  # int64[M]


def _keep_files_apart(
    path: Path, images: list[tuple], anns: dict[str, list], earlier: list[_FileIds], quarantine: list
) -> tuple[list[tuple], dict[str, list]]:
    """One file's image rows and annotation columns, with ids that no earlier file uses.

    Ids are per file: exporters number ``instances_train.json`` and ``instances_val.json`` from
    1 each. When this file's image (annotation) ids meet an earlier file's, all of this file's
    image (annotation) ids move up by one offset, past every id used so far (new id = source id
    + offset; one quarantine row per file records the offset, so the source id is recovered by
    subtracting it). Files with disjoint ids keep them unchanged. An annotation whose image is
    not one of this file's images is dropped here, so a box never lands on another file's image.
    """
    image_ids = np.array([r[0] for r in images], dtype=np.int64)
    shift = _offset(image_ids, [f.images for f in earlier], path)
    if shift:
        other, shared = _first_shared(image_ids, earlier, "images")
        quarantine.append(
            (
                str(path),
                "image ids",
                f"image ids shared with {shown(other)} ({shared} ids): ids are per file, so this file's images are renumbered: new id = source id + {shift}; their annotations follow",
            )
        )
        image_ids = image_ids + shift
        images = [(int(i), *r[1:6], f"image id {int(i)} (source id {r[0]})") for i, r in zip(image_ids, images)]

    ann_image = np.array(anns["image_id"], dtype=np.int64)
    own = np.isin(ann_image, image_ids - shift)
    for i in np.flatnonzero(~own):
        holder = next((f.name for f in earlier if _contains(f.images, int(ann_image[i]))), None)
        where = (
            f"image id {ann_image[i]} of {shown(holder)}, not of this file"
            if holder
            else f"unknown image id {ann_image[i]}"
        )
        quarantine.append((anns["source"][i], anns["item"][i], f"refers to {where}: dropped"))
    if not own.all():
        anns = {k: [v for v, keep in zip(column, own) if keep] for k, column in anns.items()}
    anns["image_id"] = (ann_image[own] + shift).tolist()

    ann_ids = np.array(anns["ann_id"], dtype=np.int64)
    ann_shift = _offset(ann_ids, [f.annotations for f in earlier], path)
    if ann_shift:
        other, shared = _first_shared(ann_ids, earlier, "annotations")
        quarantine.append(
            (
                str(path),
                "annotation ids",
                f"annotation ids shared with {shown(other)} ({shared} ids): this file's annotations are renumbered: new id = source id + {ann_shift}",
            )
        )
        anns["ann_id"] = (ann_ids + ann_shift).tolist()
        anns["item"] = [f"annotation id {i + ann_shift} (source id {i})" for i in ann_ids.tolist()]
    earlier.append(_FileIds(path.name, np.unique(image_ids), np.unique(ann_ids + ann_shift)))
    return images, anns


def _offset(ids: np.ndarray, earlier: list[np.ndarray], path: Path) -> int:
    """0 when ``ids`` meet none of the ``earlier`` id sets; else the shift that puts them all past
    every earlier id. ValueError when that would leave the 64-bit range."""
    if not ids.size or not any(np.isin(ids, e).any() for e in earlier if e.size):
        return 0
    top = max(int(e.max()) for e in earlier if e.size)
    shift = top + 1 - int(ids.min())
    if int(ids.max()) + shift > INT64_MAX:
        raise ValueError(
            f"{path}: ids collide with an earlier file's and are too large to renumber past them (up to {int(ids.max())})"
        )
    return shift


def _first_shared(ids: np.ndarray, earlier: list[_FileIds], kind: str) -> tuple[str, int]:
    """The first earlier file sharing ids with ``ids``, and how many it shares."""
    for f in earlier:
        shared = int(np.isin(np.unique(ids), getattr(f, kind)).sum())
        if shared:
            return f.name, shared
    return "", 0


def _contains(sorted_ids: np.ndarray, value: int) -> bool:
    i = np.searchsorted(sorted_ids, value)
    return bool(i < sorted_ids.size and sorted_ids[i] == value)


def _annotation_files(source: Path) -> list[tuple[str, Path]]:
    """(raw split name, file) pairs of a COCO source."""
    if source.is_dir():
        # Every entry, not only regular files: a FIFO or a link leading out is refused by name
        # when it is read, instead of being skipped without a word.
        files = sorted(p for p in (source / "annotations").glob("instances_*.json") if not p.is_dir())
    elif os.path.lexists(source):
        return [(_split_of_file(source), source)]
    else:
        raise ValueError(f"{source}: COCO source does not exist")
    if not files:
        found = sorted(p.name for p in (source / "annotations").glob("*.json"))
        raise ValueError(
            f"{source}: no annotations/instances_<split>.json found"
            + (f" (annotations/ has {found}; pass one file as SOURCE with --images)" if found else "")
        )
    return [(_INSTANCES.match(p.name).group(1), p) for p in files]


def _split_of_file(path: Path) -> str:
    """``instances_val2017.json`` -> ``val2017``; Roboflow's ``train/_annotations.coco.json`` -> ``train``."""
    match = _INSTANCES.match(path.name)
    if match:
        return match.group(1)
    if canonical_split(path.parent.name) in _KNOWN_SPLITS:
        return path.parent.name
    return "train"


def _load_json(path: Path, *, root: Path | None = None) -> dict:
    """The parsed file. orjson (about twice as fast on large files) when it is installed and the
    file is strict JSON; the standard library otherwise, which also reads the NaN/Infinity
    literals Python's own json.dump writes (they are then reported as bad boxes, not bad files).

    The read goes through cvcore.data.safeio: inside ``root`` when given (symlinks resolved),
    a regular file, at most safeio.MAX_JSON_BYTES. Nesting too deep for the parser (orjson
    stops at 1024 levels, the standard library at Python's recursion limit) is an error naming
    the file, like any other unreadable file.
    """
    try:
        data = safeio.read_bytes(path, limit=safeio.MAX_JSON_BYTES, root=root)
    except FileNotFoundError:
        raise ValueError(f"{path}: COCO JSON file does not exist") from None
    except safeio.SourceFileError as exc:
        hint = "; pass the file itself as SOURCE (with --images) to read it there" if "outside" in str(exc) else ""
        raise ValueError(f"{path}: not a readable COCO JSON file ({exc}){hint}") from None
    doc = None
    if orjson is not None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
    if doc is None:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable COCO JSON file ({exc})") from None
        except RecursionError:
            raise ValueError(f"{path}: not a readable COCO JSON file (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    return doc


def _list_field(doc: dict, key: str, path: Path) -> list:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _as_int(value: object) -> int | None:
    """An integer id in the 64-bit range, accepting integral floats (some exporters write 3.0);
    None otherwise (bool, 1.5, "3", 2**70, 1e300)."""
    return as_int64(value)


def _bad_id(value: object) -> str:
    """Why ``value`` is not a usable id, for a quarantine reason."""
    if type(value) is int or (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
        return f"{shown(value, 32)} is outside the 64-bit integer range"
    return f"{shown(value, 32)} is not an integer"


def _as_float(value: object) -> float | None:
    """A coordinate: numbers as float, JSON null as NaN (caught later as non-finite); else None."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range: non-finite, dropped as such
            return math.inf
    return None


def _merge_categories(cats: dict, entries: object, path: Path, quarantine: list) -> set[int]:
    """Add this file's categories to ``cats``; returns the COCO ids this file defines."""
    if entries is None:
        return set()
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'categories' must be a list")
    seen_here: set[int] = set()
    for i, entry in enumerate(entries):
        cid = _as_int(entry.get("id")) if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if cid is None or not isinstance(name, str) or not is_utf8(name):
            quarantine.append(
                (str(path), f"category entry {i}", "category without an integer 'id' and a UTF-8 'name': dropped")
            )
            continue
        if cid in seen_here:
            quarantine.append(
                (str(path), f"category id {cid}", f"duplicate category id {cid} ('{name}'): dropped, the first is kept")
            )
            continue
        seen_here.add(cid)
        if cid in cats and cats[cid][0] != name:
            raise ValueError(f"{path}: category id {cid} is '{name}' here but '{cats[cid][0]}' in {cats[cid][1]}")
        cats.setdefault(cid, (name, str(path)))
    return seen_here


def _image_prefix(root: Path, raw_split: str, entries: list) -> str:
    """The folder under ``root`` that holds this split's images.

    Candidates in order: ``images/<split>``, ``<split>``, ``images``, the root itself. The one
    where most of the first few listed files exist wins (a few stat calls), so file names that
    already carry a split folder are not doubled.
    """
    candidates = [c for c in (f"images/{raw_split}", raw_split, "images") if (root / c).is_dir()] + [""]
    sample = [
        e["file_name"] for e in entries[:8] if isinstance(e, dict) and unsafe_file_name(e.get("file_name")) is None
    ]
    if not sample:
        return candidates[0]
    hits = [sum((root / join_name(c, f)).is_file() for f in sample) for c in candidates]
    return candidates[hits.index(max(hits))]


def _parse_images(entries: list, path: Path, split: str, prefix: str, rows: list, quarantine: list) -> None:
    src = str(path)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            quarantine.append((src, f"image entry {i}", "image entry is not an object: dropped"))
            continue
        image_id = _as_int(entry.get("id"))
        name = entry.get("file_name")
        if image_id is None and "id" in entry:
            quarantine.append((src, f"image entry {i}", f"image id {_bad_id(entry['id'])}: dropped"))
            continue
        if image_id is None or not isinstance(name, str):
            quarantine.append((src, f"image entry {i}", "image without an integer 'id' and a 'file_name': dropped"))
            continue
        problem = unsafe_file_name(name)
        if problem and (not is_utf8(name) or "\0" in name):  # no table can hold it: refused here
            quarantine.append((src, f"image id {image_id}", f"{problem}; image dropped"))
            continue
        # Other unsafe names are passed on unjoined, so ingest rejects them by their own spelling.
        file_name = name if problem else join_name(prefix, name)
        rows.append(
            (
                image_id,
                file_name,
                split,
                _side(entry.get("width")),
                _side(entry.get("height")),
                src,
                f"image id {image_id}",
            )
        )


def _side(value: object) -> int | None:
    """A declared width or height in pixels, or None when absent or not a positive int32."""
    side = _as_int(value)
    return side if side is not None and 0 < side < 2**31 else None


def _parse_annotations(entries: list, path: Path, file_cats: set[int], cols: dict, quarantine: list) -> None:
    """Append the well-formed annotations to ``cols`` (category as the COCO id, one of
    ``file_cats``); quarantine the malformed ones.

    This loop is the reader's hot path (issue 2: >= 50,000 annotations/s parsed and validated):
    the common case, exact ``int``/``float`` values, is tested with ``type(...) in``, and only
    entries that fail it go through the slower, more lenient ``_as_int``/``_as_float``.
    """
    src = str(path)
    ann_ids, image_ids, cats = cols["ann_id"], cols["image_id"], cols["category_id"]
    xs, ys, ws, hs, areas = (
        cols["x"],
        cols["y"],
        cols["w"],
        cols["h"],
        cols["area"],
    )  # the bbox as given: cvcore.boxes converts
    crowd, difficult, sources, items = cols["iscrowd"], cols["difficult"], cols["source"], cols["item"]
    for i, entry in enumerate(entries):
        if type(entry) is not dict:
            quarantine.append((src, f"annotation entry {i}", "annotation entry is not an object: dropped"))
            continue
        ann_id, image_id = entry.get("id"), entry.get("image_id")
        if (
            type(ann_id) is not int
            or type(image_id) is not int
            or not (INT64_MIN <= ann_id <= INT64_MAX and INT64_MIN <= image_id <= INT64_MAX)
        ):
            ann_id, image_id = _as_int(ann_id), _as_int(image_id)
        item = f"annotation id {ann_id}" if ann_id is not None else f"annotation entry {i}"
        if ann_id is None or image_id is None:
            bad = [f"{k} {_bad_id(entry[k])}" for k in ("id", "image_id") if k in entry and _as_int(entry[k]) is None]
            why = "; ".join(bad) if bad else "annotation without an integer 'id' and 'image_id'"
            quarantine.append((src, item, f"{why}: dropped"))
            continue
        bbox = entry.get("bbox")
        if (
            type(bbox) is list
            and len(bbox) == 4
            and type(bbox[0]) in _NUMBER
            and type(bbox[1]) in _NUMBER
            and type(bbox[2]) in _NUMBER
            and type(bbox[3]) in _NUMBER
        ):
            x, y, w, h = bbox
        else:
            box = [_as_float(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
            if box is None or None in box:
                quarantine.append((src, item, f"annotation 'bbox' is not 4 numbers ({shown(bbox, 60)}): dropped"))
                continue
            x, y, w, h = box
        source_cat = entry.get("category_id")
        cat = source_cat if type(source_cat) is int else _as_int(source_cat)
        if cat not in file_cats:
            quarantine.append(
                (src, item, f"unknown category id {shown(source_cat, 32)} (not in the file's categories): dropped")
            )
            continue
        area = entry.get("area")  # missing or null: ingest uses the box area
        ann_ids.append(ann_id)
        image_ids.append(image_id)
        cats.append(cat)
        xs.append(x)
        ys.append(y)
        ws.append(w)
        hs.append(h)
        areas.append(area if type(area) in _NUMBER else (None if area is None else _as_float(area)))
        crowd.append(bool(entry.get("iscrowd", 0)))
        difficult.append(bool(entry.get("difficult", False)))
        sources.append(src)
        items.append(item)


# ---------------------------------------------------------------------------------------------
# Writer


@dataclass(frozen=True)
class CocoFiles:
    """Paths written by :func:`write_coco`."""

    ground_truth: Path
    results: Path | None  # COCO results file of the predictions, when predictions were given


def write_coco(
    snapshot: Snapshot,
    path: str | Path,
    *,
    predictions: pl.DataFrame | pl.LazyFrame | None = None,
    split: str | None = None,
) -> CocoFiles:
    """Write a detection snapshot as COCO ground-truth JSON at ``path`` (atomically).

    Boxes go out as ``[x1, y1, x2 - x1, y2 - y1]`` (cvcore.boxes.xywh_from_xyxy); category ids are the snapshot's
    ``source_id`` (the COCO ids it came from); ``area``, ``iscrowd`` and ``difficult`` are kept.
    Annotation ids are numbered from 1: an annotation's id is its rank (1..M) in ``ann_id``
    order over the whole snapshot, never 0, because pycocotools' COCOeval records a matched
    ground truth by its id and tests that id for truth, so an annotation with ``id: 0`` would
    silently count as unmatched in every pycocotools-based tool. Ranking over the whole
    snapshot keeps the files of different splits disjoint; a snapshot whose ids already are
    1..M keeps them. Image ids are the snapshot's.
    ``split`` restricts the file to one split. With ``predictions`` (a DETECTIONS frame), their
    COCO results file (``[{image_id, category_id, bbox, score}]``) is written beside it as
    ``<stem>_results.json``, ready for ``COCO.loadRes``.
    """
    if snapshot.task != "detection" or snapshot.annotations is None:
        raise ValueError(f"{snapshot.path}: write_coco needs a detection snapshot, this one is {snapshot.task}")
    path = Path(path)
    images = snapshot.images if split is None else snapshot.split_images(split)
    anns = (
        snapshot.annotations.sort("ann_id")
        .with_row_index("coco_id", offset=1)  # 1..M over the snapshot (docstring)
        .filter(pl.col("image_id").is_in(images.get_column("image_id").implode()))
        .with_columns(boxes.xywh_from_xyxy())
    )
    to_source = _source_ids(snapshot.categories)
    doc = {
        "info": {"description": f"cvflow snapshot {snapshot.name}", "version": snapshot.digest},
        "images": [
            {"id": r["image_id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"]}
            for r in images.sort("image_id").iter_rows(named=True)
        ],
        "annotations": [
            {
                "id": r["coco_id"],
                "image_id": r["image_id"],
                "category_id": to_source[r["category_id"]],
                "bbox": [r["x"], r["y"], r["w"], r["h"]],
                "area": r["area"],
                "iscrowd": int(r["iscrowd"]),
                **({"difficult": True} if r["difficult"] else {}),
            }
            for r in anns.iter_rows(named=True)
        ],
        "categories": [
            {"id": to_source[r["category_id"]], "name": r["name"]}
            for r in snapshot.categories.sort("category_id").iter_rows(named=True)
        ],
    }
    with atomic_write(path, "w") as fh:
        json.dump(doc, fh)
    results = None
    if predictions is not None:
        results = path.with_name(f"{path.stem}_results.json")
        write_coco_results(predictions, results, categories=snapshot.categories)
    return CocoFiles(ground_truth=path, results=results)


def write_coco_results(predictions: pl.DataFrame | pl.LazyFrame, path: str | Path, *, categories: pl.DataFrame) -> Path:
    """Write DETECTIONS rows as a COCO results JSON list (atomically); category ids as source ids."""
    preds = (predictions.collect() if isinstance(predictions, pl.LazyFrame) else predictions).with_columns(
        boxes.xywh_from_xyxy()
    )
    to_source = _source_ids(categories)
    doc = [
        {
            "image_id": r["image_id"],
            "category_id": to_source[r["category_id"]],
            "bbox": [r["x"], r["y"], r["w"], r["h"]],
            "score": r["score"],
        }
        for r in preds.iter_rows(named=True)
    ]
    with atomic_write(path, "w") as fh:
        json.dump(doc, fh)
    return Path(path)


def _source_ids(categories: pl.DataFrame) -> dict[int, int]:
    """category_id -> id to write: the source id when those are unique, else category_id + 1."""
    cats = categories.sort("category_id")
    source = cats.get_column("source_id")
    ids = source if source.n_unique() == cats.height else cats.get_column("category_id") + 1
    return dict(zip(cats.get_column("category_id").to_list(), ids.to_list()))
