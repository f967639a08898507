"""Augmentation task: the run's augmentation preview and statistics, logged to MLflow.

Training applies augmentation on the fly (cvcore.engine.data); this stage shows what it does to
the run's own training images before any GPU time is spent, so a broken pipeline (boxes left
behind, colours blown out) is visible in MLflow next to the results it produced.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cvcore.config import RunConfig
from tasks.refs import SnapshotRef
from tasks.tracking import log_metrics, mlflow_client


@task(name="augment-preview", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def augment_preview(
    snapshot: SnapshotRef, config: RunConfig, *, run_id: str, out_dir: Path, n_preview: int = 8
) -> Path:
    """Draw ``n_preview`` augmented training samples to ``out_dir/augment_preview.png``.

    MLflow gets the preview (``augment/augment_preview.png``), the per-step and label tables
    (``augment/steps.json``, ``augment/labels.json``), the pipeline and the summary numbers as
    ``augment/<name>`` metrics.
    """
    from cvcore.augment.stage import run_augment_stage
    from cvcore.data.snapshot import read_snapshot

    preview = Path(out_dir) / "augment_preview.png"
    preview.parent.mkdir(parents=True, exist_ok=True)
    stats = run_augment_stage(
        read_snapshot(snapshot.path),
        config.augment,
        preview_path=preview,
        split=config.data.train_split,
        n_preview=n_preview,
        img_size=config.data.img_size,
    )
    client = mlflow_client()
    if preview.is_file():
        client.log_artifact(run_id, str(preview), "augment")
    # Tables as MLflow tables (the UI shows them); the pipeline as JSON; numbers as metrics.
    client.log_table(run_id, data=stats.steps.to_pandas(), artifact_file="augment/steps.json")
    client.log_table(run_id, data=stats.labels.to_pandas(), artifact_file="augment/labels.json")
    client.log_dict(
        run_id,
        {"task": stats.task, "split": stats.split, "n_samples": stats.n_samples, "pipeline": _jsonable(stats.pipeline)},
        "augment/pipeline.json",
    )
    log_metrics(client, run_id, {f"augment/{k}": v for k, v in stats.summary.items() if _is_number(v)})
    get_run_logger().info("augmentation preview of %d samples: %s", n_preview, preview)
    return preview


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
