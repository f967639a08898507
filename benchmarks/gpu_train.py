"""Training throughput of the engine against a bare PyTorch loop, on 1 and N devices (GPUs or CPU processes).

For each model and each device count N, N processes are launched through torchrun's launcher
(cvcore.engine.distributed.launch; N = 1 runs in this process) and train on the same synthetic
in-memory images (so the data pipeline is not what is measured: benchmarks/augment_speed.py is),
with the global batch split over the N devices. In alternating rounds (bare, engine, bare,
engine, ... after one warm-up round of each) each process runs:

  bare    the plain PyTorch loop, DistributedDataParallel when N > 1: for x, y in loader: copy to
          the device; autocast forward + loss; zero_grad; backward; step
  engine  cvcore.engine.train.train_one_epoch, the loop ``fit`` runs (AMP + GradScaler, the NaN
          check on the ranks' mean loss, gradient clipping, per-step LR schedule, loss sums
          reduced over the ranks), with the engine's model preparation: channels-last for
          classifiers on CUDA, cudnn.benchmark, DDP (cvcore.engine.distributed)

Both get the same memory layout and autocast, so engine / bare is the engine's own overhead;
images/s are global (all devices) over the median round; scaling efficiency is
images/s(N) / (N x images/s(1)); GPU memory is the largest peak allocated on any device; CPU
ms / img is the CPU time of all processes (every round, both modes) per image trained, the
figure that survives a busy machine.

    .venv/bin/python benchmarks/gpu_train.py                              # CPU: 1 vs 2 gloo processes, small models
    .venv/bin/python benchmarks/gpu_train.py --device cuda --devices 1,2  # GPU: ResNet-50 224 px + detectors at default sizes
    .venv/bin/python benchmarks/gpu_train.py --device cuda --models resnet50:224 --batch-size 256 --devices 1,8

Results and the machine they ran on go in benchmarks/RESULTS.md (section "Data-parallel training").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

from cvcore.config import PartialRunConfig, resolve  # noqa: E402
from cvcore.data.torch_dataset import collate_classification, collate_detection  # noqa: E402
from cvcore.engine.device import choose_precision, configure_threads, make_scaler, resolve_device  # noqa: E402
from cvcore.engine.distributed import Dist, launch, prepare_model, run_rank, single_process, wrap_ddp  # noqa: E402
from cvcore.engine.infer import as_float_image  # noqa: E402
from cvcore.engine.schedule import build_optimizer, build_scheduler  # noqa: E402
from cvcore.engine.train import compute_loss, train_one_epoch  # noqa: E402
from cvcore.models import build_model, model_spec, param_groups  # noqa: E402

GPU_MODELS = "resnet50:224,yolov1,fcos,faster_rcnn"  # no size: the model's default img_size
CPU_MODELS = "resnet18:64,yolov1:96"
NUM_CLASSES = 10


class SyntheticImages(Dataset):
    """``n`` samples cycling over 32 fixed random images of ``size`` px: uint8[3, size, size] with a
    class index (classification) or 1-3 boxes (detection, xyxy px, labels 0..K-1)."""

    def __init__(self, n: int, *, task: str, size: int, num_classes: int = NUM_CLASSES):
        g = torch.Generator().manual_seed(0)
        self.n, self.task = n, task
        self.images = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8, generator=g)
        self.targets = []
        for i in range(32):
            k = 1 + i % 3
            xy = torch.rand(k, 2, generator=g) * size * 0.6
            wh = (0.15 + torch.rand(k, 2, generator=g) * 0.25) * size
            boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
            self.targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (k,), generator=g)})

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        j = i % 32
        if self.task == "classification":
            return self.images[j], j % NUM_CLASSES
        return self.images[j], self.targets[j]


def measure(spec: dict[str, Any], d: Dist) -> dict[str, Any] | None:
    """One process's rounds; rank 0 returns the global figures."""
    configure_threads()
    name, task = spec["model"], model_spec(spec["model"]).task
    user: dict[str, Any] = {
        "model": {"name": name},
        "train": {"batch_size": spec["batch_size"], "device": spec["device"]},
    }
    if spec["size"]:
        user["data"] = {"img_size": spec["size"]}
    config = resolve(PartialRunConfig.model_validate(user), model_spec(name).defaults)
    size, tc = config.data.img_size, config.train
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, img_size=size, **config.model.options)
    device = d.device
    per_device = tc.batch_size // d.world_size
    dataset = SyntheticImages(per_device * d.world_size * spec["steps"], task=task, size=size)
    sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=0, drop_last=True)
    cuda = device.type == "cuda"
    loader = DataLoader(
        dataset, batch_size=per_device, sampler=sampler, drop_last=True, num_workers=spec["workers"], pin_memory=cuda,
        persistent_workers=spec["workers"] > 0, collate_fn=collate_classification if task == "classification" else collate_detection,
    )  # fmt: skip
    channels_last = cuda and task == "classification" and tc.channels_last
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    model = prepare_model(model, d, sync_bn=False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = wrap_ddp(model, d)
    optimizer = build_optimizer(param_groups(model, lr=tc.lr, weight_decay=tc.weight_decay), tc)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch=len(loader))
    precision = choose_precision(device, amp=tc.amp)
    scaler = make_scaler(device, precision)
    rounds: dict[str, list[float]] = {"bare": [], "engine": []}
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for r in range(spec["rounds"] + 1):  # round 0 warms up (cudnn.benchmark, allocator, workers)
        for mode in ("bare", "engine"):
            sampler.set_epoch(r)
            if mode == "bare":
                ips = _bare_epoch(
                    net,
                    loader,
                    optimizer,
                    task=task,
                    device=device,
                    precision=precision,
                    channels_last=channels_last,
                    d=d,
                )
            else:
                out = train_one_epoch(
                    net, loader, task=task, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=None, device=device,
                    precision=precision, grad_clip=tc.grad_clip, epoch=r + 1, dist=d, channels_last=channels_last,
                )  # fmt: skip
                ips = out["train/images_per_s"]
            if r > 0:
                rounds[mode].append(ips)
    cpu = d.sum({"cpu": time.process_time() - cpu_start})["cpu"]
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    memories = d.gather(memory)
    if not d.is_main:
        return None
    return {
        "model": name, "task": task, "img_size": size, "devices": d.world_size, "batch": tc.batch_size, "per_device": per_device,
        "bare_ips": statistics.median(rounds["bare"]), "engine_ips": statistics.median(rounds["engine"]),
        "bare_rounds": rounds["bare"], "engine_rounds": rounds["engine"], "gpu_mem_gib": max(memories),
        "cpu_s": cpu, "wall_s": time.perf_counter() - wall_start, "images": 2 * (spec["rounds"] + 1) * len(loader) * tc.batch_size, "amp": str(precision.dtype).replace("torch.", "") if precision.dtype else "fp32",
    }  # fmt: skip


