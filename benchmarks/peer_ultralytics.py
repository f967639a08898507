"""The peer, measured like our detectors: Ultralytics YOLOv8n / YOLO11n from scratch on CPU (issue 15).

Ultralytics is never a project dependency. When ``<scratch>/site`` lacks it, this script runs
``.venv/bin/pip install --no-deps --target <scratch>/site ultralytics`` (the project's venv
already has torch, torchvision, opencv, polars, matplotlib, psutil, ...; nothing else is needed for
training), then trains in a subprocess with ``PYTHONPATH=<scratch>/site``, offline: ``YOLO_OFFLINE=1``,
``YOLO_AUTOINSTALL=0`` (it never pip-installs into our venv), settings sync and logger integrations
off, ``plots=False``, and matplotlib's DejaVuSans.ttf as the ``Arial.ttf`` its dataset check wants
(``$YOLO_CONFIG_DIR/Ultralytics/Arial.ttf``, with ``YOLO_CONFIG_DIR=<scratch>/config``).

    .venv/bin/python benchmarks/peer_ultralytics.py --data digits=../shared/data/digits-det-dev \\
        --models yolov8n,yolo11n --json study.json
    .venv/bin/python benchmarks/peer_ultralytics.py --data digits=../shared/data/digits-det-dev \\
        --epochs 1 --json /tmp/peer-smoke.json          # smoke test, about a minute on 2 cores

Data and scoring are those of benchmarks/detector_study.py: ``--data NAME=PATH`` takes a COCO
folder (ingested into a temporary snapshot with cvcore's ingest) or a snapshot folder (``shapes``:
the built-in synthetic set); the snapshot is exported to YOLO format (images symlinked and named
by image_id, labels ``cls cx cy w h`` normalised, crowd boxes left out, the snapshot's splits,
``data.yaml`` with the class names). Training is the default Ultralytics recipe from the model's
.yaml (no weights downloaded, ``pretrained=False``): ``imgsz`` 128, 60 epochs, batch 16,
``workers=2``, ``device=cpu``, ``seed=0`` (Ultralytics 8.4 loads data in the main process on CPU
whatever ``workers`` says; the CPU seconds count dataloader children when there are any).

A callback in the training process records after each epoch its elapsed wall and CPU seconds
(the process and its children, from the model build on) and Ultralytics' own val mAP50 /
mAP50-95, and keeps a stripped copy of the weights of the epochs in ``--score-epochs``. After
training, each kept checkpoint predicts the val images (``conf=0.001, iou=0.7, max_det=100``)
and cvcore's pycocotools-exact evaluator (COCO protocol) scores them: ``map_50`` / ``map`` in the
records are ours, ``ultra_map_50`` / ``ultra_map`` Ultralytics'. Inference cost is CPU ms/image
(``time.process_time``, a batch of 8 val images resized to 128 and 512 px, best of 3 after a
warm-up) of the trained, fused model's eval-mode forward plus NMS at the scoring thresholds, as
detector_study.py times ours.

Records are appended to ``--json`` in detector_study.py's shape (data, model, label, curve
[{epoch, wall_s, cpu_s, map_50, map, ...}], best_map_50, best_map, final, infer_ms_128,
infer_ms_512, machine, load_before, date), plus ``ultra_curve`` (every epoch) and ``peer``
(Ultralytics version, arguments, run folder); ``--plot`` redraws detector_study's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INFER_SIZES = (128, 512)
PEER_PACKAGES = ["ultralytics"]  # installed with --no-deps; the venv has everything it imports


# --------------------------------------------------------------------------------------------------
# Parent side: our venv, cvcore, no Ultralytics import.


def ensure_ultralytics(site: Path) -> str:
    """Install Ultralytics into ``site`` (not our venv) unless it is there; return its version."""
    probe = [sys.executable, "-c", "import importlib.metadata as m; print(m.version('ultralytics'))"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = subprocess.run(probe, env=env, capture_output=True, text=True)
    if found.returncode == 0 and (site / "ultralytics").is_dir():
        return found.stdout.strip()
    print(f"installing {' '.join(PEER_PACKAGES)} into {site} (--no-deps)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *PEER_PACKAGES],
                   check=True)  # fmt: skip
    return subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip()


def offline_config(config_dir: Path) -> None:
    """The font Ultralytics' dataset check would download, taken from matplotlib."""
    import matplotlib

    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)


