"""Training tasks: settle a run's config, then train it with per-epoch MLflow logging.

``plan_run`` turns the user's config into the one the run really uses (model defaults, the
number of classes, MLflow model URIs as local weight files) and logs it to MLflow once;
``train_model`` runs cvcore's ``train_run`` on it. The train task is tagged ``gpu`` so a Prefect
concurrency limit on that tag holds training to the number of GPUs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cvcore.config import PartialRunConfig, RunConfig
from tasks.artifacts import artifact_key
from tasks.infer import GPU_TAG  # one tag, one Prefect concurrency limit, for every GPU task
from tasks.refs import CheckpointRef, SnapshotRef
from tasks.registry import is_model_uri, resolve_checkpoint
from tasks.tracking import EpochLogger, log_config, mlflow_client

PRETRAINED_TAG = "cvflow.pretrained"  # where the starting weights came from


@task(name="plan-run", cache_policy=NO_CACHE)
def plan_run(snapshot: SnapshotRef, config: PartialRunConfig, *, run_id: str) -> RunConfig:
    """The run's resolved config (cvcore.engine.run.resolve_run_config: the user's ``config``, else
    the model's defaults, else cvflow's), logged as MLflow params; the tasks after it use it.

    ``model.pretrained`` given as an MLflow model URI is downloaded and replaced by the local
    checkpoint path (cvcore never talks to MLflow); the URI itself is kept as the run's
    ``cvflow.pretrained`` tag.
    """
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.run import resolve_run_config

    data = config.data.model_copy(update={"snapshot": snapshot.path})
    config = config.model_copy(update={"data": data})
    pretrained = config.model.pretrained
    if pretrained and is_model_uri(pretrained):
        local = resolve_checkpoint.fn(pretrained)
        config = config.model_copy(update={"model": config.model.model_copy(update={"pretrained": str(local)})})
    resolved = resolve_run_config(config, snapshot=read_snapshot(snapshot.path))
    client = mlflow_client()
    log_config(client, run_id, resolved)
    _show_sources(config, resolved, client=client, run_id=run_id, snapshot=snapshot)
    if pretrained:  # the lineage as the user gave it (models:/..., runs:/..., a file), not the download's path
        client.set_tag(run_id, PRETRAINED_TAG, str(pretrained))
    get_run_logger().info(
        "%s on %s: %d epochs, batch %d, %d px",
        resolved.model.name,
        snapshot.name,
        resolved.train.epochs,
        resolved.train.batch_size,
        resolved.data.img_size,
    )
    return resolved


def _show_sources(user: PartialRunConfig, resolved: RunConfig, *, client, run_id: str, snapshot: SnapshotRef) -> None:
    """Each resolved value and where it came from (the user, the model's defaults, cvflow's, the
    data): a table artifact on the flow run's dashboard page, ``config_sources.json`` in MLflow."""
    from prefect.artifacts import create_table_artifact

    from cvcore.config import flatten, sources
    from cvcore.models import model_spec

    origin = sources(user, model_spec(resolved.model.name).defaults)
    origin.update(
        {"data.snapshot": "data", "model.num_classes": "data"}
    )  # resolve_run_config takes them from the snapshot
    client.log_dict(run_id, origin, "config_sources.json")
    rows = [{"field": k, "value": v, "from": origin[k]} for k, v in flatten(resolved).items()]
    create_table_artifact(
        rows, key=artifact_key("run-config", f"{snapshot.name}-{resolved.model.name}"),
        description=f"{resolved.model.name} on {snapshot.name}: the resolved run config (user > model defaults > cvflow)",
    )  # fmt: skip


@task(name="train", tags=[GPU_TAG], cache_policy=NO_CACHE)
def train_model(
    config: RunConfig,
    *,
    run_id: str,
    out_dir: Path,
    progress: bool = False,
    resume: Path | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> CheckpointRef:
    """Train ``config`` (already resolved by plan_run) into ``out_dir``; epochs go to MLflow.

    The run folder's ``metrics.json``, ``history.parquet`` and ``config.yaml`` are logged under
    ``training/``. ``progress`` shows the engine's progress bar on stderr (interactive runs).
    ``resume``: a ``last.pt`` to continue (the engine restores weights, optimizer and RNG).

    ``train.devices`` > 1, or ``nnodes`` > 1 (this machine is node 0, the others join at
    ``rdzv_endpoint``): data-parallel, launched by the engine through torchrun's launcher; rank 0
    logs the epochs to MLflow; the task fails with the first failing rank's error
    (cvcore.engine.distributed.RankFailed). The MLflow param ``world_size`` records the processes.
    """
    from cvcore import plots
    from cvcore.engine.callbacks import ProgressBar
    from cvcore.engine.distributed import Nodes, devices_per_node
    from cvcore.engine.run import train_run

    nodes = Nodes(nnodes=nnodes, node_rank=0, rdzv_endpoint=rdzv_endpoint)
    client = mlflow_client()
    client.log_param(run_id, "world_size", devices_per_node(config.train.devices, config.train.device) * nodes.nnodes)
    callbacks = [EpochLogger(client, run_id)] + ([ProgressBar()] if progress else [])
    result = train_run(config, out_dir, callbacks=callbacks, resume=resume, nodes=nodes)
    for file in (result.metrics_file, result.history_file, out_dir / "config.yaml"):
        if file.is_file():
            client.log_artifact(run_id, str(file), "training")
    client.log_figure(run_id, plots.training_curves(result.history), "plots/training_curves.png")
    get_run_logger().info(
        "best epoch %d of %d: %s = %.4f", result.best_epoch, result.epochs_run, result.metric, result.best_metric
    )
    best = result.best_checkpoint if result.best_checkpoint.is_file() else result.last_checkpoint
    return CheckpointRef(
        path=best, out_dir=out_dir, model_name=config.model.name, task=_task_of(config), epochs=result.epochs_run
    )


def _task_of(config: RunConfig) -> str:
    from cvcore.models import model_spec

    return model_spec(config.model.name).task
