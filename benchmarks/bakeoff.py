"""The detector bake-off on the built-in synthetic data (issue 5): R-CNN, Fast R-CNN, Faster R-CNN, YOLOv1.

    .venv/bin/python benchmarks/bakeoff.py [--workdir DIR] [--models rcnn,fast_rcnn,faster_rcnn,yolov1]
        [--datasets shapes,dense] [--epochs SPEC] [--device auto]

1. Builds two detection snapshots (128 px, 240 train / 60 val / 60 test images):
   ``shapes`` (1-4 objects of 10-56 px: the built-in demo data) and ``dense`` (up to 16 objects
   of 6-24 px: many small objects, some sharing a 7x7 grid cell).
2. Supervised pre-training, as the notes' transfer learning: one ResNet-18 classifier trained by
   the engine on the built-in shapes classification data (64 px), the backbone every detector
   starts from (R-CNN uses it frozen as its feature extractor).
3. The ``compare_pipeline`` flow (what ``cvflow compare`` runs) on each snapshot: each detector
   trained with its own run defaults (``--epochs`` overrides), scored on the test split with the
   COCO protocol, the runs in MLflow under CVFLOW_HOME (Prefect's temporary server).

Prints each table in Markdown (and writes ``bakeoff.md`` / ``.parquet`` / ``.png`` under
``<workdir>/<dataset>``). Everything is reused when the workdir already holds it, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import time
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvcore.config import PartialRunConfig, load_config  # noqa: E402
from cvcore.data.snapshot import read_snapshot  # noqa: E402
from cvcore.data.synthetic import make_shapes_classification, make_shapes_detection  # noqa: E402
from cvcore.engine.callbacks import ProgressBar  # noqa: E402
from cvcore.engine.run import train_run  # noqa: E402
from flows.commands._pipeline import prefect_settings  # noqa: E402
from flows.commands.compare import parse_epochs  # noqa: E402
from flows.compare import compare_pipeline, parse_contenders  # noqa: E402
from flows.params import ComparePipelineParams, DataSource  # noqa: E402
from tasks.bakeoff import run_state, table_markdown  # noqa: E402

DATASETS = {
    "shapes": {},
    "dense": {"max_objects": 16, "min_size": 6, "max_size": 24},
}


def snapshot(workdir: Path, name: str):
    path = workdir / "data" / name
    if (path / "manifest.json").is_file():
        return read_snapshot(path)
    return make_shapes_detection(
        path, n_train=240, n_val=60, n_test=60, image_size=128, seed=0, name=name, **DATASETS[name]
    )


def pretrain_backbone(workdir: Path, device: str) -> tuple[Path, dict]:
    """A ResNet-18 classifier on 64-px shapes (standard stem, like the detectors' trunks)."""
    run = workdir / "backbone"
    state = run_state(run)
    if state == "interrupted":
        train_run(load_config(run / "config.yaml"), run, callbacks=[ProgressBar()], resume=run / "last.pt")
    elif state == "absent":
        cls_path = workdir / "data" / "shapes-cls64"
        data = (
            read_snapshot(cls_path)
            if (cls_path / "manifest.json").is_file()
            else make_shapes_classification(cls_path, n_train=800, n_val=200, image_size=64, seed=0)
        )
        config = PartialRunConfig.model_validate(
            {
                "data": {"snapshot": str(data.path), "img_size": 64},
                "model": {"name": "resnet18", "options": {"small_input": False}},
                # light augmentation (crops of 70-100 %, flips): the default's stronger crops can
                # cut the shape away, and these features are for whole objects
                "augment": {"preset": "light"},
                "train": {"epochs": 10, "device": device},
            }
        )
        train_run(config, run, callbacks=[ProgressBar()])
    return run / "best.pt", json.loads((run / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cvflow/bench/bakeoff"))
    parser.add_argument("--models", default="rcnn,fast_rcnn,faster_rcnn,yolov1")
    parser.add_argument("--datasets", default="shapes,dense")
    parser.add_argument("--epochs", default=None, help="as cvflow compare --epochs (e.g. 5 or yolov1=40)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    contenders = parse_contenders(args.models)
    epochs = parse_epochs(args.epochs, [c.name for c in contenders])
    t = time.perf_counter()
    backbone, metrics = pretrain_backbone(args.workdir, args.device)
    print(
        f"backbone: {backbone} (val accuracy {metrics['best'].get('val/accuracy', float('nan')):.3f}, {time.perf_counter() - t:.0f} s)"
    )
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    for name in args.datasets.split(","):
        snap = snapshot(args.workdir, name)
        params = ComparePipelineParams(
            data=DataSource(path=Path(snap.path).resolve()), epochs=epochs or {}, pretrained=str(backbone), device=args.device,
            models=tuple(c.name if c.run_dir is None else f"{c.name}={c.run_dir.resolve()}" for c in contenders),
            out=(args.workdir / name).resolve(), progress=True,
        )  # fmt: skip
        with prefect_settings():
            result = compare_pipeline(params)
        print(f"\n### {name} ({dt.date.today()}, {machine}; MLflow run {result.run_url})\n")
        print(table_markdown(pl.read_parquet(result.table)))


if __name__ == "__main__":
    main()
