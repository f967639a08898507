"""Evaluation at scale: the pipeline's evaluate step over 5,000 / 20,000 / 50,000 images of shards.

For each size, a seeded detection snapshot (tables only: the evaluate step never reads pixels)
and a synthetic prediction set are written the way ``evaluate_pipeline`` writes them: one
Parquet shard per 1,000 images through ``cvcore.engine.shards.write_shard`` (streamed, with
the shard key in the footer). Then a fresh Python process runs the evaluate step as the
pipeline runs it — ``tasks.evaluate.score_split`` over ``read_predictions`` (``pl.scan_parquet``
of the shard files: COCO mAP, per-class tables, PR/F1 curves and the error breakdown) and the
tables written as Parquet — minus the MLflow upload. Each process's wall time, CPU time (from
``os.wait4`` on that child alone) and peak resident memory (its VmHWM) are recorded, and a
process that only imports the same modules gives the baseline memory.

    .venv/bin/python benchmarks/eval_scale.py                       # 5k, 20k, 50k images
    .venv/bin/python benchmarks/eval_scale.py --sizes 1000 2000     # a quick smoke run
    .venv/bin/python benchmarks/eval_scale.py --json out.json

The set: 640 x 480 images, 20 classes (skewed frequencies), Poisson(7) ground-truth boxes per
image (1 % crowd), each found with probability 0.8 as a jittered box with a high-ish score,
plus Poisson(15) false positives per image with low-ish scores (about 21 detections per image;
``--false-positives 95`` gives about 100, COCO's cap).
Results go in benchmarks/RESULTS.md (section "Evaluation at scale").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGES_PER_SHARD = 1000
W, H, K = 640, 480, 20


def make_set(out: Path, n_images: int, *, false_positives: float = 15.0, seed: int = 0) -> dict:
    """Write a snapshot and a sharded prediction set of ``n_images``; return where they are."""
    from cvcore.data.snapshot import write_snapshot
    from cvcore.engine.shards import ShardKey, write_shard

    rng = np.random.default_rng(seed)
    image_ids = np.arange(1, n_images + 1, dtype=np.int64)
    images = pl.DataFrame(
        {
            "image_id": image_ids,
            "file_name": [f"{i:08d}.jpg" for i in image_ids],
            "width": W,
            "height": H,
            "split": "test",
            "sha256": "",
        },
        schema={
            "image_id": pl.Int64,
            "file_name": pl.String,
            "width": pl.Int32,
            "height": pl.Int32,
            "split": pl.String,
            "sha256": pl.String,
        },
    )
    categories = pl.DataFrame(
        {
            "category_id": np.arange(K, dtype=np.int32),
            "name": [f"class{k}" for k in range(K)],
            "source_id": np.arange(K, dtype=np.int64),
        }
    )
    freq = 1.0 / np.arange(1, K + 1)  # skewed class frequencies, as in real data
    n_gt = rng.poisson(7, n_images)
    gt_image = np.repeat(image_ids, n_gt)
    gt_cat = rng.choice(K, size=gt_image.size, p=freq / freq.sum()).astype(np.int32)
    gt_boxes = _boxes(rng, gt_image.size)
    annotations = pl.DataFrame(
        {
            "ann_id": np.arange(gt_image.size, dtype=np.int64), "image_id": gt_image, "category_id": gt_cat,
            "x1": gt_boxes[:, 0], "y1": gt_boxes[:, 1], "x2": gt_boxes[:, 2], "y2": gt_boxes[:, 3],
            "area": (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]) * rng.uniform(0.55, 0.95, gt_image.size),
            "iscrowd": rng.random(gt_image.size) < 0.01, "difficult": np.zeros(gt_image.size, dtype=bool),
        }
    )  # fmt: skip
    snap = write_snapshot(
        out / "snapshot", name=f"scale-{n_images}", task="detection", source_format="synthetic", image_root="images",
        images=images, categories=categories, annotations=annotations,
    )  # fmt: skip

    found = rng.random(gt_image.size) < 0.8
    tp_boxes = _jitter(rng, gt_boxes[found])
    n_fp = rng.poisson(false_positives, n_images)
    preds = pl.DataFrame(
        {
            "image_id": np.concatenate([gt_image[found], np.repeat(image_ids, n_fp)]),
            "category_id": np.concatenate([gt_cat[found], rng.integers(0, K, n_fp.sum()).astype(np.int32)]),
            "score": np.round(np.concatenate([rng.beta(5, 2, found.sum()), rng.beta(2, 5, n_fp.sum())]), 4),
            **dict(zip(("x1", "y1", "x2", "y2"), np.concatenate([tp_boxes, _boxes(rng, n_fp.sum())]).T)),
        }
    ).sort("image_id")
    num_shards = max(1, n_images // IMAGES_PER_SHARD)
    files = []
    for shard in range(num_shards):  # shards are contiguous image ranges, as shard_indices makes them
        lo, hi = image_ids[shard * n_images // num_shards], image_ids[(shard + 1) * n_images // num_shards - 1]
        part = preds.filter(pl.col("image_id").is_between(lo, hi)).to_arrow()
        key = ShardKey(
            checkpoint_sha256="0" * 64,
            snapshot_digest=snap.digest,
            split="test",
            shard=shard,
            num_shards=num_shards,
            task="detection",
        )
        files.append(
            write_shard(
                part.to_batches(max_chunksize=4096), out / "predictions", key=key, num_images=int(hi - lo + 1)
            ).uri
        )
    return {
        "snapshot": str(snap.path),
        "files": files,
        "n_gt": int(gt_image.size),
        "n_pred": preds.height,
        "shards": num_shards,
    }


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random boxes, xyxy pixels inside a W x H image, sides 8-300 px."""
    wh = rng.uniform(8, 300, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([W, H]) - wh).clip(min=0)
    return np.concatenate([xy, xy + wh], axis=1).clip(0, [W, H, W, H])


