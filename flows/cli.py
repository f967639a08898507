"""The `cvflow` command line. Each sub-command lives in its own module under flows/commands/."""

from __future__ import annotations

import typer

# Plain imports, not lazy loading: the command modules import their heavy libraries (torch,
# prefect, mlflow) inside the command functions, so importing all of them up front costs what the
# former importlib loop did. `cvflow --help` on the 2-core dev machine, beside a CPU benchmark
# (9 interleaved runs each, median wall / CPU): importlib loop 0.54 s / 0.52 s, plain imports
# 0.55 s / 0.53 s. A lazy CLI could at best reach typer + flows.commands._common alone, 0.22 s /
# 0.21 s, for a second copy of every command's help text; 0.2 s of that gap is polars, imported at
# the top of flows/commands/augment.py, which a function-level import there would recover.
from flows.commands import augment, compare, demo, evaluate, ingest, predict, promote, runs, train, ui, version

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


# One line per command, in the order `cvflow --help` lists them.
app.command("version")(version.version)
app.command("ingest")(ingest.ingest)
app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("augment")(augment.augment)
app.command("promote")(promote.promote)
app.command("runs")(runs.runs)
app.command("ui")(ui.ui)
app.command("demo")(demo.demo)
app.command("evaluate")(evaluate.evaluate)
app.command("compare")(compare.compare)


if __name__ == "__main__":
    app()
