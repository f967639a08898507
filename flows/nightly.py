"""``nightly_retrain``: retrain as a challenger, promote it only when it is better with confidence.

1. Look up the registered model's current ``@champion`` (before anything is registered).
2. Run ``train_pipeline`` on the latest data: the new version becomes ``@challenger``.
3. No champion yet: the challenger becomes champion (the first model ever trained).
   Otherwise score both on the same held-out split and run the paired bootstrap of the
   difference (challenger - champion; mAP for detection, macro-F1 for classification).
4. Promote only if the whole interval is above zero. The decision, its numbers and the reason
   are recorded on the challenger's MLflow run and model version and in a Prefect artifact.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.params import NightlyDecision, NightlyParams
from flows.train import load_data, predict_split, train_pipeline
from tasks.artifacts import artifact_key
from tasks.evaluate import compare_models, model_eval_config
from tasks.refs import ComparisonRef
from tasks.registry import CHAMPION, champion_version, resolve_checkpoint, set_alias
from tasks.tracking import cvflow_home, log_metrics, log_tags, mlflow_client

TAG_DECISION = "cvflow.nightly.decision"
TAG_REASON = "cvflow.nightly.reason"


@flow(name="nightly-retrain", flow_run_name="nightly-{params.train.config.chosen_model}")
def nightly_retrain(params: NightlyParams) -> NightlyDecision:
    """Train a challenger on ``params.train.data`` and promote it only on evidence."""
    logger = get_run_logger()
    home = cvflow_home()
    snapshot = load_data(params.train.data, home=home)
    name = params.train.registered_model or f"{snapshot.name}-{params.train.config.chosen_model}"
    champion = champion_version(name)
    split = params.compare_split or ("test" if "test" in snapshot.splits else "val")
    if split not in snapshot.splits:
        raise ValueError(
            f"snapshot {snapshot.path} has no split {split!r} to compare on; splits: {list(snapshot.splits)}"
        )
    train = params.train.model_copy(
        update={"registered_model": name, "eval_splits": tuple(dict.fromkeys((*params.train.eval_splits, split)))}
    )
    result = train_pipeline(train)
    challenger = result.model

    if champion is None:
        decision = NightlyDecision(
            registered_model=name, challenger=challenger, champion_before=None, champion_after=challenger.version, promoted=True,
            reason=f"first model of {name}: version {challenger.version} becomes champion",
        )  # fmt: skip
    else:
        champion_ckpt = resolve_checkpoint(f"models:/{name}/{champion}")
        baseline = predict_split(
            champion_ckpt, snapshot, split, out_dir=home / "predictions" / result.run_id / f"champion-v{champion}" / split,
            shards=params.train.prediction_shards,
        )  # fmt: skip
        protocol = model_eval_config(result.checkpoint).protocol
        cmp = compare_models(
            snapshot,
            baseline,
            result.predictions[split],
            protocol=protocol,
            n_boot=params.bootstrap_samples,
            confidence=params.confidence,
        )
        if cmp.candidate_is_better:
            set_alias(name, CHAMPION, challenger.version)
        decision = NightlyDecision(
            registered_model=name, challenger=challenger, champion_before=champion,
            champion_after=challenger.version if cmp.candidate_is_better else champion, promoted=cmp.candidate_is_better,
            reason=_reason(cmp, challenger=challenger.version, champion=champion),
            metric=cmp.metric, split=split, difference=cmp.difference, ci_low=cmp.low, ci_high=cmp.high,
        )  # fmt: skip
    _record(decision, run_id=result.run_id)
    logger.info("%s", decision.reason)
    return decision


def _reason(cmp: ComparisonRef, *, challenger: str, champion: str) -> str:
    interval = f"{100 * cmp.confidence:.0f}% interval [{cmp.low:+.4f}, {cmp.high:+.4f}]"
    numbers = (
        f"{cmp.metric} on {cmp.split}: challenger v{challenger} {cmp.candidate:.4f}, champion v{champion} {cmp.baseline:.4f}, "
        f"difference {cmp.difference:+.4f}, {interval}"
    )
    if cmp.candidate_is_better:
        return f"promoted v{challenger} to champion: {numbers} is above zero"
    if cmp.low != cmp.low:  # NaN: no replicate could be scored
        return f"kept champion v{champion}: the difference is undefined ({numbers})"
    verdict = "below zero" if cmp.high < 0 else "includes zero"
    return f"kept champion v{champion}: {numbers} {verdict}, so the challenger is not better with confidence"


def _record(decision: NightlyDecision, *, run_id: str) -> None:
    """The decision on the challenger's MLflow run and model version, and as a Prefect artifact."""
    client = mlflow_client()
    verdict = "promoted" if decision.promoted else "kept champion"
    log_tags(client, run_id, {TAG_DECISION: verdict, TAG_REASON: decision.reason})
    numbers = {"difference": decision.difference, "ci_low": decision.ci_low, "ci_high": decision.ci_high}
    log_metrics(client, run_id, {f"nightly/{k}": v for k, v in numbers.items() if v is not None})
    client.log_dict(run_id, decision.model_dump(mode="json"), "nightly/decision.json")
    client.set_model_version_tag(decision.registered_model, decision.challenger.version, "nightly.decision", verdict)
    client.set_model_version_tag(
        decision.registered_model, decision.challenger.version, "nightly.reason", decision.reason
    )
    lines = [
        f"# Nightly: {decision.registered_model}",
        "",
        f"**{verdict}** — champion is now version {decision.champion_after}",
        "",
        decision.reason,
    ]
    create_markdown_artifact(
        "\n".join(lines), key=artifact_key("nightly", decision.registered_model), description=verdict
    )
