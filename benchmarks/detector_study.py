"""Detector recipe study: time-to-accuracy of each detector on real and synthetic data, on CPU.

For every (dataset, model, recipe) run it trains through ``cvcore.engine.run.train_run`` - what
``cvflow train --data SNAP --model NAME`` does - and records after each epoch the elapsed wall
and CPU seconds of the run and the val mAP@0.5 / mAP from the engine's validation (cvcore's
pycocotools-exact COCO evaluator). ``--set key=value`` overrides a recipe (``train.epochs=12``,
``model.options.head_convs=4``, ``augment.mosaic_p=0.5``); with none, the registry defaults run.
It also times inference (CPU ms/image, batch 8, after a warm-up) at 128 and 512 px.

    .venv/bin/python benchmarks/detector_study.py --data digits=../shared/data/digits-det-dev \\
        --models fcos,yolov1 --json study.json --plot study.png
    .venv/bin/python benchmarks/detector_study.py --data shapes --models fcos --set train.epochs=8

``--data NAME=PATH`` takes a COCO folder (ingested into a temporary snapshot) or a snapshot folder;
``shapes`` makes the built-in synthetic set (240 train / 60 val, 128 px, seed 0). Results and the
machine they ran on go in benchmarks/RESULTS.md ("Detector recipes on real data").
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

from cvcore.config import PartialRunConfig  # noqa: E402
from cvcore.engine.run import train_run  # noqa: E402

INFER_SIZES = (128, 512)


class EpochClock:
    """Callback recording, after each epoch, the run's elapsed wall/CPU seconds and val metrics."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.rows.append({
            "epoch": epoch,
            "wall_s": round(time.perf_counter() - self._wall0, 1),
            "cpu_s": round(time.process_time() - self._cpu0, 1),
            "map_50": round(float(metrics.get("val/map_50", float("nan"))), 4),
            "map": round(float(metrics.get("val/map", float("nan"))), 4),
            "loss": round(float(metrics.get("train/loss", float("nan"))), 4),
        })  # fmt: skip
        r = self.rows[-1]
        print(
            f"  epoch {epoch}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} CPU-s, val mAP@0.5 {r['map_50']:.3f}, mAP {r['map']:.3f}",
            flush=True,
        )


def snapshot_for(spec: str, work: Path) -> Path:
    """``NAME=PATH`` (COCO folder or snapshot) or ``shapes`` -> a snapshot folder."""
    from cvcore.data.snapshot import read_snapshot

    name, _, path = spec.partition("=")
    if name == "shapes" and not path:
        from cvcore.data.synthetic import make_shapes_detection

        return make_shapes_detection(work / "shapes", n_train=240, n_val=60, image_size=128, seed=0).path
    source = Path(path).resolve()
    if (source / "manifest.json").exists():
        read_snapshot(source)
        return source
    from cvcore.data.ingest import ingest

    return ingest(source, fmt="coco", out=work / name).snapshot.path


def parse_sets(items: list[str]) -> dict:
    """``["train.epochs=12", "model.options.head_convs=4"]`` -> a nested config dict (YAML values)."""
    import yaml

    raw: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return raw


def train_one(snapshot: Path, model: str, sets: dict, out: Path) -> dict:
    raw = json.loads(json.dumps(sets))
    raw.setdefault("data", {})["snapshot"] = str(snapshot)
    raw.setdefault("model", {})["name"] = model
    clock = EpochClock()
    result = train_run(PartialRunConfig.model_validate(raw), out, callbacks=[clock])
    return {"curve": clock.rows, "best_epoch": result.best_epoch, "config": (out / "config.yaml").read_text()}


