"""Batch inference task: a checkpoint over one shard of a split → one Parquet file.

Predictions land in ``<out_dir>/part-<shard:05d>.parquet`` (DESIGN.md §3), written atomically by
cvcore (temp file, then rename), so a failed or retried task never leaves half a file that
``pl.scan_parquet(out_dir / "*.parquet")`` would read. Shards of a split are independent tasks:
with a Dask task runner (prefect-dask) they spread over workers.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.refs import PredictionsRef, SnapshotRef

GPU_TAG = "gpu"


@task(name="predict", tags=[GPU_TAG], cache_policy=NO_CACHE, task_run_name="predict-{split}-{shard}")
def predict_shard(
    checkpoint: Path,
    snapshot: SnapshotRef,
    split: str,
    *,
    out_dir: Path,
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 32,
    device: str = "auto",
) -> PredictionsRef:
    """Predict shard ``shard`` of ``num_shards`` (contiguous image ranges) of ``split``.

    Score threshold and detections per image come from the checkpoint's eval config, so a model
    is scored the same way wherever it runs.
    """
    from cvcore.config import EvalConfig
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.checkpoint import load_model
    from cvcore.engine.infer import predict, shard_indices, write_prediction_shard
    from cvcore.engine.run import prediction_dataset

    loaded = load_model(checkpoint)
    snap = read_snapshot(snapshot.path)
    dataset = prediction_dataset(loaded.meta, snap, split)
    ec = EvalConfig.model_validate(loaded.meta["config"]["eval"])
    indices = shard_indices(len(dataset), num_shards=num_shards, shard=shard)
    batches = predict(
        loaded.model,
        dataset,
        task=snap.task,
        batch_size=batch_size,
        device=device,
        score_threshold=ec.score_threshold,
        max_detections=ec.max_detections,
        nms_iou=ec.nms_iou,
        indices=indices,
    )
    path = write_prediction_shard(batches, out_dir, shard=shard, task=snap.task)
    rows = pq.ParquetFile(path).metadata.num_rows
    get_run_logger().info("%s: %d rows for %d %s images", path, rows, len(indices), split)
    return PredictionsRef(dir=Path(out_dir), split=split, task=snap.task, num_images=len(indices), num_rows=rows)


def merge_refs(refs: list[PredictionsRef]) -> PredictionsRef:
    """One reference for all shards of a split (they share a folder)."""
    first = refs[0]
    return first.model_copy(update={"num_images": sum(r.num_images for r in refs), "num_rows": sum(r.num_rows for r in refs)})
