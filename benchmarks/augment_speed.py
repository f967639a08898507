"""Augmentation throughput against training throughput, detection at the demo's image size.

Measures images/s of the train data path, decoding included, over one epoch of a DataLoader
(batch 16, collate_detection, shuffled), exactly as cvcore.engine.data builds it:

  default            preset "default", per-sample seeded (SeededDataset), no Mosaic
  default + Mosaic   the same with Mosaic at p=1 (every sample decodes four images: the worst case)

each in process (num_workers=0) and with 2 workers (started afresh each epoch, as the engine
does, so their start-up is included). It compares them with YOLOv1's training throughput
(forward + backward + AdamW step, batch 16 at 128 px, all cores) on batches the pipeline made.
Rounds alternate between the variants so that load from other processes hits all alike; the
median over rounds is reported.

    .venv/bin/python benchmarks/augment_speed.py
    .venv/bin/python benchmarks/augment_speed.py --rounds 5 --n-train 512 --json out.json

Results and the machine they ran on go in benchmarks/RESULTS.md (section "Augmentation").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from cvcore.augment.mosaic import MosaicDataset  # noqa: E402
from cvcore.augment.pipelines import build_transforms  # noqa: E402
from cvcore.augment.seeding import SeededDataset  # noqa: E402
from cvcore.config import AugmentConfig  # noqa: E402
from cvcore.data.synthetic import make_shapes_detection  # noqa: E402
from cvcore.data.torch_dataset import DetectionDataset, collate_detection  # noqa: E402
from cvcore.models import build_model  # noqa: E402


def data_path(snapshot, *, img_size: int, mosaic: bool):
    """The seeded train dataset the engine builds for preset "default" (Mosaic p=1 or none)."""
    config = AugmentConfig(preset="default", mosaic_p=1.0 if mosaic else 0.0)
    base = DetectionDataset(
        snapshot, "train", build_transforms(config, task="detection", img_size=img_size, train=True)
    )
    return (
        MosaicDataset.from_config(base, config, img_size=img_size) if mosaic else SeededDataset(base, seed=config.seed)
    )


def epoch_rate(dataset, *, workers: int, batch_size: int, epoch: int) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process) of one epoch through a fresh DataLoader.

    Worker start-up is included. The CPU time only counts this process, so it is the cost per
    image for ``workers=0`` (steadier than wall time on a busy machine) and not meaningful else.
    """
    dataset.set_epoch(epoch)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(epoch),
    )
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def train_rate(batches, *, img_size: int, num_classes: int, steps: int) -> tuple[float, float]:
    """YOLOv1 training (images/s, CPU ms per image), forward + backward + AdamW, ready-made batches."""
    torch.manual_seed(0)
    model = build_model("yolov1", num_classes=num_classes, img_size=img_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(images, targets):
        loss = sum(model(torch.stack(images), targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*batches[0])  # warm-up (allocator, first-call paths)
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for i in range(steps):
        images, targets = batches[i % len(batches)]
        step(images, targets)
        n += len(images)
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        snapshot = make_shapes_detection(Path(tmp) / "shapes", n_train=args.n_train, n_val=4, image_size=args.img_size)
        variants = {
            ("default", 0): data_path(snapshot, img_size=args.img_size, mosaic=False),
            ("default", 2): data_path(snapshot, img_size=args.img_size, mosaic=False),
            ("default + Mosaic", 0): data_path(snapshot, img_size=args.img_size, mosaic=True),
            ("default + Mosaic", 2): data_path(snapshot, img_size=args.img_size, mosaic=True),
        }
        rates: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in variants}
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            for key, ds in variants.items():
                rates[key].append(epoch_rate(ds, workers=key[1], batch_size=args.batch_size, epoch=r))
        mosaic = variants[("default + Mosaic", 0)]
        batches = [
            collate_detection([mosaic[i + b * args.batch_size] for i in range(args.batch_size)]) for b in range(2)
        ]
        train = [
            train_rate(batches, img_size=args.img_size, num_classes=snapshot.num_classes, steps=args.train_steps)
            for _ in range(args.rounds)
        ]

    def med(values, i):
        return round(statistics.median(v[i] for v in values), 1)

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_at_start": round(load, 2),
        "n_train": args.n_train,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "pipeline_images_per_s": {f"{name}, {w} workers": med(v, 0) for (name, w), v in rates.items()},
        "pipeline_cpu_ms_per_image": {f"{name}, {w} workers": med(v, 1) for (name, w), v in rates.items() if w == 0},
        "pipeline_images_per_s_all": {
            f"{name}, {w} workers": [round(x[0], 1) for x in v] for (name, w), v in rates.items()
        },
        "yolov1_train_images_per_s": med(train, 0),
        "yolov1_train_cpu_ms_per_image": med(train, 1),
        "yolov1_train_images_per_s_all": [round(x[0], 1) for x in train],
    }
    slowest = min(result["pipeline_images_per_s"].values())
    result["slowest_pipeline_over_training"] = round(slowest / result["yolov1_train_images_per_s"], 1)
    print(json.dumps(result, indent=2))
    print("\n| data path | workers | images/s, median (rounds) | CPU ms / image |\n|---|---:|---:|---:|")
    for (name, w), v in rates.items():
        cpu = f"{med(v, 1):.1f}" if w == 0 else ""
        print(f"| {name} | {w} | {med(v, 0):,.1f} ({', '.join(f'{x[0]:,.0f}' for x in v)}) | {cpu} |")
    print(
        f"| YOLOv1 training step (fwd+bwd+AdamW, batch {args.batch_size}) | - | {med(train, 0):,.1f} "
        f"({', '.join(f'{x[0]:,.1f}' for x in train)}) | {med(train, 1):,.0f} |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
