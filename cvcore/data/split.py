"""Seeded, stratified train/val split of a single-split source.

Hand-written rather than scikit-learn's ``train_test_split(stratify=...)``: scikit-learn is a
test-only dependency of cvflow, it refuses strata with one member (common for rare classes),
and it has no notion of a detection image that holds several classes.
"""

from __future__ import annotations

import numpy as np
import polars as pl

NO_OBJECTS = -1  # stratum of detection images without annotations


def detection_strata(images: pl.DataFrame, annotations: pl.DataFrame) -> pl.Series:
    """One stratum per image: the rarest class it contains (by dataset-wide count), or NO_OBJECTS.

    Stratifying on the rarest class keeps rare classes in both splits, which a split on the
    commonest class would not. Returns an Int64 Series aligned with ``images``.
    """
    freq = annotations.group_by("category_id").len("freq")
    rarest = (
        annotations.join(freq, on="category_id")
        .sort("freq", "category_id")
        .group_by("image_id", maintain_order=True)
        .first()
        .select("image_id", pl.col("category_id").cast(pl.Int64).alias("stratum"))
    )
    out = images.select("image_id").join(rarest, on="image_id", how="left", maintain_order="left")
    return out.get_column("stratum").fill_null(NO_OBJECTS)


def classification_strata(images: pl.DataFrame, labels: pl.DataFrame) -> pl.Series:
    """One stratum per image: its label (NO_OBJECTS for an unlabelled image), aligned with ``images``."""
    out = images.select("image_id").join(labels, on="image_id", how="left", maintain_order="left")
    return out.get_column("category_id").cast(pl.Int64).fill_null(NO_OBJECTS)


def stratified_split(
    images: pl.DataFrame, strata: pl.Series, *, val_fraction: float, seed: int, train: str = "train", val: str = "val"
) -> pl.DataFrame:
    """``images`` with ``split`` set to ``train`` or ``val``, ``val_fraction`` of them in ``val``.

    The val count is ``round(N * val_fraction)``, shared out over strata by largest remainder,
    so every stratum keeps its share to within one image. Which images go to val is decided by
    one random key per image from ``numpy.random.default_rng(seed)``, drawn in image_id order,
    so the split depends only on the seed and the set of images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if strata.len() != images.height:
        raise ValueError(f"strata has {strata.len()} entries for {images.height} images")
    n = images.height
    frame = images.with_columns(strata.alias("_stratum")).with_row_index("_row").sort("image_id")
    keys = np.random.default_rng(seed).random(n)
    frame = frame.with_columns(pl.Series("_key", keys))

    sizes = frame.group_by("_stratum").len().sort("_stratum")
    quota = sizes.get_column("len").to_numpy() * val_fraction
    take = np.floor(quota).astype(np.int64)
    short = int(round(n * val_fraction)) - int(take.sum())
    if short > 0:  # largest remainders first; ties by stratum order (deterministic)
        order = np.argsort(-(quota - take), kind="stable")[:short]
        take[order] += 1
    quotas = pl.DataFrame({"_stratum": sizes.get_column("_stratum"), "_take": take})

    ranked = frame.join(quotas, on="_stratum").with_columns(
        pl.col("_key").rank("ordinal").over("_stratum").alias("_rank")
    )
    ranked = ranked.with_columns(
        pl.when(pl.col("_rank") <= pl.col("_take")).then(pl.lit(val)).otherwise(pl.lit(train)).alias("split")
    )
    return ranked.sort("_row").select(images.columns)
