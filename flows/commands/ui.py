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

from flows.commands._common import cli_errors, console


@cli_errors
def ui(
    start: Annotated[bool, typer.Option("--start", help="Start both servers here (Ctrl-C stops them) instead of printing the commands.")] = False,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect dashboard.")] = 4200,
) -> None:
    """Print (or --start) the MLflow UI and Prefect server commands, bound to 127.0.0.1."""
    import os

    from flows.commands._pipeline import ui_commands

    commands = ui_commands(mlflow_port=mlflow_port, prefect_port=prefect_port)
    mlflow_url = f"http://127.0.0.1:{mlflow_port}" if "mlflow" in commands else os.environ["MLFLOW_TRACKING_URI"]
    urls = {"mlflow": mlflow_url, "prefect": f"http://127.0.0.1:{prefect_port}"}
    if not start:
        for name, title in (("mlflow", "MLflow UI"), ("prefect", "Prefect dashboard")):
            if name in commands:
                console.print(f"[bold]{title}[/] ({urls[name]}):\n  {shlex.join(commands[name])}", highlight=False, soft_wrap=True)
            else:
                console.print(f"[bold]{title}[/]: {urls[name]} (tracking server from MLFLOW_TRACKING_URI)", highlight=False)
        console.print("or run both here: [bold]cvflow ui --start[/]", highlight=False)
        return
    procs = {name: subprocess.Popen(_resolve(cmd)) for name, cmd in commands.items()}
    for name, url in urls.items():
        console.print(f"{name}: {url}", highlight=False)
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait(timeout=30)
    failed = {n: p.returncode for n, p in procs.items() if p.returncode not in (0, -15, None)}
    if failed:
        raise typer.Exit(code=1)


def _resolve(cmd: list[str]) -> list[str]:
    """Use the executables of this environment (mlflow, prefect live next to this Python)."""
    local = Path(sys.executable).with_name(cmd[0])
    exe = str(local) if local.exists() else shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(f"{cmd[0]} is not installed in this environment")
    return [exe, *cmd[1:]]
