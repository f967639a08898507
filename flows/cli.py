"""The `cvflow` command line. Each sub-command lives in its own module under flows/commands/."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="cvflow",
    help="Train and evaluate computer-vision models as a DAG: Prefect flows over cvcore, "
    "predictions as Parquet, results in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)



@app.callback()
def _main() -> None:
    """cvflow: run `cvflow COMMAND --help` for each command's options."""


# (command name, module under flows.commands, function name). Add one line per command.
_COMMANDS: list[tuple[str, str, str]] = [
    ("version", "version", "version"),
    ("ingest", "ingest", "ingest"),
    ("train", "train", "train"),
    ("predict", "predict", "predict"),
    ("augment", "augment", "augment"),
    ("promote", "promote", "promote"),
    ("runs", "runs", "runs"),
    ("ui", "ui", "ui"),
    ("demo", "demo", "demo"),
    ("evaluate", "evaluate", "evaluate"),
    ("compare", "compare", "compare"),
]

for _name, _module, _fn in _COMMANDS:
    app.command(_name)(getattr(importlib.import_module(f"flows.commands.{_module}"), _fn))


if __name__ == "__main__":
    app()
