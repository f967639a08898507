"""`cvflow demo`: the main job on built-in synthetic data, ending with where everything is."""

from __future__ import annotations

import math
import shlex
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, setup_logging
from flows.commands._pipeline import flow_errors, prefect_settings, ui_commands

# Shown per model in the summary (all numbers are in MLflow).
_SHOWN = {
    "detection": ("map", "map_50", "mar_100", "macro_f1"),
    "classification": ("accuracy", "macro_f1", "macro_precision", "macro_recall"),
}


@cli_errors
@flow_errors
def demo(
    detector: Annotated[str, typer.Option(help="Detection model (registered name).")] = "yolov1",
    classifier: Annotated[str, typer.Option(help="Classification model (registered name).")] = "resnet18",
    detector_epochs: Annotated[
        Optional[int],
        typer.Option(min=1, help="Detector epochs (default: the demo's, chosen to fit its time; see DemoParams)."),
    ] = None,
    classifier_epochs: Annotated[
        Optional[int], typer.Option(min=1, help="Classifier epochs (default: the demo's).")
    ] = None,
    transfer: Annotated[
        bool, typer.Option(help="Start the detector's backbone from the classifier trained just before.")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Train, evaluate and register a classifier and a detector on built-in synthetic shapes.

    The classifier trains first and, with --transfer (the default), its registered version starts
    the detector's backbone. About 3-4 minutes on a 2-core CPU with the defaults. Results
    go to CVFLOW_HOME (default ./.cvflow): the MLflow store, predictions Parquet, checkpoints.
    The summary at the end says where, and how to open the MLflow UI and the Prefect dashboard
    on them.
    """
    from flows.demo import check_transfer
    from flows.demo import demo as demo_flow
    from flows.params import DemoParams

    setup_logging(verbose)
    _check_task(detector, "detection")
    _check_task(classifier, "classification")
    chosen = {"detector_epochs": detector_epochs, "classifier_epochs": classifier_epochs}
    params = DemoParams(
        detector=detector,
        classifier=classifier,
        transfer=transfer,
        progress=not quiet,
        **{k: v for k, v in chosen.items() if v is not None},
    )
    if params.transfer:  # before the Prefect server starts; the flow checks again for dashboard runs
        check_transfer(params.detector, params.classifier, classifier_img_size=params.classification_image_size)
    start = time.perf_counter()
    with prefect_settings():
        result = demo_flow(params)
    print_summary(result, elapsed=time.perf_counter() - start)


def _check_task(name: str, task: str) -> None:
    """Fail before any server starts: the model must exist and do ``task``."""
    from cvcore.models import model_spec

    spec = model_spec(name)
    if spec.task != task:
        from cvcore.models import list_models

        raise ValueError(f"{name!r} is a {spec.task} model; choose a {task} model: {', '.join(list_models(task))}")


def print_summary(result, *, elapsed: float) -> None:
    """Metrics, where the predictions are, and the commands that open the results."""
    results = (result.classifier, result.detector)
    for r in results:
        shown = _SHOWN[r.snapshot.task]
        table = Table(
            title=f"{r.model.name} v{r.model.version}  (@{', @'.join(r.model.aliases)})", title_justify="left"
        )
        table.add_column("split")
        for key in shown:
            table.add_column(key, justify="right")
        for split, metrics in r.metrics.items():
            table.add_row(split, *(_num(metrics.get(key)) for key in shown))
        console.print(table)
    if result.detector_backbone:
        console.print(
            f"{result.detector.model.name}'s backbone started from {result.detector_backbone} (transfer learning)",
            highlight=False,
        )
    console.print("\n[bold]Predictions[/] (Parquet, one folder per split):", highlight=False)
    for r in results:
        for split, preds in r.predictions.items():
            console.print(f"  {r.model.name} {split}: {preds.dir}", highlight=False, soft_wrap=True)
    commands = ui_commands()
    mlflow_cmd = shlex.join(commands["mlflow"]) if "mlflow" in commands else "(your MLflow tracking server)"
    lines = [
        "",
        "[bold]Open the results[/]",
        f"  MLflow UI:  {mlflow_cmd}",
        f"              then {result.detector.run_url}",
        f"  Prefect:    {shlex.join(commands['prefect'])}  → http://127.0.0.1:4200",
        "  both at once: cvflow ui --start      recent runs: cvflow runs",
        f"  score the champion again: cvflow evaluate --model models:/{result.detector.model.name}@champion "
        f"--data {result.detector.snapshot.path} --split test",
        "",
        f"[bold green]done in {elapsed / 60:.1f} min[/]",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"
