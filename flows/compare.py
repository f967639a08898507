"""``compare_pipeline``: the detector bake-off — train (or load) each model, score all alike.

ingest/open the dataset → for each contender: train (or load) → log its run → predict and score
the split → the table (Parquet + Markdown) and figure. One MLflow run for the bake-off holds
the settings, the dataset, the table and the figure; each contender has a nested child run with
its config, per-epoch metrics, training curves and its row of the table (tasks.bakeoff's
columns: mAP@0.5, mAP, AP by size, crowded-cell recall, candidates per image, proposal recall of
the two-stage models, training and inference time). Like train_pipeline, the flow opens every
run, hands ``run_id`` to the tasks and closes each run FINISHED, or FAILED with the cause.

The flow's inputs are checked here (:func:`parse_contenders`, :func:`check_contenders`,
:func:`scored_split`), by the flow and, before any server starts, by ``cvflow compare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.params import ComparePipelineParams, CompareResult
from flows.train import load_data
from tasks.artifacts import artifact_key
from tasks.bakeoff import (
    TAG_LOADED,
    BakeoffFiles,
    ContenderRun,
    ContenderScore,
    log_contender,
    score_contender,
    train_contender,
    write_table,
)
from tasks.refs import SnapshotRef
from tasks.registry import is_model_uri, resolve_checkpoint
from tasks.tracking import (
    cvflow_home,
    ensure_experiment,
    log_dataset,
    mlflow_client,
    open_run,
    run_closed_after,
    run_tags,
    run_url,
)

FLOW_NAME = "compare_pipeline"


@dataclass(frozen=True)
class Contender:
    """One model of the bake-off: a registered detector ``name``, trained afresh into
    ``<out>/runs/<name>`` unless ``run_dir`` names an existing run (or checkpoint) to load."""

    name: str
    run_dir: Path | None = None


def parse_contenders(spec: str | Sequence[str]) -> list[Contender]:
    """``"rcnn,fast_rcnn=runs/frcnn"`` (or its items) → contenders; ``name=PATH`` loads an existing run.

    Raises ValueError for an empty list or a name given twice.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no models to compare: give a comma-separated list, e.g. rcnn,fast_rcnn,faster_rcnn,yolov1")
    out = []
    for item in items:
        name, _, path = item.partition("=")
        out.append(Contender(name.strip(), Path(path.strip()) if path.strip() else None))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is listed twice in {names}")
    return out


def check_contenders(task: str, names: Sequence[str], *, epochs: dict[str, int], overrides: dict[str, dict]) -> None:
    """Fail before any training: a classification dataset, a model that is not a registered
    detector, or epochs/overrides for a model not being compared (ValueError naming it)."""
    from cvcore.models import model_spec

    if task != "detection":
        raise ValueError(f"the bake-off compares detectors; this is a {task} dataset")
    for name in names:
        if model_spec(name).task != "detection":  # model_spec: ValueError listing the models for an unknown name
            raise ValueError(f"model {name!r} is not a detector; the bake-off compares detectors")
    for option, given in (("epochs", epochs), ("overrides", overrides)):
        stray = sorted(set(given) - set(names))
        if stray:
            raise ValueError(f"{option} given for {stray}, which are not among the compared models {list(names)}")


def scored_split(path: str | Path, splits: Sequence[str], split: str | None) -> str:
    """The split a bake-off scores: ``split``, else ``test`` when there is one, else ``val``
    (ValueError naming the snapshot ``path`` and its splits when it has no such split)."""
    chosen = split or ("test" if "test" in splits else "val")
    if chosen not in splits:
        raise ValueError(f"snapshot {path} has no split {chosen!r}; splits: {list(splits)}")
    return chosen


@flow(name="compare-pipeline", flow_run_name="compare-{params.data.path.name}")
def compare_pipeline(params: ComparePipelineParams) -> CompareResult:
    """Train or load every model of ``params.models`` on ``params.data`` and score them with one protocol."""
    logger = get_run_logger()
    home = cvflow_home()
    client = mlflow_client(home)
    experiment_id = ensure_experiment(client, params.experiment)
    contenders = parse_contenders(list(params.models))
    names = [c.name for c in contenders]
    snapshot = load_data(params.data, home=home)
    check_contenders(snapshot.task, names, epochs=params.epochs, overrides=params.overrides)
    split = scored_split(snapshot.path, snapshot.splits, params.split)
    tags = run_tags(snapshot, model_name=",".join(names), flow_name=FLOW_NAME, flow_run_id=flow_run.get_id())
    run_id = open_run(client, experiment_id, run_name=f"bakeoff-{snapshot.name}", tags=tags)
    with run_closed_after(client, run_id):  # from here on, any failure marks the run FAILED
        logger.info("MLflow run %s: %s", run_id, run_url(client, run_id))
        return _run(params, snapshot, contenders, split=split, run_id=run_id, experiment_id=experiment_id, home=home)


