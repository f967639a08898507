"""Training quality on the built-in synthetic data, on CPU, with each model's registry defaults.

Two runs, each through ``cvcore.engine.run.train_run`` exactly as ``cvflow train --data S --model
NAME --out R`` makes them (nothing set but the data and the model, so the model's defaults from
the registry choose image size, epochs, batch size, LR and schedule):

- ``resnet18`` on ``make_shapes_classification`` (32 px, 4 shapes): target val accuracy >= 0.95;
- ``yolov1`` on ``make_shapes_detection`` (128 px, up to 4 shapes per image): target
  mAP@0.5 >= 0.5 (COCO protocol's ``map_50``, the same number as evaluate_detections gives).

For each: the best and final validation metrics, the epoch of the best, wall time of the whole
run (data generation excluded) and training throughput. The snapshots are made fresh in a
temporary folder with fixed seeds, so reruns see the same data.

    .venv/bin/python benchmarks/train_quality.py                  # both runs
    .venv/bin/python benchmarks/train_quality.py --only yolov1    # one of them
    .venv/bin/python benchmarks/train_quality.py --json out.json  # also write the numbers

Results and the machine they ran on go in benchmarks/RESULTS.md (section "Engine: training quality and overhead").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from cvcore.config import PartialRunConfig  # noqa: E402
from cvcore.data.synthetic import make_shapes_classification, make_shapes_detection  # noqa: E402
from cvcore.engine.callbacks import ProgressBar  # noqa: E402
from cvcore.engine.run import train_run  # noqa: E402

# name: (data generator, its parameters, config set beyond data + model (empty: registry defaults), metric, target)
RUNS = {
    "resnet18": (
        make_shapes_classification,
        {"n_train": 800, "n_val": 200, "image_size": 32, "seed": 0},
        {},
        "val/accuracy",
        0.95,
    ),
    "yolov1": (
        make_shapes_detection,
        {"n_train": 240, "n_val": 60, "image_size": 128, "seed": 0},
        {},
        "val/map_50",
        0.5,
    ),
}


def run_one(name: str, work: Path, *, quiet: bool) -> dict:
    make, params, overrides, metric, target = RUNS[name]
    snapshot = make(work / f"data-{name}", **params)
    raw = {section: dict(values) for section, values in overrides.items()}
    raw.setdefault("data", {})["snapshot"] = str(snapshot.path)
    raw.setdefault("model", {})["name"] = name
    config = PartialRunConfig.model_validate(raw)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train_run(config, work / f"run-{name}", callbacks=[] if quiet else [ProgressBar()])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    h = result.history
    return {
        "model": name,
        "data": {"generator": make.__name__, **params},
        "overrides": overrides,
        "metric": metric,
        "target": target,
        "best": result.best_metrics[metric],
        "best_epoch": result.best_epoch,
        "final": result.final_metrics[metric],
        "epochs": result.epochs_run,
        "passed": result.best_metrics[metric] >= target,
        "first_epoch_at_target": next(
            (int(e) for e, v in zip(h.get_column("epoch"), h.get_column(metric)) if v >= target), None
        ),
        "curve": [round(float(v), 4) for v in h.get_column(metric)],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),  # this process's CPU time: steadier than wall time on a shared machine
        "train_images_per_s": round(float(h.get_column("train/images").sum() / h.get_column("train/time_s").sum()), 1),
        "settings": _settings(work / f"run-{name}" / "config.yaml"),
    }


def _settings(config_yaml: Path) -> dict:
    """The resolved settings that matter for the result (from the run's config.yaml)."""
    c = yaml.safe_load(config_yaml.read_text())
    t = c["train"]
    return {"img_size": c["data"]["img_size"], "epochs": t["epochs"], "batch_size": t["batch_size"], "optimizer": t["optimizer"],
            "lr": t["lr"], "scheduler": t["scheduler"], "warmup_epochs": t["warmup_epochs"], "augment": c["augment"]["preset"],
            "options": c["model"]["options"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(RUNS), action="append", help="run only this model (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only or list(RUNS)
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_at_start": os.getloadavg()[0],
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="cvflow-quality-") as tmp:
        for name in names:
            r = run_one(name, Path(tmp), quiet=args.quiet)
            results.append(r)
            print(
                f"{name:9s} {r['metric']} best {r['best']:.4f} (epoch {r['best_epoch']}/{r['epochs']}), final {r['final']:.4f}, "
                f"first >= target at epoch {r['first_epoch_at_target']}, "
                f"target {r['target']} {'PASS' if r['passed'] else 'FAIL'}; {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} CPU-s, "
                f"{r['train_images_per_s']:.1f} train img/s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(json.dumps(machine))


if __name__ == "__main__":
    main()
