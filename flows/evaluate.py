"""``evaluate_pipeline``: a trained model + a dataset split → predictions Parquet + metrics, no training.

The model is a registry URI (``models:/name@champion``), a logged model (``runs:/<id>/model``) or
a checkpoint path. It is scored exactly as the training pipeline scores (same inference code,
the model's own eval settings), so evaluating ``@champion`` on the split it was evaluated on in
training reproduces the numbers logged then. The evaluation is an MLflow run of its own.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.params import EvaluatePipelineParams, EvaluateResult
from flows.train import load_data, predict_split
from tasks.evaluate import evaluate_split, model_eval_config, report_split
from tasks.registry import is_model_uri, resolve_checkpoint
from tasks.tracking import close_run, cvflow_home, ensure_experiment, log_dataset, mlflow_client, open_run, run_tags, run_url

TAG_EVALUATED_MODEL = "cvflow.evaluated_model"


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
    run_id = open_run(client, experiment_id, run_name=f"eval-{label}-{snapshot.name}-{params.split}", tags=tags | {TAG_EVALUATED_MODEL: params.model})
    logger.info("MLflow run %s: %s", run_id, run_url(client, run_id))
    try:
        log_dataset(client, run_id, snapshot.path, splits=[params.split])
        checkpoint = resolve_checkpoint(params.model)
        eval_config = model_eval_config(checkpoint, protocol=params.protocol)
        preds = predict_split(
            checkpoint, snapshot, params.split, out_dir=home / "predictions" / run_id / params.split, shards=params.prediction_shards,
            batch_size=params.batch_size,
        )
        summary = evaluate_split(snapshot, preds, eval_config=eval_config, run_id=run_id, out_dir=home / "evaluations" / run_id / params.split)
        report_split(snapshot, preds, summary, run_id=run_id)
    except BaseException as exc:
        close_run(client, run_id, error=exc)
        raise
    close_run(client, run_id)
    return EvaluateResult(
        run_id=run_id,
        run_url=run_url(client, run_id),
        model=params.model,
        checkpoint=checkpoint,
        predictions=preds.dir,
        metrics=dict(summary.metrics),
        headline=summary.headline,
    )