def export_yolo(snapshot, out: Path) -> Path:
    """Write ``snapshot`` in YOLO layout under ``out``; return its data.yaml.

    Images are symlinked as ``images/<split>/<image_id><suffix>`` (so a prediction's file stem is
    its image_id), labels go to ``labels/<split>/<image_id>.txt`` (``cls cx cy w h`` in [0, 1]; an
    image without boxes gets an empty file). Crowd boxes are left out: the COCO protocol ignores them.
    """
    import polars as pl
    import yaml

    if not {"train", "val"} <= set(snapshot.splits):
        raise SystemExit(f"{snapshot.path}: needs train and val splits, has {snapshot.splits}")
    boxes = snapshot.annotations.filter(~pl.col("iscrowd")).join(
        snapshot.images.select("image_id", "width", "height"), on="image_id"
    )
    boxes = boxes.with_columns(
        cx=((pl.col("x1") + pl.col("x2")) / 2 / pl.col("width")).clip(0, 1),
        cy=((pl.col("y1") + pl.col("y2")) / 2 / pl.col("height")).clip(0, 1),
        w=((pl.col("x2") - pl.col("x1")) / pl.col("width")).clip(0, 1),
        h=((pl.col("y2") - pl.col("y1")) / pl.col("height")).clip(0, 1),
    )
    lines: dict[int, list[str]] = {}
    for r in boxes.sort("ann_id").iter_rows(named=True):
        lines.setdefault(r["image_id"], []).append(
            f"{r['category_id']} {r['cx']:.6f} {r['cy']:.6f} {r['w']:.6f} {r['h']:.6f}"
        )
    for split in snapshot.splits:
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for image_id, file_name in snapshot.split_images(split).select("image_id", "file_name").iter_rows():
            source = snapshot.image_path(file_name)
            (out / "images" / split / f"{image_id}{source.suffix.lower()}").symlink_to(source)
            (out / "labels" / split / f"{image_id}.txt").write_text("".join(f"{x}\n" for x in lines.get(image_id, [])))
    data_yaml = out / "data.yaml"
    names = dict(enumerate(snapshot.class_names))  # category_id is contiguous 0..K-1
    data_yaml.write_text(
        yaml.safe_dump({"path": str(out), "train": "images/train", "val": "images/val", "names": names})
    )
    return data_yaml


def score(snapshot, predictions: Path) -> dict[str, float]:
    """cvcore's COCO-protocol summary of one epoch's val predictions (parquet, DETECTIONS layout)."""
    import polars as pl

    from cvcore.metrics.detection import evaluate_detections

    images = snapshot.split_images("val")
    ids = images.get_column("image_id").implode()
    annotations = snapshot.annotations.filter(pl.col("image_id").is_in(ids))
    report = evaluate_detections(annotations, pl.read_parquet(predictions), images=images, protocol="coco")
    return {"map_50": round(float(report.summary["map_50"]), 4), "map": round(float(report.summary["map"]), 4)}


