"""A snapshot's health report: what is in it, how it is spread, and what ingestion set aside.

:func:`health_report` is pure (frames in, a frozen dataclass of frames out);
:func:`format_health` renders it as Markdown, for a terminal or a Prefect artifact.
Box sizes use COCO's ranges on the annotation ``area`` (small < 32², medium < 96², large).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from cvcore.data.snapshot import Snapshot

SMALL_MAX_AREA = 32.0**2  # COCO: area < 32² px² is small, < 96² medium, else large
MEDIUM_MAX_AREA = 96.0**2
IMBALANCE_RATIO = 10.0  # warn when the commonest class has this many times the rarest's objects


@dataclass(frozen=True, eq=False)  # frames have no truth value, so no field-wise ==
class HealthReport:
    """Counts of one snapshot. ``objects`` are annotations (detection) or labels (classification)."""

    name: str
    task: str
    source_format: str
    digest: str
    num_images: int
    num_objects: int
    splits: pl.DataFrame  # split, images, objects
    classes: pl.DataFrame  # category_id, name, total, then one count column per split
    box_sizes: pl.DataFrame  # size (small/medium/large), annotations, share; empty for classification
    quarantine: pl.DataFrame  # kind, count, example (one full reason); most frequent first
    warnings: tuple[str, ...]

    @property
    def num_quarantined(self) -> int:
        return int(self.quarantine.get_column("count").sum()) if self.quarantine.height else 0


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason, for grouping: the text before its details.

    ``"box x2 < x1 (w=-3): dropped"`` -> ``"box x2 < x1"``; quoted names become ``'…'`` and
    numbers ``N``, so ``"file name '../a.jpg' escapes the dataset root: ..."`` and the same for
    ``'../b.jpg'`` are one kind.
    """
    text = re.sub(r"'[^']*'", "'…'", reason)
    text = re.sub(r"\s*\([^()]*\)", "", text)
    text = re.split(r":\s|;\s", text, maxsplit=1)[0]
    return re.sub(r"(?<![\w.])-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text).strip()


def health_report(snapshot: Snapshot) -> HealthReport:
    """Count images per split, objects per class and split, box sizes and quarantine kinds."""
    images = snapshot.images.select("image_id", "split")
    objects = snapshot.annotations if snapshot.task == "detection" else snapshot.labels
    objects = objects.join(images, on="image_id", how="left")
    split_names = snapshot.splits

    splits = (
        images.group_by("split")
        .len("images")
        .join(objects.group_by("split").len("objects"), on="split", how="left")
        .with_columns(pl.col("objects").fill_null(0))
        .sort("split")
    )
    per_split = objects.group_by("category_id", "split").len("n")
    classes = snapshot.categories.select("category_id", "name").sort("category_id")
    classes = classes.join(objects.group_by("category_id").len("total"), on="category_id", how="left")
    for split in split_names:
        counts = per_split.filter(pl.col("split") == split).select("category_id", pl.col("n").alias(split))
        classes = classes.join(counts, on="category_id", how="left")
    classes = classes.fill_null(0)

    return HealthReport(
        name=snapshot.name,
        task=snapshot.task,
        source_format=snapshot.manifest.get("source_format", ""),
        digest=snapshot.digest,
        num_images=images.height,
        num_objects=objects.height,
        splits=splits,
        classes=classes,
        box_sizes=_box_sizes(snapshot.annotations) if snapshot.task == "detection" else pl.DataFrame(),
        quarantine=_quarantine_kinds(snapshot.quarantine),
        warnings=tuple(_warnings(snapshot, classes, split_names, objects)),
    )


def format_health(report: HealthReport) -> str:
    """The report as Markdown: a title line, then tables of splits, classes, box sizes, quarantine."""
    unit = "annotations" if report.task == "detection" else "labels"
    lines = [
        f"## Dataset `{report.name}`",
        "",
        f"{report.task} from {report.source_format or 'unknown format'}: {report.num_images} images, "
        f"{report.num_objects} {unit}, {report.classes.height} classes, {report.num_quarantined} quarantined; "
        f"digest `{report.digest[:16]}`",
        "",
        "### Images per split",
        "",
        *_table(["split", "images", unit], report.splits.rows()),
        "",
        f"### {unit.capitalize()} per class",
        "",
        *_table(["id", *report.classes.columns[1:]], report.classes.rows()),
    ]
    if report.box_sizes.height:
        lines += [
            "",
            "### Box sizes (COCO area ranges)",
            "",
            *_table(["size", "annotations", "share"], [(s, n, f"{p:.1%}") for s, n, p in report.box_sizes.rows()]),
        ]
    lines += ["", "### Quarantine", ""]
    if report.quarantine.height:
        lines += _table(["reason", "count", "example"], report.quarantine.rows())
    else:
        lines.append("Nothing was quarantined.")
    if report.warnings:
        lines += ["", "### Warnings", "", *(f"- {w}" for w in report.warnings)]
    return "\n".join(lines) + "\n"


def _box_sizes(annotations: pl.DataFrame) -> pl.DataFrame:
    area = pl.col("area")
    size = (
        pl.when(area < SMALL_MAX_AREA)
        .then(pl.lit("small"))
        .when(area < MEDIUM_MAX_AREA)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("large"))
    )
    counts = dict(annotations.select(size.alias("size")).group_by("size").len().iter_rows())
    total = max(1, annotations.height)
    names = ["small", "medium", "large"]
    return pl.DataFrame(
        {
            "size": [f"{n} ({r})" for n, r in zip(names, ["< 32²", "32²–96²", ">= 96²"])],
            "annotations": [counts.get(n, 0) for n in names],
            "share": [counts.get(n, 0) / total for n in names],
        }
    )


def _quarantine_kinds(quarantine: pl.DataFrame) -> pl.DataFrame:
    if quarantine.is_empty():
        return pl.DataFrame(schema={"kind": pl.String, "count": pl.UInt32, "example": pl.String})
    kinds = quarantine.with_columns(pl.col("reason").map_elements(reason_kind, return_dtype=pl.String).alias("kind"))
    return (
        kinds.group_by("kind", maintain_order=True)
        .agg(pl.len().alias("count"), (pl.col("item").first() + ": " + pl.col("reason").first()).alias("example"))
        .sort("count", "kind", descending=[True, False])
    )


def _warnings(snapshot: Snapshot, classes: pl.DataFrame, split_names: list[str], objects: pl.DataFrame) -> list[str]:
    unit = "annotations" if snapshot.task == "detection" else "images"
    out = []
    if snapshot.images.is_empty():
        out.append("no usable images: every image was quarantined (see the quarantine table)")
    for name in classes.filter(pl.col("total") == 0).get_column("name"):
        out.append(f"class {name!r} has no {unit}")
    if len(split_names) > 1:
        for split in split_names:
            missing = classes.filter((pl.col("total") > 0) & (pl.col(split) == 0)).get_column("name").to_list()
            if missing:
                out.append(f"split {split!r} has no {unit} of {', '.join(map(repr, missing))}")
    present = classes.filter(pl.col("total") > 0).get_column("total")
    if present.len() > 1 and present.max() >= IMBALANCE_RATIO * present.min():
        out.append(
            f"classes are imbalanced: {present.max()} vs {present.min()} {unit}; read per-class metrics, not only the mean"
        )
    if snapshot.task == "detection":
        empty = snapshot.images.height - objects.get_column("image_id").n_unique()
        if empty:
            out.append(f"{empty} images have no annotations (background images)")
    return out


def _table(header: list[str], rows: list[tuple]) -> list[str]:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]
