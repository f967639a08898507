"""Region-proposal speed and recall per image (issue 5): selective search fast/quality, sliding windows.

    .venv/bin/python benchmarks/proposals_speed.py [--sizes 128:40,512:10] [--threads 1] [--json PATH]

For each image size (``SIZE:N`` = N images of SIZE x SIZE px), generates the built-in shapes
detection data at that size (objects scale with the image), then per method measures the wall
time per image (median and mean over the N images, one call each, after one warm-up call; CPU
time too, steadier on a shared machine), the proposals per image and the proposal recall at
IoU 0.5 / 0.7 against the ground truth. Selective search is OpenCV's (opencv-contrib ximgproc),
capped at 2,000 proposals as in the notes; ``--threads`` sets OpenCV's and torch's thread count
(1 = one core, the fair per-image cost).

Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvcore.data.synthetic import make_shapes_detection  # noqa: E402
from cvcore.data.torch_dataset import DetectionDataset  # noqa: E402
from cvcore.models.proposals import ProposalSettings, proposal_recall  # noqa: E402

METHODS = {
    "selective search fast": ProposalSettings(method="selective_search", strategy="fast"),
    "selective search quality": ProposalSettings(method="selective_search", strategy="quality"),
    "sliding windows (3 sizes x 3 ratios, stride 8)": ProposalSettings(method="sliding_windows"),
}


def measure(size: int, n_images: int, workdir: Path) -> list[dict]:
    snapshot = make_shapes_detection(
        workdir / f"shapes{size}", n_train=0, n_val=n_images, image_size=size,
        min_size=max(4, size * 10 // 128), max_size=size * 56 // 128, seed=1,
    )  # fmt: skip
    ds = DetectionDataset(snapshot, "val")
    samples = [ds.raw(i) for i in range(len(ds))]
    images = [s[0] for s in samples]
    gt = [s[1]["boxes"].as_subclass(torch.Tensor) for s in samples]
    rows = []
    for name, settings in METHODS.items():
        if settings.method == "sliding_windows":
            scale = size / 128  # windows scale with the image, like the objects
            settings = ProposalSettings(
                method="sliding_windows", window_sizes=tuple(s * scale for s in settings.window_sizes),
                stride=max(1, round(settings.stride * scale)),
            )  # fmt: skip
        settings.propose(images[0])  # warm-up (library initialisation)
        times, cpu, props = [], [], []
        for image in images:
            t, c = time.perf_counter(), time.process_time()
            props.append(settings.propose(image))
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rec = proposal_recall(props, gt, iou=(0.5, 0.7))
        rows.append(
            {
                "image_px": size, "method": name, "images": len(images),
                "ms_per_image_median": 1000 * statistics.median(times), "ms_per_image_mean": 1000 * statistics.fmean(times),
                "cpu_ms_per_image_median": 1000 * statistics.median(cpu),
                "proposals_per_image": rec.proposals_per_image, "recall_50": rec.recall[0.5], "recall_70": rec.recall[0.7],
                "objects": rec.num_gt,
            }
        )  # fmt: skip
        print(f"  {size}px {name}: {rows[-1]['ms_per_image_median']:.1f} ms/image", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128:40,512:10", help="comma-separated SIZE:N (N images of SIZE x SIZE px)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [
            tuple(int(v) for v in item.split(":")) if ":" in item else (int(item), 40) for item in args.sizes.split(",")
        ]
        rows = [r for size, n in sizes for r in measure(size, n, Path(tmp))]
    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {args.threads} thread(s), OpenCV {cv2.__version__}\n"
    )
    print(
        "| image | method | wall ms/image (median) | wall ms/image (mean) | CPU ms/image (median) | proposals/image | recall@0.5 | recall@0.7 |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['image_px']} px | {r['method']} | {r['ms_per_image_median']:.1f} | {r['ms_per_image_mean']:.1f} | {r['cpu_ms_per_image_median']:.1f} | "
            f"{r['proposals_per_image']:.0f} | {r['recall_50']:.3f} | {r['recall_70']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
