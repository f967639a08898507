"""`cvflow compare`: the detector bake-off as ``compare_pipeline`` — train or load several models,
score them alike, with the table and plot in --out and every model's run in MLflow.

The flags and the --out folder are those of the bake-off (``runs/``, ``predictions/``,
``cache/``, ``bakeoff.parquet``/``.md``/``.png``; a finished run in ``runs/`` is reused when the
command runs again). Running it as the Prefect flow adds an MLflow run for the bake-off (the
table and plot as artifacts) with a child run per model (config, per-epoch metrics, its row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.commands._common import UserError, cli_errors, console, setup_logging
from flows.commands._pipeline import (
    check_checkpoint,
    check_weights_file,
    check_writable_dir,
    flow_errors,
    prefect_settings,
)

DEFAULT_MODELS = "rcnn,fast_rcnn,faster_rcnn,yolov1,fcos"
PROTOCOLS = ("coco", "voc07", "voc12")


@cli_errors
@flow_errors
def compare(
    data: Annotated[Path, typer.Option("--data", help="Detection snapshot folder.")],
    out: Annotated[
        Path, typer.Option("--out", help="Bake-off folder: runs/, predictions/, cache/, bakeoff.parquet/.md/.png.")
    ],
    models: Annotated[
        str,
        typer.Option(
            "--models", help="Comma-separated detectors; NAME=RUN_DIR loads a finished run instead of training."
        ),
    ] = DEFAULT_MODELS,
    epochs: Annotated[
        str | None,
        typer.Option(
            help="Epochs for every model (5), per model (rcnn=4,yolov1=40), or both (5,yolov1=40). Default: each model's own."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to score (default: test if the snapshot has one, else val).")
    ] = None,
    protocol: Annotated[str, typer.Option(help="coco | voc07 | voc12.")] = "coco",
    pretrained: Annotated[
        str | None,
        typer.Option(help="Weights every backbone starts from (a classifier checkpoint, or models:/NAME@ALIAS)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per inference batch (timing).")] = 8,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the bake-off run.")] = "cvflow",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Train (or load) each of MODELS on DATA, evaluate all with one protocol, write a table and a plot.

    The table has mAP@0.5, mAP, AP small/medium/large, recall of objects sharing a grid cell,
    candidates per image, training time and inference images/s (see tasks.bakeoff). It runs
    as the compare_pipeline flow: the MLflow run of the bake-off is reported at the end.
    """
    import polars as pl

    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.device import resolve_device
    from flows.compare import check_contenders, compare_pipeline, parse_contenders, scored_split
    from flows.params import ComparePipelineParams, DataSource

    setup_logging(verbose)
    # Every input error fails here, in one line, before a Prefect server starts.
    snapshot = read_snapshot(data)
    contenders = parse_contenders(models)
    names = [c.name for c in contenders]
    per_model = parse_epochs(epochs, names) or {}
    check_contenders(snapshot.task, names, epochs=per_model, overrides={})
    for c in contenders:
        if c.run_dir is not None:
            check_checkpoint(c.run_dir, what=f"{c.name}'s run")  # a missing, foreign or crafted run, in one line
    scored_split(snapshot.path, list(snapshot.splits), split)  # ValueError for a split the snapshot lacks
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    resolve_device(device)  # ValueError for a bad name or a GPU this machine lacks
    check_weights_file(pretrained)  # a missing, random or crafted file (weights_only), in one line
    check_writable_dir(out, "--out")
    check_bakeoff_folder(out)
    params = ComparePipelineParams(
        data=DataSource(path=data.resolve()), models=tuple(_spec(c) for c in contenders), epochs=per_model, split=split, protocol=protocol,
        pretrained=pretrained, device=device, batch_size=batch_size, out=out.resolve(), experiment=experiment, progress=not quiet,
    )  # fmt: skip
    with prefect_settings():
        result = compare_pipeline(params)
    table = pl.read_parquet(result.table)
    console.print(_rich_table(table, title=f"bake-off on {snapshot.name} ({result.split}, {protocol})"))
    console.print(f"table: {result.table}, {result.markdown}\nplot: {result.figure}", highlight=False, soft_wrap=True)
    console.print(f"MLflow run: {result.run_url} (one child run per model)", highlight=False, soft_wrap=True)


def check_bakeoff_folder(out: Path) -> None:
    """``--out`` is new, empty, or a bake-off folder (its table, or a run cvflow trained under
    ``runs/``); a folder of other files is refused in one line (UserError), as ``train --out`` is:
    the bake-off would write ``bakeoff.parquet/.md/.png``, ``runs/``, ``predictions/`` and
    ``cache/`` among them (``--out ~`` or the current folder)."""
    from cvcore.engine.run import is_run_folder
    from tasks.bakeoff import TABLE_FILE

    if not out.is_dir() or (out / TABLE_FILE).is_file():
        return
    runs = out / "runs"
    if runs.is_dir() and any(is_run_folder(run) for run in runs.iterdir() if run.is_dir()):
        return
    others = sorted(p.name for p in out.iterdir())
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"--out {out} holds files ({shown}) but is not a bake-off folder (no {TABLE_FILE}, no run under runs/); "
            "choose a new or empty folder"
        )


def _spec(contender) -> str:
    """A contender as the flow's ``models`` entry, a loaded run's path made absolute."""
    return (
        contender.name if contender.run_dir is None else f"{contender.name}={contender.run_dir.expanduser().resolve()}"
    )


def parse_epochs(spec: str | None, names: list[str]) -> dict[str, int] | None:
    """``"5"`` → every model 5; ``"rcnn=4,yolov1=40"`` → those two; ``"5,yolov1=40"`` → both.

    Raises ValueError for a non-integer, a non-positive count or a model not being compared.
    """
    if spec is None or not spec.strip():
        return None
    default: int | None = None
    named: dict[str, int] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, sep, value = (part.strip() for part in item.rpartition("="))
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"--epochs: {item!r} is not N or MODEL=N") from None
        if count < 1:
            raise ValueError(f"--epochs: {item!r} must be at least 1")
        if sep and name not in names:
            raise ValueError(f"--epochs: {name!r} is not among the compared models {names}")
        if sep:
            named[name] = count
        else:
            default = count
    return {**({n: default for n in names} if default is not None else {}), **named}


# The console shows the headline columns under short names (80 columns wide); the files have
# them all, CPU times included.
_SHOWN = {
    "model": "model", "map_50": "mAP50", "map": "mAP", "map_small": "AP_S", "map_medium": "AP_M",
    "recall_crowded": "R crowd", "candidates_per_image": "cand/img", "train_s": "train s", "infer_images_per_s": "img/s",
}  # fmt: skip


def _rich_table(table, *, title: str) -> Table:
    out = Table(title=title)
    for col, header in _SHOWN.items():
        out.add_column(header, justify="left" if col == "model" else "right", no_wrap=True)
    for row in table.select(list(_SHOWN)).iter_rows():
        out.add_row(*[_fmt(v) for v in row])
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)
