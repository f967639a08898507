"""``evaluate_pipeline``: a trained model + a dataset split → predictions Parquet + metrics, no training.

The model is a registry URI (``models:/name@champion``), a logged model (``runs:/<id>/model``) or
a checkpoint path. It is scored exactly as the training pipeline scores (same inference code,
the model's own eval settings), so evaluating ``@champion`` on the split it was evaluated on in
training reproduces the numbers logged then. The evaluation is an MLflow run of its own.

At scale: the split is predicted as ``prediction_shards`` Parquet files, one task each, on the
task runner ``params.task_runner`` names (threads, a local Dask cluster or a Dask scheduler; a
``predict-shards`` sub-flow, since Prefect fixes a flow's runner at decoration). The shards go
to a folder keyed by the checkpoint's and the snapshot's digests and the shard count (or ``params.predictions``, a
path or ``s3://`` URI), so re-running after a crash keeps the complete shards and predicts only
the missing ones. The snapshot may be an object-store URI too (staged locally once).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from cvcore.engine.locks import folder_lock, sibling_lock_file
from cvcore.io import file_sha256, is_uri, resolve_location
from flows.params import EvaluatePipelineParams, EvaluateResult
from flows.train import load_data, predict_split
from tasks.evaluate import describe_run, evaluate_split, model_eval_config, report_split
from tasks.registry import is_model_uri, resolve_checkpoint
from tasks.tracking import (
    TAG_SNAPSHOT,
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

TAG_EVALUATED_MODEL = "cvflow.evaluated_model"
TAG_PREDICTIONS = "cvflow.predictions"  # the folder or URI of the split's part-*.parquet files
TAG_CHECKPOINT_SHA256 = "cvflow.checkpoint_sha256"
TAG_SHARDS_REUSED = "cvflow.shards_reused"  # shards kept from an earlier, interrupted run ("" when none)


@flow(name="evaluate-pipeline", flow_run_name="evaluate-{params.split}")
def evaluate_pipeline(params: EvaluatePipelineParams) -> EvaluateResult:
    """Predict ``params.split`` of ``params.data`` with ``params.model`` and score it."""
    logger = get_run_logger()
    home = cvflow_home()
    client = mlflow_client(home)
    experiment_id = ensure_experiment(client, params.experiment)
    snapshot = load_data(params.data, home=home)
    if params.split not in snapshot.splits:
        raise ValueError(f"snapshot {snapshot.path} has no split {params.split!r}; splits: {list(snapshot.splits)}")
    label = params.model if is_model_uri(params.model) else Path(params.model).name
    tags = run_tags(snapshot, model_name=label, flow_name="evaluate_pipeline", flow_run_id=flow_run.get_id())
    if snapshot.uri:  # staged from an object store: name where it lives, not the local copy
        tags[TAG_SNAPSHOT] = snapshot.uri
    run_id = open_run(
        client,
        experiment_id,
        run_name=f"eval-{label}-{snapshot.name}-{params.split}",
        tags=tags | {TAG_EVALUATED_MODEL: params.model},
    )
    logger.info("MLflow run %s: %s", run_id, run_url(client, run_id))
    with run_closed_after(client, run_id):
        log_dataset(client, run_id, snapshot.path, splits=[params.split])
        checkpoint = resolve_checkpoint(params.model)
        eval_config = model_eval_config(checkpoint, protocol=params.protocol)
        digest = file_sha256(checkpoint)
        # Absolute (or a URI) before it reaches the workers: a relative path would be resolved in each worker's cwd.
        default_dir = (
            home
            / "predictions"
            / f"model-{digest[:12]}-data-{snapshot.digest[:12]}-shards-{params.prediction_shards}"
            / params.split
        )
        out_dir = resolve_location(params.predictions).uri if params.predictions else default_dir
        log_tags(client, run_id, {TAG_PREDICTIONS: str(out_dir), TAG_CHECKPOINT_SHA256: digest})
        # One evaluation per predictions folder at a time: a second one fails at once instead of
        # replacing this one's shards (local folders; object stores have no locks).
        lock = (
            contextlib.nullcontext()
            if is_uri(out_dir)
            else folder_lock(out_dir, what="evaluation", lock_file=sibling_lock_file(out_dir))
        )
        with lock:
            preds = predict_split(
                checkpoint, snapshot, params.split, out_dir=out_dir, shards=params.prediction_shards, batch_size=params.batch_size,
                task_runner=params.task_runner, checkpoint_sha256=digest,
            )  # fmt: skip
            if preds.reused:
                logger.info(
                    "kept complete shard(s) %s from an earlier run; predicted %s",
                    list(preds.reused),
                    list(preds.predicted),
                )
            log_tags(client, run_id, {TAG_SHARDS_REUSED: ",".join(map(str, preds.reused))})
            summary = evaluate_split(
                snapshot,
                preds,
                eval_config=eval_config,
                run_id=run_id,
                out_dir=home / "evaluations" / run_id / params.split,
            )
            report_split(snapshot, preds, summary, run_id=run_id)
        set_description(
            client,
            run_id,
            describe_run(
                f"{label} evaluated on {snapshot.name} / {params.split}",
                {params.split: summary},
                lines=[f"Predictions: `{out_dir}`."],
            ),
        )
    return EvaluateResult(
        run_id=run_id,
        run_url=run_url(client, run_id),
        model=params.model,
        checkpoint=checkpoint,
        predictions=preds.dir,
        metrics=dict(summary.metrics),
        headline=summary.headline,
        shards_predicted=preds.predicted,
        shards_reused=preds.reused,
    )
