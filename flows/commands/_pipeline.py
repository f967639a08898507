"""Helpers of the pipeline commands (demo, train, evaluate, promote, runs, ui).

Flows started from the command line run on Prefect's temporary local server unless
PREFECT_API_URL names a server (Prefect's own default). Two of that server's defaults are wrong
for a first run on a small offline machine, so they change here unless the user set them: its
telemetry (an error line per run without network) and its 20 s start-up timeout (a loaded
2-core laptop can need longer).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, TypeVar

import typer

from flows.commands._common import err_console

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def prefect_settings() -> Iterator[None]:
    """Run flows inside this: offline-friendly settings for Prefect's temporary server."""
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates = {}
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 180
    with temporary_settings(updates=updates):
        yield


def tracking_errors(fn: F) -> F:
    """An unreachable MLflow tracking server is a one-line error with exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tasks.tracking import TrackingUnavailable

        try:
            return fn(*args, **kwargs)
        except TrackingUnavailable as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            err_console.print("Check MLFLOW_TRACKING_URI, or unset it to use the embedded store under CVFLOW_HOME.", highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def check_model_name(name: str) -> None:
    """Fail fast (before any server starts) on an unknown model: ValueError listing the known ones."""
    from cvcore.models import model_spec

    model_spec(name)


def ui_commands(*, host: str = "127.0.0.1", mlflow_port: int = 5000, prefect_port: int = 4200) -> dict[str, list[str]]:
    """The commands that open the MLflow UI on this cvflow home's store and the Prefect dashboard."""
    from tasks.tracking import cvflow_home, tracking_uri

    home = cvflow_home()
    commands = {"prefect": ["prefect", "server", "start", "--host", host, "--port", str(prefect_port)]}
    store = tracking_uri(home)
    if not store.startswith(("http://", "https://")):  # a store, not a server: open a UI on it (embedded or MLFLOW_TRACKING_URI)
        commands["mlflow"] = ["mlflow", "ui", "--backend-store-uri", store, "--host", host, "--port", str(mlflow_port)]
    return commands
