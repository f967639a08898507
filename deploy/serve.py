"""Serve cvflow's flows from this process: the nightly retraining schedule plus on-demand runs.

    python deploy/serve.py --data /data/shapes --model yolov1 --cron "0 2 * * *" --timezone Europe/Paris

No work pool or worker needed: this process registers the deployments with the Prefect server
(PREFECT_API_URL, or ``prefect server start`` on this machine), then polls it and runs scheduled
and dashboard-triggered runs itself, each in a subprocess. For several machines use
deploy/prefect.yaml with workers instead. Stop with Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flows.compare import compare_pipeline  # noqa: E402
from flows.evaluate import evaluate_pipeline  # noqa: E402
from flows.nightly import nightly_retrain  # noqa: E402
from flows.params import DataSource, EvaluatePipelineParams, NightlyParams, TrainPipelineParams  # noqa: E402
from flows.train import train_pipeline  # noqa: E402


def registered_name(data: Path, *, fmt: str, model: str) -> str:
    """The registry name train_pipeline would choose: ``<dataset name>-<model>``.

    The dataset name is the snapshot's own (its manifest) or, for a source still to be ingested
    or a snapshot that does not exist yet, the file or folder name (what ingest names it).
    """
    from cvcore.data.snapshot import SnapshotError, read_snapshot

    name = data.stem
    if fmt == "snapshot":
        try:
            name = read_snapshot(data).name
        except SnapshotError:
            pass  # the nightly run may be the first to find data there
    return f"{name}-{model}"


def deployments(
    *, data: Path, fmt: str, model: str, registered_model: str | None, cron: str, timezone: str, epochs: int | None
):
    """The three deployments served: nightly (scheduled), train and evaluate (on demand).

    Parameters hold only what was chosen here: the rest of the run config stays unset (None), so
    each run resolves it as the command line does (cvcore.config.resolve: the model's registry
    defaults, then cvflow's), and the dashboard's form shows exactly these values, the other
    fields blank with what they resolve to in their descriptions.
    """
    from prefect.schedules import Cron

    from cvcore.config import PartialRunConfig

    name = registered_model or registered_name(data, fmt=fmt, model=model)
    config = {"model": {"name": model}} | ({"train": {"epochs": epochs}} if epochs else {})
    source = DataSource(path=data, format=fmt)
    train = TrainPipelineParams(data=source, config=PartialRunConfig.model_validate(config), registered_model=name)
    nightly = NightlyParams(train=train)
    evaluate = EvaluatePipelineParams(model=f"models:/{name}@champion", data=source)
    return [
        nightly_retrain.to_deployment(
            name="nightly",
            schedules=[Cron(cron, timezone=timezone)],
            concurrency_limit=1,  # never two nightlies at once (they would race for @champion)
            parameters={"params": _dump(nightly)},
            tags=["cvflow", "nightly"],
            description="Retrain nightly; promote the challenger only when it beats the champion with confidence.",
        ),
        train_pipeline.to_deployment(
            name="train",
            parameters={"params": _dump(train)},
            tags=["cvflow"],
            description="Train, evaluate and register one model (start it from the dashboard's Run button).",
        ),
        evaluate_pipeline.to_deployment(
            name="evaluate",
            parameters={"params": _dump(evaluate)},
            tags=["cvflow"],
            description="Score the champion (or any logged model) on a dataset split, without training.",
        ),
    ]


def _dump(params) -> dict:
    # exclude_unset: only the parameters chosen here, so the form's other fields keep following
    # the code's defaults (the run config's unset fields are None and resolve at run time).
    return params.model_dump(mode="json", exclude_unset=True)


def compare_deployment(*, data: Path, fmt: str):
    """The detector bake-off on demand (no schedule): the four detectors of the notes on ``data``,
    each with its own defaults; the dashboard's form changes models, epochs and the rest."""
    from flows.params import ComparePipelineParams

    params = ComparePipelineParams(data=DataSource(path=data, format=fmt))
    return compare_pipeline.to_deployment(
        name="compare",
        parameters={"params": params.model_dump(mode="json", exclude_unset=True)},
        tags=["cvflow"],
        description="Detector bake-off: train or load several detectors, score them with one protocol, table and plot in MLflow.",
    )


def main(
    data: Annotated[Path, typer.Option(help="Dataset the nightly run retrains on (snapshot folder or source).")],
    model: Annotated[str, typer.Option(help="Registered cvcore model name.")] = "yolov1",
    fmt: Annotated[str, typer.Option("--format", help="snapshot | coco | voc | yolo | imagefolder.")] = "snapshot",
    registered_model: Annotated[
        str | None, typer.Option(help="MLflow registered model (default: <dataset>-<model>).")
    ] = None,
    cron: Annotated[str, typer.Option(help="When the nightly run starts (cron, in --timezone).")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron, e.g. Europe/Paris.")] = "UTC",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the model's).")] = None,
) -> None:
    """Serve the nightly, train and evaluate deployments (and compare, for a detector) until interrupted."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        typer.echo(
            "warning: PREFECT_API_URL is not set, so these deployments live on a temporary Prefect server that the "
            "dashboard and `prefect deployment run` cannot see. For a local dashboard: `prefect server start` and "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`.",
            err=True,
        )
    from cvcore.models import model_spec

    served = deployments(
        data=data.resolve(),
        fmt=fmt,
        model=model,
        registered_model=registered_model,
        cron=cron,
        timezone=timezone,
        epochs=epochs,
    )
    if model_spec(model).task == "detection":  # the bake-off compares detectors: no use on classification data
        served.append(compare_deployment(data=data.resolve(), fmt=fmt))
    serve(*served)


if __name__ == "__main__":
    typer.run(main)
