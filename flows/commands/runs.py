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
    found_runs = client.search_runs(list(names), order_by=["attributes.start_time DESC"], max_results=limit) if names else []
    if not found_runs:
        console.print(f"no runs yet in {tracking_uri()}; try `cvflow demo`", highlight=False)
        return
    console.print(runs_table(found_runs, names))


def runs_table(found_runs, experiment_names: dict[str, str]) -> Table:
    """One row per MLflow run (newest first)."""
    table = Table(title="cvflow runs", title_justify="left")
    for col, kw in (
        ("started", {}), ("run", {"style": "bold"}), ("experiment", {}), ("model", {}), ("dataset", {}),
        ("status", {}), ("metric", {}), ("val", {"justify": "right"}), ("test", {"justify": "right"}), ("registered", {}),
    ):  # fmt: skip
        table.add_column(col, **kw)
    for run in found_runs:
        tags, metrics = run.data.tags, run.data.metrics
        headline = tags.get("cvflow.headline", "")
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        status = {"FINISHED": "[green]finished[/]", "FAILED": "[red]failed[/]", "RUNNING": "[yellow]running[/]"}.get(
            run.info.status, run.info.status.lower()
        )
        version = tags.get("cvflow.model_version")
        registered = f"{tags.get('cvflow.registered_model')} v{version}" if version else ""
        table.add_row(
            started,
            run.info.run_name or run.info.run_id[:8],
            experiment_names.get(run.info.experiment_id, run.info.experiment_id),
            tags.get("cvflow.model", ""),
            tags.get("cvflow.dataset", ""),
            status,
            headline,
            _metric(metrics, f"final/val/{headline}"),
            _metric(metrics, f"final/test/{headline}"),
            registered,
        )
    return table


def _metric(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.4f}" if key in metrics else ""
