"""Pascal VOC detection: ``Annotations/*.xml`` to canonical tables.

Layout read (a VOCdevkit year folder, e.g. ``VOCdevkit/VOC2007``)::

    Annotations/<id>.xml          one file per image: filename, size, objects with bndbox
    ImageSets/Main/<split>.txt    ids per split (train, val, test; trainval when it is the only one)
    JPEGImages/ or PNGImages/     the images

``VOCdevkit`` itself is accepted when it holds exactly one year folder. A folder of XML files
without ``Annotations/`` is read as one split, with the images in ``--images DIR``. Without
``ImageSets/Main`` every XML is read, as split ``train``. With split files, only the listed ids
are read (VOC2012 has XMLs for other challenges that its detection splits do not list).

Box convention: VOC corners are 1-based and inclusive (``xmin = 1`` is the first pixel column,
``xmax = W`` the last), so the canonical continuous box is ``x1 = xmin - 1, y1 = ymin - 1,
x2 = xmax, y2 = ymax``: the same object gives the same box as in COCO (``x2 - x1`` = pixels
covered). Categories are the object names in sorted order (for VOC's 20 classes this is the
order users know, aeroplane..tvmonitor); ``source_id`` is the 1-based rank, so a COCO export
gets COCO-style ids. Image ids are 1..N in sorted file-name order; ``difficult`` is kept.

XML is parsed with the standard library: it resolves no external entities, and the bundled
expat (>= 2.4) refuses entity-expansion bombs. Every XML and split list is read through
cvcore.data.safeio: inside the VOC folder (symlinks resolved), regular files only, bounded; a
refused XML takes its image out with a quarantine row, a refused split list stops ingestion.
Reasons never quote a list line that is not a plain image id.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl

from cvcore import boxes
from cvcore.data import safeio
from cvcore.data.formats._common import (
    RawSource,
    canonical_split,
    is_utf8,
    join_name,
    quarantine_frame,
    raw_annotations_frame,
    raw_images_frame,
    require_dir,
    shown,
    unsafe_file_name,
)

log = logging.getLogger(__name__)

_IMAGE_DIRS = ("JPEGImages", "PNGImages")
_PLAIN_ID = re.compile(r"^[\w.\-]{1,64}$")  # what an image id in ImageSets/Main looks like
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def read_voc(source: str | Path, *, images: str | Path | None = None) -> RawSource:
    """Parse a VOC folder (see the module docstring).

    Raises ValueError naming the path when the source as a whole is unusable; a malformed XML
    file or object becomes a quarantine row.
    """
    source = _year_folder(Path(source))
    xml_dir = source / "Annotations" if (source / "Annotations").is_dir() else source
    if images is not None:
        root, image_dirs = require_dir(Path(images), "image folder").resolve(), [""]
    else:
        root = source.resolve()
        image_dirs = [d for d in _IMAGE_DIRS if (source / d).is_dir()]
        if not image_dirs:
            raise ValueError(f"{source}: neither JPEGImages/ nor PNGImages/ found; pass the image folder with --images")
    quarantine: list[tuple[str, str, str]] = []
    listed = _split_lists(source, xml_dir, quarantine)

    parsed = []  # (file_name, xml path, split, width, height, objects)
    for stem, split in listed:
        xml = xml_dir / f"{stem}.xml"
        doc = _parse_xml(xml, source, quarantine)
        if doc is None:
            continue
        file_name = _image_file(root, image_dirs, doc.findtext("filename"), stem)
        width, height = _size(doc)
        parsed.append((file_name, str(xml), split, width, height, doc.findall("object")))
    parsed.sort(key=lambda p: (p[0], p[1]))

    objects = []  # (image_id, xml, k, name, difficult, box)
    image_rows = []
    for image_id, (file_name, xml, split, width, height, objs) in enumerate(parsed, start=1):
        image_rows.append((image_id, file_name, split, width, height, xml, f"image {Path(xml).stem}"))
        for k, obj in enumerate(objs):
            parsed_obj = _parse_object(obj, xml, k, quarantine)
            if parsed_obj is not None:
                objects.append((image_id, xml, k) + parsed_obj)

    names = sorted({o[3] for o in objects})
    index = {n: i for i, n in enumerate(names)}
    categories = pl.DataFrame(
        {"category_id": list(range(len(names))), "name": names, "source_id": list(range(1, len(names) + 1))},
        schema={"category_id": pl.Int32, "name": pl.String, "source_id": pl.Int64},
    )
    cols = {
        "ann_id": list(range(1, len(objects) + 1)),
        "image_id": [o[0] for o in objects],
        "category_id": [index[o[3]] for o in objects],
        # 1-based inclusive corners, converted to continuous xyxy by cvcore.boxes.xyxy_from_voc
        **{tag: [o[5][j] for o in objects] for j, tag in enumerate(_COORDS)},
        "difficult": [o[4] for o in objects],
        "source": [o[1] for o in objects],
        "item": [f"object {o[2]} ({o[3]})" for o in objects],
    }
    return RawSource(
        format="voc",
        task="detection",
        image_root=root,
        images=raw_images_frame(image_rows),
        categories=categories,
        annotations=raw_annotations_frame(cols, to_xyxy=boxes.xyxy_from_voc()),
        labels=None,
        quarantine=quarantine_frame(quarantine),
    )


def _year_folder(source: Path) -> Path:
    """``source``, or its single ``VOC<year>`` child when ``source`` is a VOCdevkit folder."""
    require_dir(source, "VOC source")
    if (source / "Annotations").is_dir() or any(source.glob("*.xml")):
        return source
    years = [p for p in sorted(source.iterdir()) if (p / "Annotations").is_dir()]
    if len(years) == 1:
        return years[0]
    if years:
        raise ValueError(f"{source}: holds several VOC folders {[p.name for p in years]}; pass one of them")
    raise ValueError(f"{source}: no Annotations/ folder and no .xml files; not a VOC dataset")


def _split_lists(source: Path, xml_dir: Path, quarantine: list) -> list[tuple[str, str]]:
    """(xml stem, split) for every image to read, in a deterministic order."""
    main = source / "ImageSets" / "Main"
    all_stems = []
    for xml in sorted(xml_dir.glob("*.xml")):
        if is_utf8(xml.name):
            all_stems.append(xml.stem)
        else:
            quarantine.append((str(xml), "file", "file name is not valid UTF-8: skipped, not opened"))
    files = {s: main / f"{s}.txt" for s in ("train", "val", "test", "trainval") if os.path.lexists(main / f"{s}.txt")}
    if not files:
        if not all_stems:
            raise ValueError(f"{xml_dir}: no .xml annotation files")
        return [(s, "train") for s in all_stems]
    chosen = [s for s in ("train", "val", "test") if s in files] if {"train", "val"} & files.keys() else list(files)
    seen: dict[str, str] = {}
    out = []
    for split in chosen:
        path = files[split]
        try:
            text = safeio.read_text(path, limit=safeio.MAX_TEXT_BYTES, root=source)
        except (FileNotFoundError, safeio.SourceFileError) as exc:
            raise ValueError(
                f"{path}: split list not read ({'missing' if isinstance(exc, FileNotFoundError) else exc})"
            ) from None
        for line_no, line in enumerate(text.splitlines(), start=1):
            stem = line.split()[0] if line.strip() else ""
            if not stem:
                continue
            if not _PLAIN_ID.match(stem) or unsafe_file_name(f"{stem}.xml"):
                quarantine.append(
                    (
                        str(path),
                        f"line {line_no}",
                        "not a VOC image id (a plain file name expected): rejected, not opened",
                    )
                )
                continue
            if stem in seen:
                quarantine.append(
                    (
                        str(path),
                        f"line {line_no}",
                        f"id {stem!r} is also listed in {seen[stem]}.txt: kept in {seen[stem]}",
                    )
                )
                continue
            if not os.path.lexists(xml_dir / f"{stem}.xml"):
                quarantine.append(
                    (str(path), f"line {line_no}", f"listed id {stem!r} has no Annotations/{stem}.xml: skipped")
                )
                continue
            seen[stem] = split
            out.append((stem, canonical_split(split)))
    unlisted = len(set(all_stems) - seen.keys())
    if unlisted:
        log.info("%s: %d annotation files are not listed in %s and were not read", xml_dir, unlisted, sorted(files))
    return out


def _parse_xml(xml: Path, root: Path, quarantine: list) -> ET.Element | None:
    """The ``<annotation>`` element of one XML file inside ``root``, or None (quarantined)."""
    item = f"image {xml.stem}"
    try:
        doc = ET.fromstring(safeio.read_bytes(xml, limit=safeio.MAX_XML_BYTES, root=root))
    except FileNotFoundError:
        quarantine.append((str(xml), item, "annotation file not read (missing, a dangling link?): image dropped"))
        return None
    except safeio.SourceFileError as exc:
        quarantine.append((str(xml), item, f"annotation file not read ({exc}): image dropped"))
        return None
    except ET.ParseError as exc:  # expat's message gives a position, never the content
        quarantine.append((str(xml), item, f"malformed XML ({exc}): image dropped"))
        return None
    if doc.tag != "annotation":
        quarantine.append(
            (str(xml), item, "not a VOC annotation (the root element is not <annotation>): image dropped")
        )
        return None
    return doc


def _image_file(root: Path, image_dirs: list[str], filename: str | None, stem: str) -> str:
    """The image's path relative to ``root``: the XML's ``filename`` if present, else ``<id>.jpg``/``.png``."""
    name = (filename or "").strip() or f"{stem}.jpg"
    if unsafe_file_name(name):
        return name  # passed on as written, so ingest rejects it by its own spelling
    for d in image_dirs:
        if (root / join_name(d, name)).is_file():
            return join_name(d, name)
    for d in image_dirs:  # filename element missing or stale: try the id with common extensions
        for ext in (".jpg", ".png", ".jpeg"):
            if (root / join_name(d, stem + ext)).is_file():
                return join_name(d, stem + ext)
    return join_name(image_dirs[0], name)  # missing: the header check reports it


def _size(doc: ET.Element) -> tuple[int | None, int | None]:
    def number(tag: str) -> int | None:
        try:
            value = int(float(doc.findtext(f"size/{tag}") or ""))
        except ValueError:
            return None
        return value if value > 0 else None  # some tools write 0 for "unknown"

    return number("width"), number("height")


def _parse_object(obj: ET.Element, xml: str, k: int, quarantine: list) -> tuple[str, bool, tuple] | None:
    """(name, difficult, (xmin, ymin, xmax, ymax)) of one <object>, or None (quarantined)."""
    name = (obj.findtext("name") or "").strip()
    item = f"object {k}" + (f" ({name})" if name else "")
    if not name:
        quarantine.append((xml, item, "object without a <name>: dropped"))
        return None
    box = obj.find("bndbox")
    if box is None:
        quarantine.append((xml, item, "object without a <bndbox>: dropped"))
        return None
    coords = []
    for tag in _COORDS:
        text = (box.findtext(tag) or "").strip()
        try:
            coords.append(float(text))
        except ValueError:
            quarantine.append((xml, item, f"bndbox <{tag}> {shown(text, 24)} is not a number: dropped"))
            return None
    difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
    return name, difficult, tuple(coords)