def _bare_epoch(
    net, loader, optimizer, *, task: str, device: torch.device, precision, channels_last: bool, d: Dist
) -> float:
    """The plain loop over one epoch; global images/s (this rank's wall time, GPU work finished)."""
    net.train()
    images_seen = 0
    start = time.perf_counter()
    for images, targets in loader:
        if task == "classification":
            x = as_float_image(images.to(device, non_blocking=True))
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            y = targets.to(device, non_blocking=True)
        else:
            x = [as_float_image(im.to(device, non_blocking=True)) for im in images]
            y = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with precision.autocast(device):
            loss, _ = compute_loss(net, x, y, task=task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return images_seen * d.world_size / max(elapsed, 1e-9)


def bench_rank(spec: dict[str, Any]) -> dict[str, Any] | None:
    """A launched rank (module level: spawned processes import it)."""
    return run_rank(lambda d: measure(spec, d), device=spec["device"], timeout_s=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--models", default=None, help=f"name[:img_size],... (default GPU {GPU_MODELS}; CPU {CPU_MODELS})"
    )
    parser.add_argument("--devices", default="1,2", help="device counts to compare, e.g. 1,2 or 1,8")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch (default: 64 classification / 16 detection on GPU; 32 / 8 on CPU)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per round (default 30 GPU, 6 CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per mode, after one warm-up round")
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers per process (default 4 GPU, 0 CPU)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (CVFLOW_NUM_THREADS; default: the CPUs shared out)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        os.environ["CVFLOW_NUM_THREADS"] = str(
            args.threads
        )  # read by configure_threads here and in every launched process
    cuda = resolve_device(args.device).type == "cuda"
    models = args.models or (GPU_MODELS if cuda else CPU_MODELS)
    counts = [int(n) for n in args.devices.split(",")]
    rows = []
    for item in models.split(","):
        name, _, size = item.partition(":")
        task = model_spec(name).task
        batch = args.batch_size or (
            (64 if task == "classification" else 16) if cuda else (32 if task == "classification" else 8)
        )
        spec = {
            "model": name, "size": int(size) if size else None, "batch_size": batch, "device": args.device,
            "steps": args.steps or (30 if cuda else 6), "rounds": args.rounds, "workers": args.workers if args.workers is not None else (4 if cuda else 0),
        }  # fmt: skip
        for n in counts:
            if n == 1:
                row = measure(spec, single_process(resolve_device(args.device)))
            else:
                row = launch(bench_rank, (spec,), nproc=n)[0]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_rounds")}), flush=True)
    print(_table(rows))
    print(f"\n{_machine(cuda)}")
    if args.json:
        from cvcore.io import atomic_write

        with atomic_write(args.json, "w") as fh:
            json.dump({"machine": _machine(cuda), "rows": rows}, fh, indent=2)


def _table(rows: list[dict[str, Any]]) -> str:
    base = {r["model"]: r for r in rows if r["devices"] == 1}
    lines = [
        "| model | px | devices | global batch | bare img/s | engine img/s | engine / bare | scaling eff. (engine) | GPU mem GiB | CPU ms / img | CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one = base.get(r["model"])
        eff = f"{r['engine_ips'] / (r['devices'] * one['engine_ips']):.2f}" if one else "—"
        lines.append(
            f"| {r['model']} | {r['img_size']} | {r['devices']} | {r['batch']} | {r['bare_ips']:.1f} | {r['engine_ips']:.1f} | "
            f"{r['engine_ips'] / r['bare_ips']:.2f} | {eff} | {r['gpu_mem_gib']:.2f} | {1000 * r['cpu_s'] / r['images']:.0f} | "
            f"{r['cpu_s']:.0f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def _machine(cuda: bool) -> str:
    if cuda:
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        where = f"{torch.cuda.device_count()} x {', '.join(names)}"
    else:
        where = f"CPU only, {os.cpu_count()} logical CPUs ({platform.processor() or platform.machine()})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{where}; torch {torch.__version__}; load average at the end {load:.1f}"


if __name__ == "__main__":
    main()
