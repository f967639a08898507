"""Predicting a split as shards, on the task runner a run asks for (threads or Dask).

Prefect 3 fixes a flow's task runner when the flow is decorated, so a runner chosen per run (a
parameter the dashboard shows) needs a flow of its own: ``predict_shards`` is that small inner
flow, called as ``predict_shards.with_options(task_runner=make_task_runner(spec))(...)``. Inside
it one ``predict`` task per shard is submitted; shards already complete in the output folder
(same checkpoint, snapshot, split and sharding) are kept, so a re-run after a crash redoes only
the missing ones.

Dask workers run the same tasks (prefect-dask ships the Prefect context to them). Each worker
needs the checkpoint file at the same path as the flow, even when the snapshot and the
predictions are on an object store: a shared file system (or the same image with the file
baked in); a worker whose file there differs from the one the flow hashed refuses the shard.
The snapshot is a folder every worker sees, or an object-store URI each worker stages into its
own ``CVFLOW_HOME`` cache; the predictions folder is shared storage or an object-store URI. A
relative predictions path would be resolved against each worker's working directory, so the
flows pass absolute paths or URIs (``resolve_location(...).uri``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.params import DaskLocalCluster, DaskScheduler, TaskRunnerSpec, ThreadRunner
from tasks.infer import check_shards, merge_refs, predict_shard, prepare_shards
from tasks.refs import PredictionsRef, SnapshotRef


def make_task_runner(spec: TaskRunnerSpec) -> TaskRunner:
    """The Prefect task runner a :data:`TaskRunnerSpec` describes (a new, unstarted one)."""
    if isinstance(spec, ThreadRunner):
        return ThreadPoolTaskRunner(max_workers=spec.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ValueError("a Dask task runner needs prefect-dask: pip install 'cvflow[dask]'") from None
    if isinstance(spec, DaskLocalCluster):
        # No dashboard: a fixed port (8787) would clash between concurrent runs on one machine.
        kwargs = {
            "n_workers": spec.n_workers,
            "threads_per_worker": spec.threads_per_worker,
            "processes": True,
            "dashboard_address": None,
        }
        return DaskTaskRunner(cluster_kwargs=kwargs)
    if isinstance(spec, DaskScheduler):
        return DaskTaskRunner(address=spec.address)
    raise TypeError(f"unknown task runner spec {spec!r}")


def submit_shards(
    checkpoint: Path,
    snapshot: SnapshotRef,
    split: str,
    *,
    out_dir: Path | str,
    checkpoint_sha256: str,
    num_shards: int,
    batch_size: int = 32,
) -> PredictionsRef:
    """Predict the shards of ``split`` on the current flow's task runner and wait for all of them.

    Every shard runs to its end even when one fails, so the finished ones are kept for the next
    attempt; then the first failure is raised. Once all are done their footers are read again:
    a file another run replaced meanwhile is a ValueError (see tasks.infer.check_shards).
    """
    prepare_shards(snapshot, split, out_dir=out_dir, checkpoint_sha256=checkpoint_sha256, num_shards=num_shards)
    futures = [
        predict_shard.submit(
            checkpoint,
            snapshot,
            split,
            out_dir=out_dir,
            checkpoint_sha256=checkpoint_sha256,
            shard=i,
            num_shards=num_shards,
            batch_size=batch_size,
        )  # fmt: skip
        for i in range(num_shards)
    ]
    wait(futures)
    refs = [f.result() for f in futures]
    check_shards(snapshot, split, out_dir=out_dir, checkpoint_sha256=checkpoint_sha256, num_shards=num_shards)
    return merge_refs(refs)


@flow(name="predict-shards", flow_run_name="predict-{split}-{num_shards}-shards")
def predict_shards(
    checkpoint: Path,
    snapshot: SnapshotRef,
    split: str,
    *,
    out_dir: Path | str,
    checkpoint_sha256: str,
    num_shards: int,
    batch_size: int = 32,
) -> PredictionsRef:
    """:func:`submit_shards` as a flow of its own, so its task runner can be chosen per call."""
    return submit_shards(
        checkpoint,
        snapshot,
        split,
        out_dir=out_dir,
        checkpoint_sha256=checkpoint_sha256,
        num_shards=num_shards,
        batch_size=batch_size,
    )


def predict_shards_on(
    spec: TaskRunnerSpec,
    checkpoint: Path,
    snapshot: SnapshotRef,
    split: str,
    *,
    out_dir: Path | str,
    checkpoint_sha256: str,
    num_shards: int,
    batch_size: int = 32,
) -> PredictionsRef:
    """Run :func:`predict_shards` as a sub-flow on the task runner ``spec`` describes."""
    inner = predict_shards.with_options(task_runner=make_task_runner(spec))
    return inner(
        checkpoint,
        snapshot,
        split,
        out_dir=out_dir,
        checkpoint_sha256=checkpoint_sha256,
        num_shards=num_shards,
        batch_size=batch_size,
    )
