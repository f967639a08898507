"""`cvflow demo`: the main job on built-in synthetic data, ending with where everything is."""

from __future__ import annotations

import math
import shlex
import time
from typing import Annotated

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, setup_logging
from flows.commands._pipeline import prefect_settings, tracking_errors, ui_commands

# Shown per model in the summary (all numbers are in MLflow).
_SHOWN = {
    "detection": ("map", "map_50", "mar_100", "macro_f1"),
    "classification": ("accuracy", "macro_f1", "macro_precision", "macro_recall"),
}

@cli_errors
@tracking_errors
def demo(
    detector: Annotated[str, typer.Option(help="Detection model (registered name).")] = "yolov1",
    classifier: Annotated[str, typer.Option(help="Classification model (registered name).")] = "resnet18",
    detector_epochs: Annotated[int, typer.Option(min=1, help="Detector epochs (4 fit the 5-minute budget; yolov1's own default is 40).")] = 4,
    classifier_epochs: Annotated[int, typer.Option(min=1, help="Classifier epochs.")] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Train, evaluate and register a detector and a classifier on built-in synthetic shapes.

    Results go to CVFLOW_HOME (default ./.cvflow): the MLflow store, predictions Parquet,
    checkpoints. The summary at the end says where, and how to open the MLflow UI and the
    Prefect dashboard on them.
    """
    from flows.demo import demo as demo_flow
    from flows.params import DemoParams

    setup_logging(verbose)
    _check_task(detector, "detection")
    _check_task(classifier, "classification")
    params = DemoParams(
        detector=detector, classifier=classifier, detector_epochs=detector_epochs, classifier_epochs=classifier_epochs, progress=not quiet
    )
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
    results = (result.detector, result.classifier)
    for r in results:
        shown = _SHOWN[r.snapshot.task]
        table = Table(title=f"{r.model.name} v{r.model.version}  (@{', @'.join(r.model.aliases)})", title_justify="left")
        table.add_column("split")
        for key in shown:
            table.add_column(key, justify="right")
        for split, metrics in r.metrics.items():
            table.add_row(split, *(_num(metrics.get(key)) for key in shown))
        console.print(table)
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
