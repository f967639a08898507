"""COCO mAP speed and memory: cvcore's evaluate_detections vs pycocotools vs faster-coco-eval.

Builds a seeded COCO-style set (default 5,000 images, 80 categories, ~35,000 ground-truth boxes,
100 detections per image), writes it once as Parquet (ours) and COCO JSON (the references), then
runs each evaluator in its own fresh process, from its native in-memory input to the 12 summary
numbers, measuring wall time and peak resident memory above the process's baseline (sampled
every 2 ms from /proc/self/statm). Then, with ``--large N``, our evaluator alone straight from
``pl.scan_parquet`` over the prediction shards at N images, to show how time and memory grow.

    .venv/bin/python benchmarks/map_speed.py                     # 5k images, all three tools
    .venv/bin/python benchmarks/map_speed.py --large 50000       # plus the 50k Parquet run
    .venv/bin/python benchmarks/map_speed.py --images 500 --repeat 1   # quick smoke run

Results and the machine they ran on go in benchmarks/RESULTS.md (section "mAP speed").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
SHARD_IMAGES = 1000  # images per prediction shard (part-XXXXX.parquet)


# ----------------------------------------------------------------------------- data


def make_set(n_images: int, *, n_categories: int = 80, dets_per_image: int = 100, seed: int = 0):
    """A COCO-like set: ~7 objects per image, skewed class frequencies, 8-400 px objects,
    segmentation-like areas (55-95% of the box), 1% crowd; per object 0-3 detections of varying
    quality (10% with a wrong class), the rest of the 100 per image background boxes. A fair
    detector: mAP about 0.23, mAP@0.5 about 0.47 at 300 images."""
    rng = np.random.default_rng(seed)
    W, H = 640.0, 480.0
    class_p = 1.0 / np.arange(1, n_categories + 1) ** 0.8
    class_p /= class_p.sum()

    n_gt = rng.poisson(7.0, n_images)
    gt_img = np.repeat(np.arange(n_images), n_gt)
    G = gt_img.size
    gt_cat = rng.choice(n_categories, G, p=class_p)
    gt_box = _boxes(rng, G, W, H)
    gt_area = (gt_box[:, 2] - gt_box[:, 0]) * (gt_box[:, 3] - gt_box[:, 1]) * rng.uniform(0.55, 0.95, G)
    crowd = rng.random(G) < 0.01

    # detections of the objects: 0..3 copies each, jittered by 1-15% of the object size
    copies = rng.choice([0, 1, 1, 1, 1, 2, 3], G)
    src = np.repeat(np.arange(G), copies)
    size = np.repeat(np.maximum(gt_box[:, 2] - gt_box[:, 0], gt_box[:, 3] - gt_box[:, 1]), copies)
    jitter = rng.normal(0, 1, (src.size, 4)) * (size * rng.uniform(0.01, 0.15, src.size))[:, None]
    near = _fix(gt_box[src] + jitter, W, H)
    near_cat = np.where(rng.random(src.size) < 0.9, gt_cat[src], rng.integers(0, n_categories, src.size))
    near_score = rng.beta(5, 2, src.size)
    near_img = gt_img[src]
    # keep at most dets_per_image of them per image, then fill each image up with background boxes
    order = np.lexsort((-near_score, near_img))
    near_img, near_cat, near_score, near = near_img[order], near_cat[order], near_score[order], near[order]
    rank = np.arange(near_img.size) - np.searchsorted(near_img, near_img)
    keep = rank < dets_per_image
    near_img, near_cat, near_score, near = near_img[keep], near_cat[keep], near_score[keep], near[keep]
    fill = dets_per_image - np.bincount(near_img, minlength=n_images)
    bg_img = np.repeat(np.arange(n_images), fill)
    # background detections: half in a class present in the image, half in any class
    first_gt = np.searchsorted(gt_img, bg_img)
    has_gt = n_gt[bg_img] > 0
    pick = first_gt + (rng.random(bg_img.size) * np.maximum(n_gt[bg_img], 1)).astype(np.int64)
    bg_cat = np.where(has_gt & (rng.random(bg_img.size) < 0.5), gt_cat[np.minimum(pick, G - 1)],
                      rng.choice(n_categories, bg_img.size, p=class_p))  # fmt: skip
    bg = _boxes(rng, bg_img.size, W, H)
    bg_score = rng.beta(1.2, 5, bg_img.size)

    image_ids = np.arange(1, n_images + 1, dtype=np.int64)
    images = pl.DataFrame({"image_id": image_ids})
    annotations = pl.DataFrame(
        {
            "ann_id": np.arange(1, G + 1, dtype=np.int64),
            "image_id": image_ids[gt_img],
            "category_id": gt_cat.astype(np.int32),
            "x1": gt_box[:, 0], "y1": gt_box[:, 1], "x2": gt_box[:, 2], "y2": gt_box[:, 3],
            "area": gt_area,
            "iscrowd": crowd,
            "difficult": np.zeros(G, dtype=bool),
        }
    )  # fmt: skip
    det_img = np.concatenate([near_img, bg_img])
    det_box = np.concatenate([near, bg])
    predictions = pl.DataFrame(
        {
            "image_id": image_ids[det_img],
            "category_id": np.concatenate([near_cat, bg_cat]).astype(np.int32),
            "score": np.round(np.concatenate([near_score, bg_score]), 4),  # 4 decimals: some ties
            "x1": det_box[:, 0], "y1": det_box[:, 1], "x2": det_box[:, 2], "y2": det_box[:, 3],
        }
    ).sort("image_id", maintain_order=True)  # fmt: skip
    return images, annotations, predictions


def _boxes(rng: np.random.Generator, n: int, W: float, H: float) -> np.ndarray:
    side = np.exp(rng.uniform(np.log(8), np.log(400), n))  # sqrt(area): small, medium and large
    aspect = np.exp(rng.normal(0, 0.35, n))
    w, h = np.minimum(side * aspect, W - 1), np.minimum(side / aspect, H - 1)
    x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
    return np.stack([x, y, x + w, y + h], axis=1)


def _fix(boxes: np.ndarray, W: float, H: float) -> np.ndarray:
    x1 = np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0, W)
    x2 = np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0, W)
    y1 = np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0, H)
    y2 = np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0, H)
    return np.stack([x1, y1, np.maximum(x2, x1 + 0.5), np.maximum(y2, y1 + 0.5)], axis=1)


def write_set(
    out: Path, images: pl.DataFrame, annotations: pl.DataFrame, predictions: pl.DataFrame, *, coco: bool
) -> None:
    """Parquet (images, annotations, predictions/part-*.parquet) and, with ``coco``, COCO JSON."""
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    images.write_parquet(out / "images.parquet")
    annotations.write_parquet(out / "annotations.parquet")
    shard = (predictions.get_column("image_id") - 1) // SHARD_IMAGES
    for (i,), part in predictions.with_columns(shard.alias("_s")).group_by("_s", maintain_order=True):
        part.drop("_s").write_parquet(out / "predictions" / f"part-{i:05d}.parquet")
    if not coco:
        return
    gt = {
        "images": [{"id": int(i)} for i in images["image_id"]],
        "categories": [{"id": int(c)} for c in range(int(annotations["category_id"].max()) + 1)],
        "annotations": [
            {"id": r[0], "image_id": r[1], "category_id": r[2], "bbox": [r[3], r[4], r[5] - r[3], r[6] - r[4]],
             "area": r[7], "iscrowd": int(r[8])}
            for r in annotations.iter_rows()
        ],
    }  # fmt: skip
    dets = [
        {"image_id": r[0], "category_id": r[1], "score": r[2], "bbox": [r[3], r[4], r[5] - r[3], r[6] - r[4]]}
        for r in predictions.iter_rows()
    ]
    (out / "gt.json").write_text(json.dumps(gt))
    (out / "dt.json").write_text(json.dumps(dets))


# ----------------------------------------------------------------------------- one tool per process


class PeakRSS:
    """Peak resident set size above the level at start, sampled from /proc/self/statm."""

    def __init__(self, every: float = 0.002):
        self.every = every
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def run_tool(tool: str, data: Path) -> dict:
    """Evaluate with ``tool`` in this process; the timed part starts from in-memory inputs."""
    if tool in ("pycocotools", "faster-coco-eval"):
        gt, dt = json.loads((data / "gt.json").read_text()), json.loads((data / "dt.json").read_text())
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), _cpu()
            stats = _reference(tool, gt, dt)
            seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        return {"tool": tool, "seconds": seconds, "cpu_s": cpu, "peak_mib": mem.mib, "stats": stats}

    from cvcore.metrics.detection import evaluate_detections

    if tool == "cvcore":
        images = pl.read_parquet(data / "images.parquet")
        annotations = pl.read_parquet(data / "annotations.parquet")
        predictions = pl.read_parquet(data / "predictions" / "*.parquet")
    elif tool == "cvcore-parquet":  # lazily, straight from the shards
        images = pl.scan_parquet(data / "images.parquet")
        annotations = pl.scan_parquet(data / "annotations.parquet")
        predictions = pl.scan_parquet(data / "predictions" / "*.parquet")
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), _cpu()
        report = evaluate_detections(annotations, predictions, images=images, protocol="coco")
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    stats = [-1.0 if np.isnan(v) else v for v in (report.summary[k] for k in SUMMARY_KEYS)]
    return {"tool": tool, "seconds": seconds, "cpu_s": cpu, "peak_mib": mem.mib, "stats": stats}


def _cpu() -> float:
    """CPU seconds of this process, all threads (polars is multi-threaded; the references are not)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reference(tool: str, gt: dict, dt: list) -> list[float]:
    if tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt)
        ev = Eval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats[:12]]