@torch.no_grad()
def inference_ms(run_dir: Path, snapshot: Path, size: int, *, batch: int = 8, repeats: int = 3) -> float:
    """CPU ms per image of the trained model's eval forward + decoding, val images resized to ``size`` px.

    The run's best weights are loaded into the model rebuilt at ``size`` (so decoding sees real
    scores, not a random model's); CPU time counts every thread (process_time).
    """
    import torch.nn.functional as F

    from cvcore.data.snapshot import read_snapshot
    from cvcore.data.torch_dataset import dataset_for
    from cvcore.engine.checkpoint import ema_weights, load_checkpoint
    from cvcore.models import build_model
    from cvcore.models.capabilities import Postprocessable

    state = load_checkpoint(run_dir / "best.pt")
    meta = state["meta"]
    options = dict(meta["options"])
    if meta["model_name"] == "yolov1":
        # The same network at another size: YOLOv1's cells keep their pixels (the grid grows with
        # the image) and its trunk its stride; the conv head's weights fit any grid.
        trained = build_model("yolov1", num_classes=meta["num_classes"], img_size=meta["img_size"], **options)
        options |= {"grid": trained.grid * size // meta["img_size"], "feature_stride": trained.feature_stride}
    if meta["model_name"] == "fast_rcnn" and "stage" not in options:
        # Its trunk's depth follows the image size (layer2 below 400 px, layer3 above): keep the
        # trained trunk so the weights fit the model rebuilt at ``size``.
        trained = build_model("fast_rcnn", num_classes=meta["num_classes"], img_size=meta["img_size"], **options)
        options["stage"] = list(trained.backbone_stages)[-1]
    model = build_model(meta["model_name"], num_classes=meta["num_classes"], img_size=size, **options)
    model.load_state_dict(ema_weights(state["ema"]) if state.get("ema") else state["model"])
    model.eval()
    if isinstance(model, Postprocessable):
        model.set_postprocess(score_threshold=0.001, max_detections=100)
    data = dataset_for(read_snapshot(snapshot), "val", None)
    images = [
        F.interpolate(
            data[i][0].float()[None] / (255 if data[i][0].dtype == torch.uint8 else 1),
            size=(size, size),
            mode="bilinear",
        )[0]
        for i in range(batch)
    ]
    model(images)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        model(images)
        best = min(best, (time.process_time() - start) / batch * 1000)
    return round(best, 1)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["data"] for r in results})
    fig, axes = plt.subplots(2, len(datasets), figsize=(6 * len(datasets), 8), squeeze=False)
    for col, data in enumerate(datasets):
        for r in (r for r in results if r["data"] == data):
            xs = [row["cpu_s"] for row in r["curve"]]
            for row_i, key in enumerate(("map_50", "map")):
                axes[row_i][col].plot(xs, [row[key] for row in r["curve"]], marker="o", ms=3, label=r["label"])
        for row_i, key in enumerate(("val mAP@0.5", "val mAP@[.5:.95]")):
            ax = axes[row_i][col]
            ax.set(title=f"{data}: {key}", xlabel="training CPU seconds", ylabel=key, ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", default=None, help="NAME=COCO_OR_SNAPSHOT_DIR or 'shapes' (repeatable)")
    ap.add_argument("--models", default="fcos,yolov1", help="comma-separated detectors")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--label", default=None, help="name of this recipe in the table (default: model + overrides)")
    ap.add_argument("--no-infer", action="store_true", help="skip the inference timing")
    ap.add_argument("--keep", type=Path, help="keep the snapshots and run folders here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="append each run's results to this JSON file as it ends")
    ap.add_argument("--plot", type=Path, help="time-to-accuracy figure of everything in --json")
    args = ap.parse_args(argv)
    sets = parse_sets(args.set)
    results = []
    with tempfile.TemporaryDirectory(prefix="cvflow-study-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for spec in args.data or ["shapes"]:
            data_name = spec.partition("=")[0]
            snapshot = snapshot_for(spec, work)
            for model in args.models.split(","):
                label = " ".join([model, args.label]) if args.label else " ".join([model, *args.set])
                print(f"{data_name} / {label}", flush=True)
                run = train_one(snapshot, model, sets, work / f"run-{data_name}-{model}-{len(results)}")
                run_dir = work / f"run-{data_name}-{model}-{len(results)}"
                infer = {}
                for size in () if args.no_infer else INFER_SIZES:
                    try:
                        infer[f"infer_ms_{size}"] = inference_ms(run_dir, snapshot, size)
                    except (RuntimeError, ValueError) as exc:  # a model that cannot run at that size
                        print(f"  inference at {size} px: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
                best = max(run["curve"], key=lambda r: r["map_50"])
                results.append({"data": data_name, "model": model, "label": label, "sets": args.set, **run, **infer,
                                "best_map_50": best["map_50"], "best_map": max(r["map"] for r in run["curve"]),
                                "final": run["curve"][-1],
                                "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
                                "load_before": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")})  # fmt: skip
                if args.json:
                    previous = json.loads(args.json.read_text()) if args.json.exists() else []
                    args.json.write_text(json.dumps(previous + results[-1:], indent=1))
                f = results[-1]["final"]
                print(f"  -> final mAP@0.5 {f['map_50']:.3f} mAP {f['map']:.3f} in {f['wall_s']:.0f} s wall / {f['cpu_s']:.0f} CPU-s; "
                      f"inference {infer} ms/image", flush=True)  # fmt: skip
    if args.json and args.plot:
        plot(json.loads(args.json.read_text()), args.plot)
    elif args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