def run_peer(spec: dict, env: dict[str, str], log: Path) -> dict:
    """Train/predict/time in a subprocess (this file's ``--worker`` mode), echoing its epoch lines."""
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    epochs_file = out / "epochs.jsonl"
    epochs_file.unlink(missing_ok=True)
    shown = 0
    with log.open("w") as log_f:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(out / "spec.json")],
                                cwd=out, env=env, stdout=log_f, stderr=subprocess.STDOUT)  # fmt: skip
        while True:
            done = proc.poll() is not None
            text = epochs_file.read_text() if epochs_file.exists() else ""
            rows = [json.loads(x) for x in text.split("\n")[:-1]]  # complete lines only
            for r in rows[shown:]:
                print(f"  epoch {r['epoch']}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} CPU-s, "
                      f"Ultralytics val mAP50 {r['ultra_map_50']:.3f}, mAP50-95 {r['ultra_map']:.3f}", flush=True)  # fmt: skip
            shown = len(rows)
            if done:
                break
            time.sleep(2)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"Ultralytics run failed (exit {proc.returncode}); log {log}:\n{tail}")
    return {"epochs": rows, **json.loads((out / "result.json").read_text())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", default=None, help="NAME=COCO_OR_SNAPSHOT_DIR or 'shapes' (repeatable)")
    ap.add_argument("--models", default="yolov8n", help="comma-separated Ultralytics model yamls without .yaml")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--score-epochs",
        default="all",
        help="'all' or comma-separated epochs scored by our evaluator (the last always is)",
    )
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cvflow-peer"), help="Ultralytics install, config, runs")
    ap.add_argument("--no-infer", action="store_true", help="skip the inference timing")
    ap.add_argument("--json", type=Path, help="append the results to this JSON file")
    ap.add_argument("--plot", type=Path, help="detector_study's time-to-accuracy figure of everything in --json")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker.read_text()))

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from detector_study import plot, snapshot_for  # the study's data, exactly

    from cvcore.data.snapshot import read_snapshot

    scratch = args.scratch.resolve()
    version = ensure_ultralytics(scratch / "site")
    offline_config(scratch / "config")
    env = {**os.environ, "PYTHONPATH": str(scratch / "site"), "YOLO_CONFIG_DIR": str(scratch / "config"),
           "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "MPLBACKEND": "Agg"}  # fmt: skip
    score_epochs = (
        list(range(1, args.epochs + 1))
        if args.score_epochs == "all"
        else [int(e) for e in args.score_epochs.split(",")]
    )
    score_epochs = sorted({e for e in score_epochs if 1 <= e <= args.epochs} | {args.epochs})
    results = []
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="work-", dir=scratch) as tmp:
        work = Path(tmp)
        for spec in args.data or ["shapes"]:
            data_name = spec.partition("=")[0]
            snapshot = read_snapshot(snapshot_for(spec, work))
            data_yaml = export_yolo(snapshot, work / f"yolo-{data_name}")
            for model in args.models.split(","):
                label = f"ultralytics {model}"
                run_dir = scratch / "runs" / f"{data_name}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
                print(f"{data_name} / {label} {version}, from scratch (log: {run_dir}.log)", flush=True)
                load_before = os.getloadavg()[0]
                peer = run_peer({"model": model, "data_yaml": str(data_yaml), "out": str(run_dir), "epochs": args.epochs,
                                 "imgsz": args.imgsz, "batch": args.batch, "score_epochs": score_epochs,
                                 "infer_sizes": [] if args.no_infer else list(INFER_SIZES)},
                                env, run_dir.with_suffix(".log"))  # fmt: skip
                ultra_curve = peer["epochs"]
                curve = [{**r, **score(snapshot, run_dir / "pred" / f"epoch{r['epoch']:03d}.parquet")}
                         for r in ultra_curve if r["epoch"] in score_epochs]  # fmt: skip
                curve = [
                    {
                        k: r[k]
                        for k in ("epoch", "wall_s", "cpu_s", "map_50", "map", "ultra_map_50", "ultra_map", "loss")
                    }
                    for r in curve
                ]
                infer = {f"infer_ms_{s}": ms for s, ms in peer["infer_ms"].items()}
                results.append({"data": data_name, "model": model, "label": label, "sets": [], "curve": curve, **infer,
                                "best_map_50": max(r["map_50"] for r in curve), "best_map": max(r["map"] for r in curve),
                                "final": curve[-1], "ultra_curve": ultra_curve,
                                "peer": {"ultralytics": version, "args": peer["args"], "run_dir": str(run_dir)},
                                "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {peer['torch']}",
                                "load_before": load_before, "date": time.strftime("%Y-%m-%d %H:%M")})  # fmt: skip
                f = curve[-1]
                print(f"  -> {data_name} {model}: final mAP@0.5 {f['map_50']:.3f} mAP {f['map']:.3f} (cvcore COCO evaluator; "
                      f"Ultralytics' own {f['ultra_map_50']:.3f} / {f['ultra_map']:.3f}) in {f['wall_s']:.0f} s wall / "
                      f"{f['cpu_s']:.0f} CPU-s; inference {infer} CPU ms/image", flush=True)  # fmt: skip
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(previous + results, indent=1))
    if args.plot:
        plot((previous if args.json else []) + results, args.plot)
    return 0


# --------------------------------------------------------------------------------------------------
# Worker side: runs with PYTHONPATH=<scratch>/site, imports Ultralytics, never cvcore.