def spawn(tool: str, data: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--child", tool, "--data", str(data)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--dets-per-image", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per tool, pycocotools once (best time, max memory reported)"
    )
    ap.add_argument("--large", type=int, default=0, help="also run ours from Parquet at this many images")
    ap.add_argument("--skip-pycocotools", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_tool(args.child, args.data)))
        return

    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cpus | python {platform.python_version()} | polars {pl.__version__} | numpy {np.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="map_speed_") as tmp:
        data = Path(tmp) / "small"
        images, annotations, predictions = make_set(args.images, n_categories=args.categories,
                                                    dets_per_image=args.dets_per_image, seed=args.seed)  # fmt: skip
        print(f"set: {images.height} images, {args.categories} categories, {annotations.height} ground truth, "
              f"{predictions.height} detections")  # fmt: skip
        write_set(data, images, annotations, predictions, coco=True)
        tools = ["cvcore", "cvcore-parquet", "faster-coco-eval"] + ([] if args.skip_pycocotools else ["pycocotools"])
        results = {}
        for tool in tools:
            repeat = 1 if tool == "pycocotools" else args.repeat  # minutes per run; noise is small beside it
            runs = [spawn(tool, data) for _ in range(repeat)]
            results[tool] = {
                "seconds": min(r["seconds"] for r in runs),
                "cpu_s": min(r["cpu_s"] for r in runs),
                "peak_mib": max(r["peak_mib"] for r in runs),
                "stats": runs[0]["stats"],
            }
        ref = results.get("pycocotools", results["faster-coco-eval"])
        print(f"\n{'tool':<18}{'wall s':>10}{'cpu s':>10}{'peak MiB':>10}{'max |Δ| vs ref':>16}")
        for tool, r in results.items():
            diff = max(abs(a - b) for a, b in zip(r["stats"], ref["stats"]))
            print(f"{tool:<18}{r['seconds']:>10.3f}{r['cpu_s']:>10.3f}{r['peak_mib']:>10.1f}{diff:>16.2e}")
        ours = results["cvcore"]["seconds"]
        for tool in ("pycocotools", "faster-coco-eval"):
            if tool in results:
                print(f"cvcore is {results[tool]['seconds'] / ours:.1f}x faster than {tool}")
        print("numbers (ours): " + ", ".join(f"{k}={v:.4f}" for k, v in zip(SUMMARY_KEYS, results["cvcore"]["stats"])))

        if args.large:
            big = Path(tmp) / "large"
            frames = make_set(
                args.large, n_categories=args.categories, dets_per_image=args.dets_per_image, seed=args.seed
            )
            write_set(big, *frames, coco=False)
            r = spawn("cvcore-parquet", big)
            print(f"\nlarge: {args.large} images, {frames[1].height} ground truth, {frames[2].height} detections "
                  f"from Parquet shards: {r['seconds']:.2f} s wall, {r['cpu_s']:.2f} s cpu, peak {r['peak_mib']:.0f} MiB")  # fmt: skip
            del frames


if __name__ == "__main__":
    main()
