"""Serve cvflow's flows from this process: the nightly retraining schedule plus on-demand runs.

    python deploy/serve.py --data /data/shapes --model yolov1 --cron "0 2 * * *"

No work pool or worker needed: this process polls the Prefect server (PREFECT_API_URL, or
``prefect server start`` on this machine) and runs scheduled and dashboard-triggered runs itself.
For several machines use deploy/prefect.yaml with workers instead. Stop with Ctrl-C.
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
from flows.params import DataSource, NightlyParams, TrainPipelineParams  # noqa: E402
from flows.train import train_pipeline  # noqa: E402


def deployments(*, data: Path, fmt: str, model: str, registered_model: str | None, cron: str, timezone: str, epochs: int | None):
    """The three deployments served: nightly (scheduled), train and evaluate (on demand)."""
    from prefect.schedules import Cron

    from cvcore.config import RunConfig

    config = {"model": {"name": model}} | ({"train": {"epochs": epochs}} if epochs else {})
    train = TrainPipelineParams(data=DataSource(path=data, format=fmt), config=RunConfig.model_validate(config), registered_model=registered_model)
    nightly = NightlyParams(train=train)
    return [
        nightly_retrain.to_deployment(
            name="nightly",
            schedules=[Cron(cron, timezone=timezone)],
            concurrency_limit=1,  # never two nightlies at once (they would race for @champion)
            parameters={"params": nightly.model_dump(mode="json")},
            tags=["cvflow", "nightly"],
            description="Retrain nightly; promote the challenger only when it beats the champion with confidence.",
        ),
        train_pipeline.to_deployment(name="train", parameters={"params": train.model_dump(mode="json")}, tags=["cvflow"]),
        evaluate_pipeline.to_deployment(
            name="evaluate",
            parameters={"params": {"model": f"models:/{registered_model or 'MODEL'}@champion", "data": {"path": str(data), "format": fmt}}},
            tags=["cvflow"],
        ),
    ]


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
    registered_model: Annotated[str | None, typer.Option(help="MLflow registered model (default: <dataset>-<model>).")] = None,
    cron: Annotated[str, typer.Option(help="When the nightly run starts (cron, in --timezone).")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of --cron.")] = "UTC",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the model's).")] = None,
) -> None:
    """Serve the nightly, train, evaluate and compare deployments until interrupted."""
    from prefect import serve

    serve(*deployments(data=data, fmt=fmt, model=model, registered_model=registered_model, cron=cron, timezone=timezone, epochs=epochs), compare_deployment(data=data.resolve(), fmt=fmt))


if __name__ == "__main__":
    typer.run(main)
