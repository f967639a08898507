"""`cvflow ui`: the MLflow UI and the Prefect dashboard on this machine's results (127.0.0.1 only)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.commands._common import cli_errors, console, err_console

# What answers 200 once each server is up.
HEALTH = {"mlflow": "/health", "prefect": "/api/health"}
TITLES = {"mlflow": "MLflow UI", "prefect": "Prefect dashboard"}
STARTUP_TIMEOUT_S = 180  # both start in seconds; a loaded 2-core machine can need a minute or more


@cli_errors
def ui(
    start: Annotated[
        bool,
        typer.Option(
            "--start",
            help="Start the servers that are not answering yet here (Ctrl-C stops them) instead of printing the commands.",
        ),
    ] = False,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect dashboard.")] = 4200,
) -> None:
    """Print (or --start) the MLflow UI and Prefect server commands, bound to 127.0.0.1.

    A server that already answers on its port is reported as running and not started again.
    """
    import os

    from flows.commands._pipeline import ui_commands

    commands = ui_commands(mlflow_port=mlflow_port, prefect_port=prefect_port)
    mlflow_url = (
        f"http://127.0.0.1:{mlflow_port}" if "mlflow" in commands else os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    )
    urls = {"mlflow": mlflow_url, "prefect": f"http://127.0.0.1:{prefect_port}"}
    running = {name for name, url in urls.items() if _answers(url + HEALTH[name])}
    for name in ("mlflow", "prefect"):
        state = "running" if name in running else "not answering"
        if name not in commands:
            console.print(
                f"[bold]{TITLES[name]}[/]: {urls[name]} (tracking server from MLFLOW_TRACKING_URI, {state})",
                highlight=False,
            )
        elif start and name in running:
            console.print(f"[bold]{TITLES[name]}[/]: {urls[name]} (already running)", highlight=False)
        elif not start:
            note = " (already running)" if name in running else ""
            console.print(
                f"[bold]{TITLES[name]}[/] ({urls[name]}){note}:\n  {shlex.join(commands[name])}",
                highlight=False,
                soft_wrap=True,
            )
    if not start:
        console.print("or run them here: [bold]cvflow ui --start[/] (starts those not running yet)", highlight=False)
        return
    _serve({name: cmd for name, cmd in commands.items() if name not in running}, urls)


def _serve(commands: dict[str, list[str]], urls: dict[str, str]) -> None:
    """Start ``commands``, report each URL once it answers, and keep them up until Ctrl-C or one exits."""
    if not commands:
        return
    resolved = {
        name: _resolve(cmd) for name, cmd in commands.items()
    }  # a missing executable fails before anything starts
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, cmd in resolved.items():
            procs[name] = subprocess.Popen(cmd)
        for name, proc in procs.items():
            _wait_ready(name, proc, urls[name])
            console.print(f"[bold]{TITLES[name]}[/]: {urls[name]}", highlight=False)
        console.print("Ctrl-C stops them.", highlight=False)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # did not stop when asked: never leave a server behind
                p.kill()
                p.wait()
    failed = {n: p.returncode for n, p in procs.items() if p.returncode not in (0, -15, None)}
    if failed:
        err_console.print(
            f"[bold red]error:[/] stopped: {', '.join(f'{n} exited with code {c}' for n, c in failed.items())}",
            highlight=False,
        )
        raise typer.Exit(code=1)


def _wait_ready(name: str, proc: subprocess.Popen, url: str) -> None:
    """Return once ``url`` answers; exit 1 with the reason when the server dies or stays silent."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _answers(url + HEALTH[name]):
        if proc.poll() is not None:
            reason = f"`{shlex.join(proc.args)}` exited with code {proc.returncode} (its message is above)"
        elif time.monotonic() > deadline:
            reason = f"nothing answered at {url} within {STARTUP_TIMEOUT_S} s"
        else:
            time.sleep(0.5)
            continue
        err_console.print(
            f"[bold red]error:[/] {TITLES[name]} did not start: {reason}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=1)


def _answers(url: str) -> bool:
    """True when a GET of ``url`` answers 200 within 2 s (a server is up there)."""
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _resolve(cmd: list[str]) -> list[str]:
    """Use the executables of this environment (mlflow, prefect live next to this Python)."""
    local = Path(sys.executable).with_name(cmd[0])
    exe = str(local) if local.exists() else shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(f"{cmd[0]} is not installed in this environment")
    return [exe, *cmd[1:]]
