"""`cvflow compare`: the detector bake-off — train or load several models, score them alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.commands._common import cli_errors, console, err_console, setup_logging

DEFAULT_MODELS = "rcnn,fast_rcnn,faster_rcnn,yolov1"


@cli_errors
def compare(
    data: Annotated[Path, typer.Option("--data", help="Detection snapshot folder.")],
    out: Annotated[Path, typer.Option("--out", help="Bake-off folder: runs/, predictions/, cache/, bakeoff.parquet/.md/.png.")],
    models: Annotated[str, typer.Option("--models", help="Comma-separated detectors; NAME=RUN_DIR loads a finished run instead of training.")] = DEFAULT_MODELS,
    epochs: Annotated[str | None, typer.Option(help="Epochs for every model (5), per model (rcnn=4,yolov1=40), or both (5,yolov1=40). Default: each model's own.")] = None,
    split: Annotated[str | None, typer.Option(help="Split to score (default: test if the snapshot has one, else val).")] = None,
    protocol: Annotated[str, typer.Option(help="coco | voc07 | voc12.")] = "coco",
    pretrained: Annotated[str | None, typer.Option(help="Weights every backbone starts from (e.g. a classifier checkpoint).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per inference batch (timing).")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Library logs at INFO.")] = False,
) -> None:
    """Train (or load) each of MODELS on DATA, evaluate all with one protocol, write a table and a plot.

    The table has mAP@0.5, mAP, AP small/medium/large, recall of objects sharing a grid cell,
    candidates per image, training time and inference images/s (see cvcore.bakeoff).
    """
    from cvcore.bakeoff import parse_contenders, run_bakeoff, write_bakeoff
    from cvcore.data.snapshot import read_snapshot
    from cvcore.engine.callbacks import ProgressBar

    setup_logging(verbose)
    snapshot = read_snapshot(data)
    contenders = parse_contenders(models)
    result = run_bakeoff(
        snapshot,
        contenders=contenders,
        out=out,
        split=split,
        protocol=protocol,
        epochs=parse_epochs(epochs, [c.name for c in contenders]),
        pretrained=pretrained,
        device=device,
        batch_size=batch_size,
        callbacks=lambda name: [] if quiet else [ProgressBar(console=err_console)],
    )
    paths = write_bakeoff(result, out, title=f"{snapshot.name}: {result.split} split, {protocol}")
    console.print(_rich_table(result.table, title=f"bake-off on {snapshot.name} ({result.split}, {protocol})"))
    console.print(f"table: {paths['table']}, {paths['markdown']}\nplot: {paths['figure']}", highlight=False)


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
