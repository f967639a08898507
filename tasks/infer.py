"""Batch inference task: a checkpoint over one shard of a split → one Parquet file.

Predictions land in ``<out_dir>/part-<shard:05d>.parquet`` (docs/ARCHITECTURE.md §3), a local folder or an
object-store URI, streamed batch by batch and moved into place only when complete
(cvcore.engine.shards), so a failed, retried or killed task never leaves a file that
``pl.scan_parquet(out_dir / "part-*.parquet")`` would read. Each file records which checkpoint,
snapshot, split and sharding it holds: a shard whose complete file is already there is not
predicted again, which is how a crashed evaluation resumes. Shards of a split are independent
tasks: with a Dask task runner (prefect-dask) they spread over workers.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cvcore.engine.shards import (
    ShardFile,
    ShardKey,
    find_complete_shard,
    read_shard,
    remove_orphan_temporaries,
    remove_stale_shards,
    shard_name,
)
from cvcore.io import file_sha256, is_uri, local_snapshot, resolve_location
from tasks.ingest import _may_pass
from tasks.refs import PredictionsRef, SnapshotRef
from tasks.tracking import cvflow_home

GPU_TAG = "gpu"


def shard_key(snapshot: SnapshotRef, split: str, *, checkpoint_sha256: str, shard: int, num_shards: int) -> ShardKey:
    """The identity of shard ``shard`` of ``num_shards`` of ``split`` predicted by that checkpoint."""
    return ShardKey(
        checkpoint_sha256=checkpoint_sha256,
        snapshot_digest=snapshot.digest,
        split=split,
        shard=shard,
        num_shards=num_shards,
        task=snapshot.task,
    )


@task(name="predict", tags=[GPU_TAG], cache_policy=NO_CACHE, task_run_name="predict-{split}-{shard}")
def predict_shard(
    checkpoint: Path,
    snapshot: SnapshotRef,
    split: str,
    *,
    out_dir: Path | str,
    checkpoint_sha256: str,
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 32,
    device: str = "auto",
) -> PredictionsRef:
    """Predict shard ``shard`` of ``num_shards`` (contiguous image ranges) of ``split`` into ``out_dir``.

    ``checkpoint_sha256`` (of ``checkpoint``, computed once by the flow) goes into the file's
    metadata; a complete file of the same checkpoint, snapshot, split and sharding already in
    ``out_dir`` is kept and the shard is not predicted again. Score threshold, NMS IoU and
    detections per image come from the checkpoint's eval config, so a model is scored the same way
    wherever it runs. Images that cannot be read are recorded in the shard file's footer.
    """
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.infer import shard_indices

    logger = get_run_logger()
    key = shard_key(snapshot, split, checkpoint_sha256=checkpoint_sha256, shard=shard, num_shards=num_shards)
    done = find_complete_shard(out_dir, key)
    if done is not None:
        logger.info(
            "%s: complete from an earlier run (%d rows for %d %s images), kept",
            done.uri,
            done.num_rows,
            done.num_images,
            split,
        )
        return _ref(out_dir, done, reused=True)
    snap = read_snapshot(local_snapshot(snapshot.path, uri=snapshot.uri, digest=snapshot.digest, home=cvflow_home()))
    if snap.digest != snapshot.digest:  # the shard's key names snapshot.digest: never label other data with it
        raise ValueError(
            f"the snapshot changed since the flow opened it: {snapshot.uri or snapshot.path} had digest {snapshot.digest}, "
            f"{snap.path} on this worker has {snap.digest}; run the evaluation again"
        )
    indices = shard_indices(snap.split_images(split).height, num_shards=num_shards, shard=shard)
    written = _predict_into(
        checkpoint, snap, split, indices, out_dir=out_dir, key=key, batch_size=batch_size, device=device
    )
    logger.info("%s: %d rows for %d %s images", written.uri, written.num_rows, written.num_images, split)
    return _ref(out_dir, written, reused=False)


def _predict_into(
    checkpoint: Path, snap, split: str, indices: range, *, out_dir, key: ShardKey, batch_size: int, device: str
) -> ShardFile:
    """Run the model over ``indices`` of the split and stream the record batches into the shard file.

    cvcore.engine.infer.predict_checkpoint decodes as the checkpoint's EvalConfig says (score
    threshold, NMS IoU, detections per image); images that cannot be read go into the shard's footer.
    """
    from cvcore.engine.infer import predict_checkpoint
    from cvcore.engine.shards import write_shard

    found = file_sha256(checkpoint)
    if found != key.checkpoint_sha256:  # a worker seeing another file at that path would label its predictions wrongly
        raise ValueError(
            f"{checkpoint} on this worker is not the checkpoint the flow hashed: sha256 {found}, expected {key.checkpoint_sha256} "
            "(the checkpoint must be the same file at the same path on every worker)"
        )
    run = predict_checkpoint(checkpoint, snap, split, batch_size=batch_size, device=device, indices=indices)
    if len(run.dataset) != snap.split_images(split).height:
        raise ValueError(
            f"{snap.path}: the {split} dataset has {len(run.dataset)} images, its images table {snap.split_images(split).height}"
        )
    written = write_shard(run.batches, out_dir, key=key, num_images=len(indices), unreadable=run.unreadable)
    if run.unreadable:
        get_run_logger().warning(
            "%s: %d image(s) could not be read and have no prediction, e.g. %s (%s)",
            written.uri, len(run.unreadable), run.unreadable[0].file_name, run.unreadable[0].reason,
        )  # fmt: skip
    return written


def _ref(out_dir: Path | str, file: ShardFile, *, reused: bool) -> PredictionsRef:
    shard = file.key.shard
    return PredictionsRef(
        dir=out_dir if is_uri(out_dir) else Path(out_dir),
        split=file.key.split,
        task=file.key.task,
        num_images=file.num_images,
        num_rows=file.num_rows,
        files=(file.uri,),
        predicted=() if reused else (shard,),
        reused=(shard,) if reused else (),
    )


@task(
    name="prepare-shards", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_may_pass,
    task_run_name="prepare-shards-{split}",
)  # fmt: skip
def prepare_shards(
    snapshot: SnapshotRef, split: str, *, out_dir: Path | str, checkpoint_sha256: str, num_shards: int
) -> list[str]:
    """Make ``out_dir`` ready for these predictions; the removed shard files.

    A folder holding another model's, snapshot's or split's predictions (or part files cvflow
    did not write) is refused, before anything is deleted: ValueError naming the folder and
    what it holds (cvcore.engine.shards.check_predictions_folder), not retried. Complete shards
    of these predictions stay (they are reused); this model's shards of this data in another
    shard count are deleted (they would be read together with the new ones by
    ``pl.scan_parquet``, and are predicted again now). Temporary files of killed runs older than
    an hour go too.
    """
    key = shard_key(snapshot, split, checkpoint_sha256=checkpoint_sha256, shard=0, num_shards=num_shards)
    folder = resolve_location(out_dir)
    removed = remove_stale_shards(folder, key=key)
    if removed:
        get_run_logger().warning(
            "removed %d shard file(s) of another sharding of these predictions from %s", len(removed), out_dir
        )
    orphans = remove_orphan_temporaries(folder)  # over an hour old: a killed run's, not a concurrent writer's
    if orphans:
        get_run_logger().info("removed %d temporary file(s) of killed runs from %s", len(orphans), out_dir)
    return removed


def check_shards(
    snapshot: SnapshotRef, split: str, *, out_dir: Path | str, checkpoint_sha256: str, num_shards: int
) -> None:
    """Raise ValueError unless every ``part-<i>.parquet`` in ``out_dir`` still holds shard ``i`` of these predictions.

    Read from the footers after all shards finished: another run writing to the same folder
    (one evaluation per predictions folder at a time) could have replaced or removed a file
    since it was written, and evaluating then would mix two runs' predictions.
    """
    folder = resolve_location(out_dir)
    for i in range(num_shards):
        expected = shard_key(snapshot, split, checkpoint_sha256=checkpoint_sha256, shard=i, num_shards=num_shards)
        found = read_shard(folder.child(shard_name(i)))
        if found is None or found.key != expected:
            held = "is gone" if found is None else f"now holds {found.key}"
            raise ValueError(
                f"{folder.child(shard_name(i)).uri} was replaced by another run (it {held}, expected {expected}); "
                "run one evaluation per predictions folder at a time"
            )


def merge_refs(refs: list[PredictionsRef]) -> PredictionsRef:
    """One reference for all shards of a split (they share a folder), shard files in order."""
    first = refs[0]
    return first.model_copy(
        update={
            "num_images": sum(r.num_images for r in refs),
            "num_rows": sum(r.num_rows for r in refs),
            "files": tuple(f for r in refs for f in r.files),
            "predicted": tuple(s for r in refs for s in r.predicted),
            "reused": tuple(s for r in refs for s in r.reused),
        }
    )
