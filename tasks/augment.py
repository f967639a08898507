"""Augmentation task: the run's augmentation preview and statistics, logged to MLflow.

Training applies augmentation on the fly (cvcore.engine.data); this stage shows what it does to
the run's own training images before any GPU time is spent, so a broken pipeline (boxes left
behind, colours blown out) is visible in MLflow next to the results it produced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cvcore.config import RunConfig
from tasks.refs import SnapshotRef
from tasks.tracking import log_metrics, mlflow_client


@task(name="augment-preview", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def augment_preview(snapshot: SnapshotRef, config: RunConfig, *, run_id: str, out_dir: Path, n_preview: int = 8) -> Path:
    """Draw ``n_preview`` augmented training samples to ``out_dir/augment_preview.png``.

    The image goes to MLflow as ``augment/preview.png``, the stage's statistics as
    ``augment/stats.json`` and its numeric fields as ``augment/<name>`` metrics.
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
    fields = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(stats)
    client.log_dict(run_id, _jsonable(fields), "augment/stats.json")
    log_metrics(client, run_id, {f"augment/{k}": v for k, v in fields.items() if _is_number(v)})
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
