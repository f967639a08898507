"""Evaluation tasks: predictions Parquet + ground truth → metric tables, MLflow metrics, artifacts.

``evaluate_split`` scores one split with cvcore.metrics and writes its tables as Parquet
(``metrics``, ``per_class`` and, for detection, ``pr_curve`` and ``f1_curve``; for
classification ``confusion``) under ``out_dir``; the numbers go to MLflow as ``final/<split>/...``
and a Prefect markdown + table artifact carries the headline numbers and the MLflow run link.
``report_split`` draws the plots from those tables (so no frame crosses a task boundary).

Images that could not be read at prediction time (recorded in the prediction files' footers,
cvcore.engine.shards.read_unreadable_shards) are left out of the evaluated universe: they count
neither as images without detections nor as missed classifications. They are reported, never
silently: ``unreadable.parquet`` among the tables (image_id, file_name as in the snapshot,
reason), and on the MLflow run the metric ``final/<split>/unreadable_images``, the tag
``cvflow.unreadable.<split>`` (the count and the first files with their reasons) and the table
``eval/<split>/unreadable.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cvcore.config import EvalConfig
from cvcore.io import atomic_path
from tasks.artifacts import artifact_key, fmt, markdown_table
from tasks.refs import ComparisonRef, EvalSummary, PredictionsRef, SnapshotRef
from tasks.tracking import log_metrics, log_tags, mlflow_client, run_url

HEADLINE = {"coco": "map", "voc07": "map_50", "voc12": "map_50", "classification": "macro_f1"}
TAG_HEADLINE = "cvflow.headline"
TAG_UNREADABLE = "cvflow.unreadable"  # + ".<split>": how many images could not be read, and which
UNREADABLE_SHOWN = 5  # files named in the tag (all of them are in the table)


@dataclass(frozen=True)
class Scores:
    """One split's evaluation: flat scalar metrics and the tables behind them."""

    protocol: str
    metrics: dict[str, float]  # summary numbers, then "<kind>/<class name>" per class
    tables: dict[str, pl.DataFrame]  # ... and "unreadable": the images left out (image_id, file_name, reason)


def read_predictions(predictions: PredictionsRef) -> pl.LazyFrame:
    """All shards of a split as one lazy frame (``pl.scan_parquet``; local paths or object-store URIs).

    The ref's own shard files when it lists them, else every ``part-*.parquet`` in its folder.
    Object stores are reached with the store's usual environment variables (for S3:
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``).
    """
    if predictions.files:
        return pl.scan_parquet(list(predictions.files))
    if isinstance(predictions.dir, str):
        return pl.scan_parquet(f"{predictions.dir.rstrip('/')}/part-*.parquet")
    return pl.scan_parquet(Path(predictions.dir) / "part-*.parquet")


def read_unreadable(predictions: PredictionsRef) -> pl.DataFrame:
    """The images of ``predictions`` that could not be read when they were predicted (from the files' footers)."""
    from cvcore.engine.shards import list_shards, read_unreadable_shards

    files = predictions.files or tuple(loc.uri for loc in list_shards(predictions.dir))
    return read_unreadable_shards(files)


def score_split(
    snapshot_path: Path,
    predictions: pl.LazyFrame | pl.DataFrame,
    *,
    split: str,
    protocol: str,
    unreadable: pl.DataFrame | None = None,
) -> Scores:
    """Score ``predictions`` of ``split`` against the snapshot's ground truth (cvcore.metrics).

    ``unreadable`` (image_id, ...; :func:`read_unreadable`): images that could not be read at
    prediction time; they are left out of the evaluated images and listed in
    ``tables["unreadable"]`` with the snapshot's file name and the reason.
    """
    from cvcore.data.snapshot import read_snapshot

    snap = read_snapshot(snapshot_path)
    split_images = snap.split_images(split)
    left_out = unreadable_table(split_images, unreadable)
    images = split_images.join(left_out.select("image_id"), on="image_id", how="anti")
    names = dict(zip(snap.categories["category_id"].to_list(), snap.categories["name"].to_list()))
    if snap.task == "detection":
        scores = _detection_scores(snap.annotations, predictions, images=images, protocol=protocol, names=names)
    else:
        scores = _classification_scores(snap.labels, predictions, images=images, names=names)
    return Scores(protocol=scores.protocol, metrics=scores.metrics, tables={**scores.tables, "unreadable": left_out})


