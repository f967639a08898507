"""`cvflow runs`: recent pipeline runs from MLflow, with their headline metrics, as a table."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console
from flows.commands._pipeline import tracking_errors


@cli_errors
@tracking_errors
def runs(
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: every experiment).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs, newest first.")] = 20,
) -> None:
    """List recent runs: model, dataset, status, headline metric per split, registered version."""
    from tasks.tracking import mlflow_client, tracking_uri

    client = mlflow_client()
    if experiment is None:
        experiments = client.search_experiments()
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise ValueError(f"no MLflow experiment {experiment!r} in {tracking_uri()}; experiments: {known}")
        experiments = [found]
    names = {e.experiment_id: e.name for e in experiments}
    found_runs = (
        client.search_runs(list(names), order_by=["attributes.start_time DESC"], max_results=limit) if names else []
    )
    if not found_runs:
        console.print(f"no runs yet in {tracking_uri()}; try `cvflow demo`", highlight=False)
        return
    console.print(runs_table(found_runs, names))


def runs_table(found_runs, experiment_names: dict[str, str]) -> Table:
    """One row per MLflow run (newest first); the run column holds name, experiment and start."""
    table = Table(title="cvflow runs", title_justify="left", show_lines=False)
    table.add_column("run", overflow="fold", ratio=3)
    table.add_column("status")
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    table.add_column("registered", overflow="fold", ratio=2)
    for run in found_runs:
        tags, metrics = run.data.tags, run.data.metrics
        headline = tags.get("cvflow.headline", "")
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        status = {"FINISHED": "[green]finished[/]", "FAILED": "[red]failed[/]", "RUNNING": "[yellow]running[/]"}.get(
            run.info.status, run.info.status.lower()
        )
        version = tags.get("cvflow.model_version")
        experiment = experiment_names.get(run.info.experiment_id, run.info.experiment_id)
        table.add_row(
            f"[bold]{run.info.run_name or run.info.run_id[:8]}[/]\n{experiment} · {started}",
            status,
            headline,
            _metric(metrics, f"final/val/{headline}"),
            _metric(metrics, f"final/test/{headline}"),
            f"{tags.get('cvflow.registered_model')} v{version}" if version else "",
        )
    return table


def _metric(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.4f}" if key in metrics else ""
