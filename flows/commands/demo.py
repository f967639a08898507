"""`cvflow demo`: the main job on built-in synthetic data, ending with where everything is."""

from __future__ import annotations

import math
import shlex
import time
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from flows.commands._common import cli_errors, console, setup_logging
from flows.commands._pipeline import prefect_settings, tracking_errors, ui_commands

# Shown per model in the summary, when the run has them.
_SHOWN = {
    "detection": ("map", "map_50", "map_75", "map_small", "map_medium", "mar_100", "macro_f1"),
    "classification": ("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall"),
}


@cli_errors
@tracking_errors
def demo(
    detector: Annotated[str, typer.Option(help="Detection model (registered name).")] = "yolov1",
    classifier: Annotated[str, typer.Option(help="Classification model (registered name).")] = "resnet18",
    detector_epochs: Annotated[int | None, typer.Option(min=1, help="Detector epochs (default: the model's).")] = None,
    classifier_epochs: Annotated[int | None, typer.Option(min=1, help="Classifier epochs (default: the model's).")] = None,
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
    table = Table(title="cvflow demo", title_justify="left", show_lines=True)
    table.add_column("model", style="bold")
    table.add_column("split")
    for name in ("metrics", "predictions (Parquet)"):
        table.add_column(name)
    for r in (result.detector, result.classifier):
        for split, metrics in r.metrics.items():
            shown = "  ".join(f"{k} {_num(metrics.get(k))}" for k in _SHOWN[r.snapshot.task] if k in metrics)
            table.add_row(f"{r.model.name} v{r.model.version}\n@{', @'.join(r.model.aliases)}", split, shown, str(r.predictions[split].dir))
    console.print(table)
    commands = ui_commands()
    lines = [
        f"[bold]MLflow UI[/]  {shlex.join(commands['mlflow'])}" if "mlflow" in commands else "[bold]MLflow UI[/]  (your tracking server)",
        f"           then open {result.detector.run_url}",
        f"[bold]Prefect[/]    {shlex.join(commands['prefect'])}  → http://127.0.0.1:4200",
        "[bold]both[/]       cvflow ui --start        [bold]runs[/]  cvflow runs",
        f"[bold]evaluate[/]   cvflow evaluate --model models:/{result.detector.model.name}@champion --data {result.detector.snapshot.path} --split test",
    ]
    console.print(Panel("\n".join(lines), title=f"done in {elapsed / 60:.1f} min", title_align="left"), soft_wrap=True)


def _num(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"