def unreadable_table(images: pl.DataFrame, unreadable: pl.DataFrame | None) -> pl.DataFrame:
    """The unreadable images of ``images`` (a split's images table): image_id, file_name (the
    snapshot's, relative to its image root), reason. Empty when ``unreadable`` is None or empty."""
    found = unreadable if unreadable is not None else pl.DataFrame(schema={"image_id": pl.Int64, "reason": pl.String})
    return (
        images.select(pl.col("image_id").cast(pl.Int64), "file_name")
        .join(found.select(pl.col("image_id").cast(pl.Int64), "reason"), on="image_id", how="inner")
        .unique("image_id", keep="first")
        .sort("image_id")
    )


def _detection_scores(
    annotations, predictions, *, images: pl.DataFrame, protocol: str, names: dict[int, str]
) -> Scores:
    from cvcore.metrics.detection import evaluate_detections
    from cvcore.metrics.errors import detection_errors

    # A LazyFrame (the shards) is handed to each analysis as is: each collects only the columns it
    # needs and frees them, so peak memory is the larger analysis, not both plus a collected copy
    # (benchmarks/eval_scale.py: -250 MB at 5 M detections; reading the shards twice costs ~0.3 s).
    report = evaluate_detections(annotations, predictions, images=images, protocol=protocol, categories=sorted(names))
    errors = detection_errors(annotations, predictions, images=images, protocol=protocol, categories=sorted(names))
    per_class = _with_names(report.per_class, names)
    metrics = dict(report.summary)
    f1 = per_class.filter(pl.col("n_gt") > 0).get_column("f1")
    metrics["macro_f1"] = float(f1.mean()) if f1.len() else math.nan  # best-threshold F1 at IoU 0.5, per class
    metrics.update(_per_class_metrics(per_class, ("ap", "f1")))
    for row in errors.summary.iter_rows(named=True):  # AP@0.5 an oracle fixing each error type would add
        metrics[f"error_dap/{row['error']}"] = float(row["dap"])
    tables = {
        "per_class": per_class,
        "pr_curve": _with_names(report.pr_curve, names),
        "f1_curve": _with_names(report.f1_curve, names),
        "errors": errors.summary,
        "errors_per_class": _with_names(errors.per_class, names),
    }
    return Scores(protocol=protocol, metrics=metrics, tables=tables)


def _classification_scores(labels, predictions, *, images: pl.DataFrame, names: dict[int, str]) -> Scores:
    from cvcore.metrics.classification import classification_report

    preds = predictions.lazy() if isinstance(predictions, pl.DataFrame) else predictions
    truth = labels.join(images.select("image_id"), on="image_id", how="semi")
    # Every evaluated image needs its prediction: an image the model skipped is an error, not a pass.
    joined = truth.join(preds.select("image_id", "category_id").collect(), on="image_id", how="left", suffix="_pred")
    missing = joined.filter(pl.col("category_id_pred").is_null())
    if missing.height:
        first = missing["image_id"][0]
        file = images.filter(pl.col("image_id") == first)["file_name"]
        raise ValueError(
            f"{missing.height} image(s) of the split have no prediction, e.g. image_id {first}"
            + (f" ({file[0]})" if file.len() else "") + "; the predictions are not of this split or are incomplete"
        )  # fmt: skip
    rep = classification_report(joined["category_id"], joined["category_id_pred"], num_classes=len(names))
    metrics = {"accuracy": float(rep.accuracy)}
    for avg in ("macro", "micro", "weighted"):
        for key, value in _averages(getattr(rep, avg)).items():
            metrics[f"{avg}_{key}"] = value
    per_class = _with_names(rep.per_class, names)
    metrics.update(_per_class_metrics(per_class, ("precision", "recall", "f1")))
    k = len(names)
    confusion = pl.DataFrame(
        {"true_id": [i for i in range(k) for _ in range(k)], "pred_id": [j for _ in range(k) for j in range(k)],
         "count": [int(rep.confusion[i][j]) for i in range(k) for j in range(k)]},
        schema={"true_id": pl.Int32, "pred_id": pl.Int32, "count": pl.Int64},
    )  # fmt: skip
    return Scores(protocol="classification", metrics=metrics, tables={"per_class": per_class, "confusion": confusion})


def _averages(avg) -> dict[str, float]:
    """precision/recall/f1 of a report's average, whether a mapping or an object with attributes."""
    if isinstance(avg, dict):
        return {k: float(v) for k, v in avg.items() if k in ("precision", "recall", "f1")}
    return {k: float(getattr(avg, k)) for k in ("precision", "recall", "f1") if hasattr(avg, k)}


