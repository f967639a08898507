"""Ingestion throughput on a generated COCO-style dataset (issue 2's benchmark).

    .venv/bin/python benchmarks/ingest.py [--images 20000] [--per-image 5] [--workdir DIR]

Writes ``--images`` tiny JPEGs (each with different pixels, so every sha256 differs) and COCO
``instances_train.json`` / ``instances_val.json`` with ``--per-image`` boxes each (0.2 % of
them faulty, so quarantine is exercised), then measures, each phase on its own:

- parse: the COCO reader alone (JSON -> canonical frames);
- parse + validate: reader, image-entry checks and box checks (the "never the bottleneck"
  target: >= 50,000 annotations/s), with the image sizes from the header phase;
- header reads: probe_images with 1 thread and with the default pool (parallel);
- end to end: ``ingest()`` in a fresh process, whose peak RSS is the memory figure (a process
  that only imports cvcore is measured too, as the baseline).

Each phase runs ``--repeat`` times (default 3); the median and the best run are reported.

Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvcore.data import validate  # noqa: E402
from cvcore.data.formats import read_coco  # noqa: E402
from cvcore.data.probe import probe_images  # noqa: E402

# Peak memory is read from /proc/self/status (VmHWM): unlike ru_maxrss it starts afresh at exec,
# so the benchmark process's own memory does not leak into the child's figure.
_HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from cvcore.data.ingest import ingest
t, c = time.perf_counter(), time.process_time()
r = ingest({src!r}, fmt="coco", out={out!r}, replace=True)
seconds, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({{"seconds": seconds, "cpu": cpu, "images": r.snapshot.images.height, "annotations": r.snapshot.annotations.height,
                  "quarantined": r.snapshot.quarantine.height,
                  "peak_rss_mib": {hwm}}}))
"""
_BASELINE = "import sys; sys.path.insert(0, {root!r}); import cvcore.data.ingest; print({hwm})"


def generate(root: Path, *, n_images: int, per_image: int, seed: int = 0) -> int:
    """Write the dataset under ``root``; returns the number of annotations."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    docs = {
        s: {"images": [], "annotations": [], "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)]}
        for s in ("train", "val")
    }
    ann_id = 0
    for i in range(1, n_images + 1):
        split = "val" if i % 10 == 0 else "train"
        folder = root / "images" / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = base.copy()
        pixels[0, :4, 0] = np.frombuffer(i.to_bytes(4, "little"), dtype=np.uint8)  # distinct bytes per image
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
        name = f"{i:012d}.jpg"
        (folder / name).write_bytes(buf.getvalue())
        docs[split]["images"].append({"id": i, "file_name": name, "width": 32, "height": 24})
        for _ in range(per_image):
            ann_id += 1
            x, y = float(rng.uniform(0, 24)), float(rng.uniform(0, 16))
            w, h = float(rng.uniform(1, 8)), float(rng.uniform(1, 8))
            if ann_id % 500 == 0:
                w = -w  # a broken box now and then
            docs[split]["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": int(rng.integers(1, 81)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    for split, doc in docs.items():
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return ann_id


def _timed(fn, repeat: int):
    """((median wall, best wall, median CPU) seconds over ``repeat`` calls, last result).

    On a shared machine wall time includes waiting for a core; CPU time (this process, all
    threads) does not, so it is reported beside it.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        result = None  # let the previous result go before the next run
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return (statistics.median(walls), min(walls), statistics.median(cpus)), result


def measure(src: Path, work: Path, *, repeat: int) -> dict:
    out: dict = {"repeat": repeat, "load_average": os.getloadavg()[0]}
    out["parse_s"], raw = _timed(lambda: read_coco(src), repeat)
    n_obj = validate.objects_per_image(raw.annotations, None)
    names = raw.images.get_column("file_name").to_list()
    out["images"] = len(names)
    out["annotations_parsed"] = raw.annotations.height + raw.quarantine.height

    out["headers_1_thread_s"], _ = _timed(lambda: probe_images(raw.image_root, names, workers=1), repeat)
    out["headers_pool_s"], headers = _timed(lambda: probe_images(raw.image_root, names), repeat)
    out["header_workers"] = min(32, 4 * (os.cpu_count() or 1))

    def parse_and_validate():
        raw = read_coco(src)
        entries = validate.check_image_entries(raw.images, n_objects=n_obj, unit="annotation")
        images = validate.apply_headers(
            entries.table, headers, image_root=raw.image_root, n_objects=n_obj, unit="annotation"
        )
        return validate.check_annotations(raw.annotations, images.table)

    out["parse_validate_s"], checked = _timed(parse_and_validate, repeat)
    out["annotations_kept"] = checked.table.height

    root = str(Path(__file__).resolve().parents[1])
    runs = []
    for _ in range(repeat):
        code = _CHILD.format(root=root, src=str(src), out=str(work / "snapshot"), hwm=_HWM)
        runs.append(
            json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
        )
    seconds = [r["seconds"] for r in runs]
    out["end_to_end_s"] = (statistics.median(seconds), min(seconds), statistics.median(r["cpu"] for r in runs))
    out["quarantined"] = runs[-1]["quarantined"]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    base = subprocess.run(
        [sys.executable, "-c", _BASELINE.format(root=root, hwm=_HWM)], check=True, capture_output=True, text=True
    )
    out["import_rss_mib"] = float(base.stdout)
    return out


def report(r: dict, *, n_annotations: int) -> str:
    n_img = r["images"]
    rows = [
        ("parse (COCO JSON -> frames)", r["parse_s"], True),
        ("parse + validate (no header reads)", r["parse_validate_s"], True),
        ("header reads, 1 thread", r["headers_1_thread_s"], False),
        (f"header reads, {r['header_workers']} threads", r["headers_pool_s"], False),
        ("end to end ingest() (incl. sha256, write)", r["end_to_end_s"], True),
    ]
    lines = [
        "| phase | wall s, median (best) | CPU s | images/s, median (best) | annotations/s, median (best) | annotations per CPU-s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (med, best, cpu), per_ann in rows:
        anns = (
            f"{n_annotations / med:,.0f} ({n_annotations / best:,.0f}) | {n_annotations / cpu:,.0f}"
            if per_ann
            else " | "
        )
        lines.append(
            f"| {name} | {med:.2f} ({best:.2f}) | {cpu:.2f} | {n_img / med:,.0f} ({n_img / best:,.0f}) | {anns} |"
        )
    lines.append("")
    lines.append(
        f"{n_img:,} images, {n_annotations:,} annotations ({r['quarantined']} quarantined); {r['repeat']} runs per phase; "
        f"load average at start {r['load_average']:.1f} on {os.cpu_count()} CPUs. "
        f"Peak RSS of the ingest process: {r['peak_rss_mib']:.0f} MiB (a process that only imports cvcore.data.ingest: {r['import_rss_mib']:.0f} MiB)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase; median and best are reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        n_ann = generate(work / "coco", n_images=args.images, per_image=args.per_image)
        print(
            f"generated {args.images:,} images / {n_ann:,} annotations in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        # Flush the generator's writes first, so the first phase measured does not pay for
        # their write-back (it did: parse ran ~3x slower right after generation).
        os.sync()
        result = measure(work / "coco", work, repeat=args.repeat)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(report(result, n_annotations=n_ann))
    print(
        f"\n{result['machine']}; this process's peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