def worker(spec: dict) -> int:
    import psutil
    import torch
    from ultralytics import YOLO, settings
    from ultralytics.utils.torch_utils import strip_optimizer

    settings.update({"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                     "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False})  # fmt: skip
    out = Path(spec["out"])
    (out / "weights").mkdir(parents=True, exist_ok=True)
    me = psutil.Process()

    def cpu_seconds() -> float:  # this process, its finished children and live ones (dataloader workers)
        t = me.cpu_times()
        live = sum(c.cpu_times().user + c.cpu_times().system for c in me.children(recursive=True) if c.is_running())
        return t.user + t.system + t.children_user + t.children_system + live

    clock = {"wall0": time.perf_counter(), "cpu0": cpu_seconds(), "wall_off": 0.0, "cpu_off": 0.0}

    def on_model_save(trainer) -> None:  # keep the epochs we score; its cost is taken off the clock
        epoch = trainer.epoch + 1
        if epoch in spec["score_epochs"]:
            w, c = time.perf_counter(), cpu_seconds()
            strip_optimizer(trainer.last, s=str(out / "weights" / f"epoch{epoch:03d}.pt"))
            clock["wall_off"] += time.perf_counter() - w
            clock["cpu_off"] += cpu_seconds() - c

    def on_fit_epoch_end(trainer) -> None:
        epoch = trainer.epoch + 1
        if epoch > trainer.epochs:  # final_eval of best.pt calls this once more
            return
        m = trainer.metrics
        row = {"epoch": epoch,
               "wall_s": round(time.perf_counter() - clock["wall0"] - clock["wall_off"], 1),
               "cpu_s": round(cpu_seconds() - clock["cpu0"] - clock["cpu_off"], 1),
               "ultra_map_50": round(float(m.get("metrics/mAP50(B)", float("nan"))), 4),
               "ultra_map": round(float(m.get("metrics/mAP50-95(B)", float("nan"))), 4),
               "loss": round(total_loss(trainer.tloss), 4)}  # fmt: skip
        with (out / "epochs.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def total_loss(tloss) -> float:  # the epoch's mean box + cls + dfl loss (a dict in 8.4, a tensor before)
        if tloss is None:
            return float("nan")
        return float(sum(tloss.values()) if isinstance(tloss, dict) else tloss.sum())

    model = YOLO(f"{spec['model']}.yaml")  # the architecture only: from scratch, nothing downloaded
    model.add_callback("on_model_save", on_model_save)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    train_args = {"data": spec["data_yaml"], "epochs": spec["epochs"], "imgsz": spec["imgsz"], "batch": spec["batch"],
                  "workers": 2, "device": "cpu", "seed": 0, "pretrained": False, "amp": False, "plots": False,
                  "project": str(out.parent), "name": out.name, "exist_ok": True}  # fmt: skip
    model.train(**train_args)

    (out / "pred").mkdir(exist_ok=True)
    val_images = sorted((Path(spec["data_yaml"]).parent / "images" / "val").iterdir())
    for epoch in spec["score_epochs"]:
        weights = out / "weights" / f"epoch{epoch:03d}.pt"
        write_predictions(YOLO(weights), val_images, spec["imgsz"], out / "pred" / f"epoch{epoch:03d}.parquet")
        weights.unlink()  # 6 MB each; last.pt and best.pt stay
    best = out / "weights" / "best.pt"
    net = YOLO(best if best.exists() else out / "weights" / "last.pt").model.float().fuse().eval()
    infer = {str(s): inference_ms(net, val_images[:8], s) for s in spec["infer_sizes"]}
    result = {"infer_ms": infer, "args": train_args, "torch": torch.__version__}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


def write_predictions(model, images: list[Path], imgsz: int, path: Path) -> None:
    """Val predictions in cvcore's DETECTIONS layout (xyxy pixels of the original image)."""
    import polars as pl

    rows: dict[str, list] = {k: [] for k in ("image_id", "category_id", "score", "x1", "y1", "x2", "y2")}
    for r in model.predict(source=[str(p) for p in images], imgsz=imgsz, conf=0.001, iou=0.7, max_det=100,
                           device="cpu", batch=16, stream=True, verbose=False):  # fmt: skip
        boxes = r.boxes.xyxy.tolist()
        rows["image_id"] += [int(Path(r.path).stem)] * len(boxes)
        rows["category_id"] += [int(c) for c in r.boxes.cls.tolist()]
        rows["score"] += r.boxes.conf.tolist()
        for key, column in zip(("x1", "y1", "x2", "y2"), zip(*boxes) if boxes else ([], [], [], [])):
            rows[key] += list(column)
    schema = {"image_id": pl.Int64, "category_id": pl.Int32, "score": pl.Float64,
              "x1": pl.Float64, "y1": pl.Float64, "x2": pl.Float64, "y2": pl.Float64}  # fmt: skip
    pl.DataFrame(rows, schema=schema).write_parquet(path)


def inference_ms(net, images: list[Path], size: int, *, repeats: int = 3) -> float:
    """CPU ms per image of the eval-mode forward + NMS on val images resized to ``size`` px.

    As detector_study.inference_ms: trained weights, RGB in [0, 1] resized bilinearly, one batch,
    decoding at the scoring thresholds (conf 0.001, max 100 detections), all threads' CPU time.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # older releases
        from ultralytics.utils.ops import non_max_suppression

    batch = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in images])
    batch = F.interpolate(batch.float() / 255, size=(size, size), mode="bilinear")
    with torch.no_grad():
        non_max_suppression(net(batch), 0.001, 0.7, max_det=100)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            non_max_suppression(net(batch), 0.001, 0.7, max_det=100)
            best = min(best, (time.process_time() - start) / len(images) * 1000)
    return round(best, 1)


if __name__ == "__main__":
    raise SystemExit(main())
