"""The small values that cross task boundaries: paths, digests, run ids, names (docs/ARCHITECTURE.md §1).

Frames, models and clients never cross a task boundary (they break Prefect's cache keys and
memory); these frozen pydantic records do, and they show up readably in the Prefect dashboard.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class _Ref(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class SnapshotRef(_Ref):
    """A dataset snapshot on disk (cvcore.data.snapshot) and what identifies its content."""

    path: Path
    name: str
    task: str  # "detection" | "classification"
    digest: str  # the snapshot's content digest (sha256 hex)
    splits: tuple[str, ...]
    uri: str | None = None  # where it came from when ``path`` is a local copy of an object-store snapshot


class CheckpointRef(_Ref):
    """A trained model: the checkpoint to use (best) and where the training outputs are."""

    path: Path  # best.pt (or last.pt when no validation ran)
    out_dir: Path  # last.pt, best.pt, metrics.json
    model_name: str
    task: str
    epochs: int


class PredictionsRef(_Ref):
    """Predictions of one split: ``<dir>/part-<shard>.parquet`` files, one dataset for pl.scan_parquet.

    ``dir`` is a local folder (Path) or an object-store URI (str, ``s3://bucket/prefix``).
    """

    dir: Path | str
    split: str
    task: str
    num_images: int
    num_rows: int
    files: tuple[str, ...] = ()  # the shard files (paths or URIs) in shard order; () = every part-*.parquet in dir
    predicted: tuple[int, ...] = ()  # shards this run computed
    reused: tuple[int, ...] = ()  # shards whose complete file from an earlier run was kept (resume)


class EvalSummary(_Ref):
    """Headline numbers of one evaluated split and where its tables went."""

    split: str
    task: str
    protocol: str  # "coco" | "voc07" | "voc12" | "classification"
    headline: str  # the metric that ranks models: "map" (coco), "map_50" (voc) or "macro_f1"
    metrics: dict[str, float]  # the scalar metrics of this split, without the split prefix
    tables_dir: Path  # metrics.parquet, per_class.parquet (and pr_curve.parquet for detection), unreadable.parquet
    unreadable: int = (
        0  # images left out of the evaluation because they could not be read (listed in unreadable.parquet)
    )


class ModelVersionRef(_Ref):
    """One registered model version and the aliases it holds after this step."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class ComparisonRef(_Ref):
    """A paired bootstrap comparison of two models' predictions on the same split."""

    metric: str  # "map", "map_50" or "macro_f1"
    split: str
    baseline: float
    candidate: float
    difference: float  # candidate - baseline on the full split
    low: float  # the interval of the difference
    high: float
    p_improvement: float  # share of bootstrap replicates where the candidate scored higher
    confidence: float
    n_boot: int
    candidate_is_better: bool  # the whole interval is above zero