def _jitter(rng: np.random.Generator, boxes: np.ndarray) -> np.ndarray:
    size = np.repeat(boxes[:, 2:] - boxes[:, :2], 2, axis=0).reshape(-1, 4)
    out = boxes + rng.normal(0, 0.08, boxes.shape) * size
    return np.sort(out.reshape(-1, 2, 2), axis=1).reshape(-1, 4).clip(0, [W, H, W, H])


def evaluate_step(data: dict, out: Path) -> dict:
    """The pipeline's evaluate step (tasks.evaluate) on the shards; run inside the measured child."""
    from tasks.evaluate import read_predictions, score_split, write_table
    from tasks.refs import PredictionsRef

    ref = PredictionsRef(
        dir=str(Path(data["files"][0]).parent),
        split="test",
        task="detection",
        num_images=0,
        num_rows=0,
        files=tuple(data["files"]),
    )
    scores = score_split(Path(data["snapshot"]), read_predictions(ref), split="test", protocol="coco")
    for name, table in scores.tables.items():
        write_table(table, out / f"{name}.parquet")
    return {"map": scores.metrics["map"], "map_50": scores.metrics["map_50"]}


def _child(data_json: str, out: str) -> None:
    data = json.loads(data_json)
    if data.get("imports_only"):
        import tasks.evaluate  # noqa: F401  the same modules as the measured runs, no work

        result = {}
    else:
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate_step(data, Path(out))
        result |= {"step_wall_s": time.perf_counter() - wall, "step_cpu_s": time.process_time() - cpu}
    print(json.dumps({"result": result, "peak_mib": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB.

    Not ``ru_maxrss``: Linux carries it over from before ``exec``, so a child forked from a
    big parent would report the parent's size. VmHWM belongs to the new address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark measures memory on Linux)")


def measure(data: dict, out: Path) -> dict:
    """Run the evaluate step in a fresh process: wall s, CPU s (user+sys, from os.wait4), peak RSS MiB, result."""
    cmd = [sys.executable, __file__, "--child", json.dumps(data), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU times (not all children's)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"evaluate step failed for {data.get('snapshot')} (exit {proc.returncode})")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, **json.loads(stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--false-positives", type=float, default=15.0, help="mean false detections per image (Poisson)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="eval-scale-") as tmp:
        base = measure({"imports_only": True}, Path(tmp))
        print(f"imports only: {base['wall_s']:.1f} s wall, peak {base['peak_mib']:.0f} MiB", flush=True)
        for n in args.sizes:
            folder = Path(tmp) / str(n)
            t0 = time.perf_counter()
            data = make_set(folder, n, false_positives=args.false_positives)
            made = time.perf_counter() - t0
            m = measure(data, folder / "eval")
            rows.append(
                {
                    "images": n,
                    "ground_truth": data["n_gt"],
                    "detections": data["n_pred"],
                    "shards": data["shards"],
                    "setup_s": made,
                    **m,
                }
            )
            step = m["result"]
            print(
                f"{n:>7,} images {data['n_gt']:>9,} gt {data['n_pred']:>10,} dets {data['shards']:>3} shards: process "
                f"{m['wall_s']:6.1f} s wall {m['cpu_s']:6.1f} CPU-s peak {m['peak_mib']:6.0f} MiB; evaluate step "
                f"{step['step_wall_s']:6.1f} s wall {step['step_cpu_s']:6.1f} CPU-s; map {step['map']:.4f}",
                flush=True,
            )
    first = rows[0]
    for r in rows[1:]:
        print(
            f"{r['images']:,} vs {first['images']:,} images (x{r['images'] / first['images']:.0f}): evaluate-step CPU "
            f"x{r['result']['step_cpu_s'] / first['result']['step_cpu_s']:.1f}, wall x{r['result']['step_wall_s'] / first['result']['step_wall_s']:.1f}, "
            f"memory above imports x{(r['peak_mib'] - base['peak_mib']) / max(first['peak_mib'] - base['peak_mib'], 1):.1f}"
        )
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "polars": pl.__version__,
    }
    print(json.dumps(machine))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "imports_only": base, "rows": rows}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
