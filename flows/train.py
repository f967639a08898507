"""``train_pipeline``: ingest → augment → train → predict (val/test) → evaluate → register.

The flow owns the MLflow run: it opens it once the dataset is known, hands ``run_id`` to every
task (MLflow's active run is per thread, Prefect tasks run in threads) and closes it FINISHED, or
FAILED with the cause when any task fails, so a crashed pipeline never looks like a running one.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from cvcore.engine.run import claim_run_folder
from cvcore.io import file_sha256
from flows.params import DataSource, PipelineResult, TaskRunnerSpec, TrainPipelineParams
from flows.shards import predict_shards_on, submit_shards
from tasks.artifacts import artifact_key, markdown_table
from tasks.augment import augment_preview
from tasks.evaluate import describe_run, evaluate_split, report_split
from tasks.ingest import ingest_source, open_snapshot, source_fingerprint
from tasks.refs import EvalSummary, PredictionsRef, SnapshotRef
from tasks.registry import log_model, register_model
from tasks.storage import fetch_snapshot
from tasks.tracking import (
    cvflow_home,
    ensure_experiment,
    log_dataset,
    log_tags,
    mlflow_client,
    open_run,
    run_closed_after,
    run_tags,
    run_url,
    set_description,
)
from tasks.train import plan_run, train_model


def load_data(source: DataSource | str, *, home: Path) -> SnapshotRef:
    """The pipeline's snapshot: opened as is (a folder, or an object-store URI staged locally),
    or ingested (cached on the source's fingerprint)."""
    if isinstance(source, str):
        return fetch_snapshot(source, home=home)
    if source.format == "snapshot":
        return open_snapshot(source.path)
    fingerprint = source_fingerprint(source.path, source.images)
    kwargs = {
        "fmt": source.format, "home": home, "fingerprint": fingerprint, "images": source.images,
        "val_fraction": source.val_fraction, "seed": source.seed, "name": source.name,
    }  # fmt: skip
    ref = ingest_source(source.path, **kwargs)
    if not (ref.path / "manifest.json").is_file():  # a cached result whose snapshot was deleted since
        ref = ingest_source.with_options(refresh_cache=True)(source.path, **kwargs)
    return ref


def predict_split(
    checkpoint: Path,
    snapshot: SnapshotRef,
    split: str,
    *,
    out_dir: Path | str,
    shards: int,
    batch_size: int = 32,
    task_runner: TaskRunnerSpec | None = None,
    checkpoint_sha256: str | None = None,
) -> PredictionsRef:
    """Predict every shard of ``split`` (in parallel when there are several) into ``out_dir``.

    ``out_dir`` is a local folder or an object-store URI; complete shards of this checkpoint
    already there are kept (resume). ``task_runner`` None runs the shards on the calling flow's
    task runner; otherwise in a ``predict-shards`` sub-flow on the runner it describes (Dask).
    ``checkpoint_sha256`` is the checkpoint's digest when the caller has it already (hashed here
    otherwise); every worker checks its copy of the checkpoint against it.
    """
    digest = checkpoint_sha256 or file_sha256(checkpoint)
    kwargs = {"out_dir": out_dir, "checkpoint_sha256": digest, "num_shards": shards, "batch_size": batch_size}
    if task_runner is None:
        return submit_shards(checkpoint, snapshot, split, **kwargs)
    return predict_shards_on(task_runner, checkpoint, snapshot, split, **kwargs)


@flow(name="train-pipeline", flow_run_name="train-{params.config.chosen_model}")
def train_pipeline(params: TrainPipelineParams) -> PipelineResult:
    """Train ``params.config.model`` on ``params.data``, evaluate it, register it in MLflow."""
    logger = get_run_logger()
    home = cvflow_home()
    client = mlflow_client(home)
    experiment_id = ensure_experiment(client, params.experiment)
    snapshot = load_data(params.data, home=home)
    model_name = params.config.chosen_model
    tags = run_tags(snapshot, model_name=model_name, flow_name="train_pipeline", flow_run_id=flow_run.get_id())
    run_id = open_run(client, experiment_id, run_name=f"{model_name}-{snapshot.name}", tags=tags)
    with run_closed_after(client, run_id):  # from here on, any failure marks the run FAILED
        logger.info("MLflow run %s: %s", run_id, run_url(client, run_id))
        return _run(params, snapshot, run_id=run_id, home=home)


def _run(params: TrainPipelineParams, snapshot: SnapshotRef, *, run_id: str, home: Path) -> PipelineResult:
    client = mlflow_client(home)
    splits = [s for s in params.eval_splits if s in snapshot.splits]
    config = plan_run(snapshot, params.config, run_id=run_id)  # the resolved config, from here on
    logged = sorted({config.data.train_split, *splits} & set(snapshot.splits))
    log_dataset(client, run_id, snapshot.path, splits=logged)
    run_dir = params.run_dir or (params.resume.parent if params.resume else home / "checkpoints" / run_id)
    claim_run_folder(run_dir, resume=params.resume)  # before the preview writes there; training locks it
    if params.preview_images:
        augment_preview(snapshot, config, run_id=run_id, out_dir=run_dir, n_preview=params.preview_images)
    checkpoint = train_model(
        config, run_id=run_id, out_dir=run_dir, progress=params.progress, resume=params.resume,
        nnodes=params.nnodes, rdzv_endpoint=params.rdzv_endpoint,
    )  # fmt: skip

    predictions: dict[str, PredictionsRef] = {}
    summaries: dict[str, EvalSummary] = {}
    for split in splits:
        out = home / "predictions" / run_id / split
        preds = predict_split(
            checkpoint.path,
            snapshot,
            split,
            out_dir=out,
            shards=params.prediction_shards,
            task_runner=params.task_runner,
        )
        summaries[split] = evaluate_split(
            snapshot, preds, eval_config=config.eval, run_id=run_id, out_dir=run_dir / "eval" / split
        )
        report_split(snapshot, preds, summaries[split], run_id=run_id)
        predictions[split] = preds

    model_uri = log_model(run_id, checkpoint.path)
    registered = params.registered_model or f"{snapshot.name}-{config.model.name}"
    version = register_model(model_uri, name=registered, run_id=run_id, tags=_version_tags(summaries))
    log_tags(client, run_id, {"cvflow.registered_model": registered, "cvflow.model_version": version.version})
    title = f"{config.model.name} on {snapshot.name} ({snapshot.task}), {checkpoint.epochs} epoch(s)"
    set_description(
        client,
        run_id,
        describe_run(title, summaries, lines=[f"Registered as `{registered}` version {version.version}."]),
    )
    url = run_url(client, run_id)
    _summary_artifact(registered, version.version, url, summaries)
    return PipelineResult(
        run_id=run_id,
        run_url=url,
        snapshot=snapshot,
        model=version,
        checkpoint=checkpoint.path,
        predictions=predictions,
        metrics={s: dict(v.metrics) for s, v in summaries.items()},
        headline=next(iter(summaries.values())).headline if summaries else "",
    )


def _version_tags(summaries: dict[str, EvalSummary]) -> dict[str, str]:
    """Headline numbers on the model version, so the registry page shows what each version scored."""
    return {f"{split}.{s.headline}": f"{s.metrics.get(s.headline, float('nan')):.4f}" for split, s in summaries.items()}


def _summary_artifact(registered: str, version: str, url: str, summaries: dict[str, EvalSummary]) -> None:
    parts = [f"# {registered} version {version}", "", f"MLflow run: [{url}]({url})", ""]
    for split, s in summaries.items():
        shown = {k: v for k, v in s.metrics.items() if "/" not in k}
        parts += [f"## {split} ({s.protocol})", "", markdown_table(shown), ""]
    create_markdown_artifact(
        "\n".join(parts), key=artifact_key("train", registered), description=f"{registered} v{version}"
    )