def _run(
    params: ComparePipelineParams,
    snapshot: SnapshotRef,
    contenders: Sequence[Contender],
    *,
    split: str,
    run_id: str,
    experiment_id: str,
    home: Path,
) -> CompareResult:
    client = mlflow_client(home)
    out = (params.out or home / "bakeoffs" / run_id).resolve()
    settings = {
        "contenders": ",".join(params.models), "epochs": _epochs_param(params.epochs, [c.name for c in contenders]), "protocol": params.protocol, "split": split,
        "pretrained": params.pretrained or "", "device": params.device, "batch_size": params.batch_size, "grid": params.grid,
        "overrides": repr({name: given.settings() for name, given in params.overrides.items()}) if params.overrides else "", "out": str(out),
    }  # fmt: skip
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in settings.items()])
    log_dataset(client, run_id, snapshot.path, splits=sorted({"train", split} & set(snapshot.splits)))
    pretrained = params.pretrained
    if pretrained and is_model_uri(pretrained):
        pretrained = str(resolve_checkpoint(pretrained))  # cvcore never talks to MLflow

    scores: list[ContenderScore] = []
    child_runs: dict[str, str] = {}
    # One contender after another: their training and inference times are columns of the table,
    # and models running side by side would slow each other down.
    for contender in contenders:
        tags = run_tags(snapshot, model_name=contender.name, flow_name=FLOW_NAME, flow_run_id=flow_run.get_id())
        child = open_run(
            client,
            experiment_id,
            run_name=f"{contender.name}-{snapshot.name}",
            tags=tags | {MLFLOW_PARENT_RUN_ID: run_id},
        )
        child_runs[contender.name] = child
        with run_closed_after(client, child):
            log_dataset(client, child, snapshot.path, splits=sorted({"train", split} & set(snapshot.splits)))
            if contender.run_dir is None:
                trained = train_contender(
                    snapshot, contender.name, out=out, epochs=params.epochs.get(contender.name), pretrained=pretrained,
                    device=params.device, overrides=params.overrides.get(contender.name), run_id=child, progress=params.progress,
                )  # fmt: skip
            else:
                client.set_tag(child, TAG_LOADED, str(contender.run_dir))
                trained = ContenderRun(name=contender.name, run=contender.run_dir.expanduser().resolve())
            log_contender(trained, run_id=child)
            scores.append(
                score_contender(
                    snapshot,
                    trained,
                    out=out,
                    split=split,
                    protocol=params.protocol,
                    device=params.device,
                    batch_size=params.batch_size,
                    grid=params.grid,
                    run_id=child,
                )  # fmt: skip
            )

    files = write_table(scores, snapshot=snapshot, split=split, protocol=params.protocol, out=out, run_id=run_id)
    url = run_url(client, run_id)
    _summary_artifact(
        snapshot,
        files,
        split=split,
        protocol=params.protocol,
        url=url,
        child_urls={n: run_url(client, r) for n, r in child_runs.items()},
    )
    return CompareResult(
        run_id=run_id,
        run_url=url,
        snapshot=snapshot,
        split=split,
        protocol=params.protocol,
        out=out,
        table=files.table,
        markdown=files.markdown,
        figure=files.figure,
        child_runs=child_runs,
        run_dirs={s.name: s.run for s in scores},
        predictions={s.name: s.predictions for s in scores},
        metrics={s.name: {k: float(v) for k, v in s.row.items() if k != "model"} for s in scores},
    )


def _epochs_param(epochs: dict[str, int], names: Sequence[str]) -> str:
    """``rcnn=4,yolov1=default``: ``default`` for a model left to its own number of epochs."""
    return ",".join(f"{name}={epochs.get(name, 'default')}" for name in names)


def _summary_artifact(
    snapshot: SnapshotRef, files: BakeoffFiles, *, split: str, protocol: str, url: str, child_urls: dict[str, str]
) -> None:
    """The table (bakeoff.md, as written) and the MLflow links as a Prefect markdown artifact."""
    runs = "\n".join(f"- {name}: [{child}]({child})" for name, child in child_urls.items())
    text = "\n".join(
        [
            f"# Bake-off on {snapshot.name}",
            "",
            f"MLflow run: [{url}]({url})",
            "",
            Path(files.markdown).read_text(),
            "",
            "Runs of the models:",
            "",
            runs,
            "",
            f"Files: `{files.table}`, `{files.figure}`",
        ]
    )
    create_markdown_artifact(
        text,
        key=artifact_key("bakeoff", snapshot.name),
        description=f"bake-off on {snapshot.name} ({split}, {protocol})",
    )