def _with_names(frame: pl.DataFrame, names: dict[int, str]) -> pl.DataFrame:
    """``frame`` with a ``name`` column after ``category_id`` (class names for tables and plots)."""
    if "category_id" not in frame.columns:
        return frame
    lookup = pl.DataFrame(
        {"category_id": list(names), "name": list(names.values())}, schema={"category_id": pl.Int32, "name": pl.String}
    )
    out = frame.with_columns(pl.col("category_id").cast(pl.Int32)).join(
        lookup, on="category_id", how="left", maintain_order="left"
    )
    return out.select("category_id", "name", *[c for c in frame.columns if c != "category_id"])


def _per_class_metrics(per_class: pl.DataFrame, columns: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for row in per_class.iter_rows(named=True):
        for col in columns:
            if col in row and row[col] is not None:
                out[f"{col}/{row['name']}"] = float(row[col])
    return out


def write_table(frame: pl.DataFrame, path: Path) -> Path:
    """Write ``frame`` as Parquet atomically (temp sibling, then rename)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    return path


@task(
    name="evaluate",
    cache_policy=NO_CACHE,
    task_run_name="evaluate-{predictions.split}",
    retries=1,
    retry_delay_seconds=2,
)
def evaluate_split(
    snapshot: SnapshotRef, predictions: PredictionsRef, *, eval_config: EvalConfig, run_id: str | None, out_dir: Path
) -> EvalSummary:
    """Score one split, write its tables to ``out_dir``, log numbers and tables to the MLflow run."""
    split = predictions.split
    unreadable = read_unreadable(predictions)
    scores = score_split(
        snapshot.path, read_predictions(predictions), split=split, protocol=eval_config.protocol, unreadable=unreadable
    )
    left_out = scores.tables["unreadable"]
    out_dir = Path(out_dir)
    metrics_table = pl.DataFrame({"metric": list(scores.metrics), "value": list(scores.metrics.values())})
    write_table(metrics_table, out_dir / "metrics.parquet")
    for name, table in scores.tables.items():
        write_table(table, out_dir / f"{name}.parquet")
    headline = HEADLINE[scores.protocol]
    summary = EvalSummary(
        split=split, task=snapshot.task, protocol=scores.protocol, headline=headline, metrics=scores.metrics, tables_dir=out_dir,
        unreadable=left_out.height,
    )  # fmt: skip
    url = None
    if run_id is not None:
        client = mlflow_client()
        log_metrics(
            client,
            run_id,
            {f"final/{split}/{k}": v for k, v in scores.metrics.items()}
            | {f"final/{split}/unreadable_images": float(left_out.height)},
        )
        log_tags(
            client,
            run_id,
            {TAG_HEADLINE: headline}
            | ({f"{TAG_UNREADABLE}.{split}": unreadable_note(left_out)} if left_out.height else {}),
        )
        client.log_artifacts(run_id, str(out_dir), f"eval/{split}")
        client.log_table(
            run_id, data=scores.tables["per_class"].to_pandas(), artifact_file=f"eval/{split}/per_class.json"
        )
        if left_out.height:
            client.log_table(run_id, data=left_out.to_pandas(), artifact_file=f"eval/{split}/unreadable.json")
        url = run_url(client, run_id)
    _prefect_artifacts(summary, snapshot=snapshot, per_class=scores.tables["per_class"], url=url, unreadable=left_out)
    logger = get_run_logger()
    if left_out.height:
        logger.warning("%s %s: %s", snapshot.name, split, unreadable_note(left_out))
    logger.info("%s %s: %s = %s", snapshot.name, split, headline, fmt(scores.metrics.get(headline, math.nan)))
    return summary


# The numbers a run's description shows per split, in this order (those the split has).
DESCRIBED = {
    "coco": ("map", "map_50", "map_75"),
    "voc07": ("map_50",),
    "voc12": ("map_50",),
    "classification": ("accuracy", "macro_f1"),
}


def describe_run(title: str, summaries: Mapping[str, EvalSummary], *, lines: Sequence[str] = ()) -> str:
    """A run's description (markdown, for MLflow's ``mlflow.note.content``): ``title``, then one
    line of headline metrics per evaluated split, then ``lines``.

    Per split: the protocol's headline numbers (COCO map, map_50, map_75; VOC map_50;
    classification accuracy, macro_f1), the ranking one in bold, and how many unreadable images
    were left out when there were any.
    """
    out = [f"**{title}**", ""]
    for split, s in summaries.items():
        shown = [k for k in DESCRIBED.get(s.protocol, (s.headline,)) if k in s.metrics]
        parts = [f"**{k} {fmt(s.metrics[k])}**" if k == s.headline else f"{k} {fmt(s.metrics[k])}" for k in shown]
        left_out = f"; {s.unreadable} unreadable image(s) left out" if s.unreadable else ""
        out.append(f"- {split} ({s.protocol}): {', '.join(parts)}{left_out}")
    if lines:
        out += ["", *lines]
    return "\n".join(out)


def unreadable_note(unreadable: pl.DataFrame) -> str:
    """One line: how many images were left out as unreadable, and the first few files with their reasons."""
    shown = "; ".join(
        f"{r['file_name']} ({r['reason']})" for r in unreadable.head(UNREADABLE_SHOWN).iter_rows(named=True)
    )
    more = f"; and {unreadable.height - UNREADABLE_SHOWN} more" if unreadable.height > UNREADABLE_SHOWN else ""
    return f"{unreadable.height} image(s) could not be read and were left out of the evaluation: {shown}{more}"


def _prefect_artifacts(
    summary: EvalSummary, *, snapshot: SnapshotRef, per_class: pl.DataFrame, url: str | None, unreadable: pl.DataFrame
) -> None:
    headline = {k: v for k, v in summary.metrics.items() if "/" not in k}
    link = f"MLflow run: [{url}]({url})\n\n" if url else ""
    left_out = f"**{unreadable_note(unreadable)}**\n\n" if unreadable.height else ""
    create_markdown_artifact(
        f"# {snapshot.name} / {summary.split} ({summary.protocol})\n\n{link}{left_out}"
        f"**{summary.headline}: {fmt(summary.metrics.get(summary.headline, math.nan))}**\n\n{markdown_table(headline)}\n",
        key=artifact_key("eval", f"{snapshot.name}-{summary.split}"),
        description=f"{summary.headline} on {snapshot.name}/{summary.split}",
    )
    rows = [
        {k: (fmt(v) if isinstance(v, float) else v) for k, v in row.items()} for row in per_class.iter_rows(named=True)
    ]
    create_table_artifact(
        rows, key=artifact_key("per-class", f"{snapshot.name}-{summary.split}"), description="per-class metrics"
    )


@task(
    name="report", cache_policy=NO_CACHE, task_run_name="report-{predictions.split}", retries=1, retry_delay_seconds=2
)
def report_split(
    snapshot: SnapshotRef, predictions: PredictionsRef, summary: EvalSummary, *, run_id: str | None, n_samples: int = 8
) -> list[Path]:
    """Draw the split's plots (cvcore.plots) from its Parquet tables; log them as ``plots/<split>/``.

    Detection: PR curves, F1 vs threshold, AP by object size, error breakdown, sample
    predictions with ground truth. Classification: confusion matrix and sample predictions.
    Returns the PNG paths (under ``<tables_dir>/plots``).
    """
    from cvcore import plots
    from cvcore.data.snapshot import read_snapshot

    tables = Path(summary.tables_dir)
    read = lambda name: pl.read_parquet(tables / f"{name}.parquet")  # noqa: E731
    snap = read_snapshot(snapshot.path)
    unreadable = tables / "unreadable.parquet"
    left_out = (
        pl.read_parquet(unreadable).select("image_id")
        if unreadable.is_file()
        else pl.DataFrame(schema={"image_id": pl.Int64})
    )
    readable = snap.split_images(predictions.split).join(
        left_out, on="image_id", how="anti"
    )  # an unreadable image cannot be drawn
    sample_ids = readable["image_id"].head(n_samples).to_list()
    preds = read_predictions(predictions).filter(pl.col("image_id").is_in(sample_ids)).collect()
    images = _load_images(snap, sample_ids)
    names = snap.class_names
    if snap.task == "detection":
        per_class = read("per_class")
        figures = {
            "pr_curves": plots.pr_curves(read("pr_curve"), per_class=per_class),
            "f1_curves": plots.f1_curves(read("f1_curve")),
            "error_breakdown": plots.error_breakdown(read("errors")),
            "samples": plots.detection_samples(
                images,
                preds,
                ground_truth=snap.annotations.filter(pl.col("image_id").is_in(sample_ids)),
                class_names=names,
            ),
        }
        if summary.protocol == "coco":  # size ranges are COCO's
            figures["ap_by_size"] = plots.size_ap_bars(summary.metrics, per_class=per_class)
    else:
        labels = dict(snap.labels.filter(pl.col("image_id").is_in(sample_ids)).iter_rows())
        figures = {
            "confusion_matrix": plots.confusion_matrix(read("confusion"), class_names=names),
            "samples": plots.classification_samples(images, preds, labels=labels, class_names=names),
        }
    out = tables / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        paths.append(path)
    if run_id is not None:
        mlflow_client().log_artifacts(run_id, str(out), f"plots/{predictions.split}")
    get_run_logger().info("%d plots for %s: %s", len(paths), predictions.split, out)
    return paths


def _load_images(snap, image_ids: list[int]) -> dict[int, object]:
    from cvcore.data.torch_dataset import load_image

    files = dict(snap.images.filter(pl.col("image_id").is_in(image_ids)).select("image_id", "file_name").iter_rows())
    return {i: load_image(snap.image_path(files[i])) for i in image_ids}


@task(name="model-settings", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def model_eval_config(checkpoint: Path, *, protocol: str | None = None) -> EvalConfig:
    """The eval settings a model was trained with (its checkpoint's config), ``protocol`` overriding."""
    from cvcore.engine.checkpoint import load_checkpoint
    from cvcore.engine.infer import checkpoint_eval_config

    config = checkpoint_eval_config(load_checkpoint(checkpoint)["meta"])
    return config if protocol is None else config.model_copy(update={"protocol": protocol})


@task(name="compare-models", cache_policy=NO_CACHE, task_run_name="compare-{candidate.split}")
def compare_models(
    snapshot: SnapshotRef,
    baseline: PredictionsRef,
    candidate: PredictionsRef,
    *,
    protocol: str,
    n_boot: int,
    confidence: float,
    seed: int = 0,
) -> ComparisonRef:
    """Paired bootstrap of candidate - baseline on the same images (cvcore.metrics.bootstrap).

    Detection compares mAP (COCO ``map``, VOC ``map_50``), classification macro-F1. Images that
    either model's predictions record as unreadable are left out for both.
    """
    from cvcore.data.snapshot import read_snapshot
    from cvcore.metrics.bootstrap import compare_classifications, compare_detections

    if baseline.split != candidate.split:
        raise ValueError(f"compare on one split: baseline is {baseline.split!r}, candidate {candidate.split!r}")
    snap = read_snapshot(snapshot.path)
    # both models on the same images: those either could not read are left out, as in evaluate_split
    unreadable = pl.concat([read_unreadable(baseline), read_unreadable(candidate)])
    images = snap.split_images(candidate.split).join(unreadable.select("image_id"), on="image_id", how="anti")
    if snap.task == "detection":
        cmp = compare_detections(
            snap.annotations, read_predictions(baseline), read_predictions(candidate), images=images, protocol=protocol,
            n_boot=n_boot, confidence=confidence, seed=seed, categories=snap.categories["category_id"].to_list(),
        )  # fmt: skip
    else:
        truth = snap.labels.join(images.select("image_id"), on="image_id", how="semi").sort("image_id")
        preds = [_aligned_labels(truth, read_predictions(r).collect(), r) for r in (baseline, candidate)]
        cmp = compare_classifications(
            truth["category_id"],
            preds[0],
            preds[1],
            num_classes=snap.num_classes,
            n_boot=n_boot,
            confidence=confidence,
            seed=seed,
        )
    ref = ComparisonRef(
        metric=cmp.metric, split=candidate.split, baseline=cmp.baseline, candidate=cmp.candidate, difference=cmp.difference,
        low=cmp.low, high=cmp.high, p_improvement=cmp.p_improvement, confidence=cmp.confidence, n_boot=cmp.n_boot,
        candidate_is_better=bool(cmp.candidate_is_better),
    )  # fmt: skip
    get_run_logger().info(
        "%s: candidate - baseline = %+.4f, %.0f%% interval [%+.4f, %+.4f]",
        ref.metric,
        ref.difference,
        100 * confidence,
        ref.low,
        ref.high,
    )
    return ref


def _aligned_labels(truth: pl.DataFrame, predictions: pl.DataFrame, ref: PredictionsRef) -> pl.Series:
    """Predicted labels in the order of ``truth`` (one prediction per image is required)."""
    joined = truth.join(predictions.select("image_id", pl.col("category_id").alias("pred")), on="image_id", how="left")
    if joined["pred"].null_count():
        raise ValueError(f"predictions in {ref.dir} miss {joined['pred'].null_count()} image(s) of split {ref.split!r}")
    return joined["pred"]
