"""Engine overhead: cvcore.engine's training and inference throughput against bare PyTorch loops.

Both sides get the same model, the same data and the same batch size, in one process, in
alternating rounds (bare, engine, bare, engine, ...) so that load from other processes hits both
alike; the ratio of median throughputs is reported (target >= 0.95 for both).

Training (images/s over one epoch, data loading included):
  bare    for x, y in loader: loss = cross_entropy(model(x), y); zero_grad; backward; step
  engine  cvcore.engine.train.train_one_epoch, the loop ``fit`` runs each epoch (autocast
          context, finite-loss check, gradient clipping, per-step LR schedule, callback dispatch)
with the same train DataLoader (make_loaders: default augmentation, shuffled, seeded) and the
same AdamW parameter groups. One full ``fit`` of two epochs follows, to show the end-to-end cost
of validation and the two checkpoint writes per epoch.

Inference (images/s for a whole split, Parquet file written):
  bare    for x in loader: softmax(model(x)) -> numpy; one pyarrow table; pq.write_table
  engine  write_predictions(predict(model, dataset, ...), path)  (streaming record batches)

    .venv/bin/python benchmarks/train_overhead.py                      # resnet18 defaults
    .venv/bin/python benchmarks/train_overhead.py --rounds 7 --n-train 512
    .venv/bin/python benchmarks/train_overhead.py --device cuda        # on a GPU machine

Results and the machine they ran on go in benchmarks/RESULTS.md (section "Engine: training quality and overhead").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from cvcore import schema  # noqa: E402
from cvcore.config import PartialRunConfig  # noqa: E402
from cvcore.data.synthetic import make_shapes_classification  # noqa: E402
from cvcore.data.torch_dataset import collate_classification  # noqa: E402
from cvcore.engine.data import make_loaders  # noqa: E402
from cvcore.engine.device import choose_precision, make_scaler, resolve_device  # noqa: E402
from cvcore.engine.infer import as_float_image, predict, write_predictions  # noqa: E402
from cvcore.engine.run import resolve_run_config  # noqa: E402
from cvcore.engine.schedule import build_optimizer, build_scheduler  # noqa: E402
from cvcore.engine.train import fit, train_one_epoch  # noqa: E402
from cvcore.models import build_model, param_groups  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Images done in ``wall`` seconds of wall time and ``cpu`` seconds of this process's CPU time."""

    images: int
    wall: float
    cpu: float


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float], images: int) -> Timing:
    return Timing(images, time.perf_counter() - start[0], time.process_time() - start[1])


def bare_train_epoch(model, loader, optimizer, device) -> Timing:
    """The plainest correct training loop, one epoch."""
    model.train()
    n, start = 0, clock()
    for x, y in loader:
        x, y = as_float_image(x.to(device)), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(x)
    sync(device)
    return since(start, n)


def engine_train_epoch(model, loader, optimizer, scheduler, scaler, config, device, epoch) -> Timing:
    precision = choose_precision(device, amp=config.train.amp)
    start = clock()
    out = train_one_epoch(
        model, loader, task="classification", optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=None,
        device=device, precision=precision, grad_clip=config.train.grad_clip, epoch=epoch,
    )  # fmt: skip
    sync(device)
    return since(start, int(out["train/images"]))


def bare_predict(model, dataset, batch_size, device, path: Path) -> Timing:
    """A plain inference loop over the split that also writes the same Parquet table."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_classification)
    start = clock()
    probs = []
    with torch.inference_mode():
        for x, _ in loader:
            probs.append(torch.softmax(model(as_float_image(x.to(device))).float(), 1).cpu().numpy())
    p = np.concatenate(probs)
    top = p.argmax(1)
    k = p.shape[1]
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(dataset.image_ids, dtype=np.int64)),
            pa.array(top.astype(np.int32)),
            pa.array(p[np.arange(len(p)), top].astype(np.float64)),
            pa.LargeListArray.from_arrays(
                pa.array(np.arange(0, p.size + 1, k, dtype=np.int64)), pa.array(p.reshape(-1))
            ),
        ],
        schema=schema.arrow_schema("classifications"),
    )
    pq.write_table(table, path)
    return since(start, len(p))


def engine_predict(model, dataset, batch_size, device, path: Path) -> Timing:
    start = clock()
    write_predictions(predict(model, dataset, task="classification", batch_size=batch_size, device=device), path)
    return since(start, len(dataset))


def summarise(bare: list[Timing], engine: list[Timing]) -> dict:
    """Median images/s per wall and per CPU second, and engine/bare ratios of the medians."""
    med = statistics.median
    out: dict = {}
    for clock_name in ("wall", "cpu"):
        b = med(t.images / getattr(t, clock_name) for t in bare)
        e = med(t.images / getattr(t, clock_name) for t in engine)
        out[clock_name] = {"bare_ips": round(b, 2), "engine_ips": round(e, 2), "ratio": round(e / b, 4)}
    out["rounds"] = [{"bare": dataclasses.asdict(b), "engine": dataclasses.asdict(e)} for b, e in zip(bare, engine)]
    return out


def _ips(t: Timing) -> str:
    return f"{t.images / t.wall:.1f} img/s ({t.images / t.cpu:.1f} per CPU-s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument(
        "--options", type=json.loads, default={}, help="model options as JSON, e.g. '{\"small_input\": false}'"
    )
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--n-val", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5, help="alternating bare/engine rounds")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(args.options)
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="cvflow-overhead-") as tmp:
        tmp = Path(tmp)
        snap = make_shapes_classification(tmp / "data", n_train=args.n_train, n_val=args.n_val, seed=0)
        user = PartialRunConfig.model_validate(
            {
                "data": {"snapshot": str(snap.path), "num_workers": args.workers},
                "model": {"name": args.model, "options": options},
                "train": {"device": str(device)},
            }  # fmt: skip
        )
        config = resolve_run_config(user, snapshot=snap)
        tc = config.train
        bs = tc.batch_size
        train_loader, val_loader = make_loaders(snap, config)

        def fresh():
            torch.manual_seed(0)
            m = build_model(args.model, num_classes=snap.num_classes, img_size=config.data.img_size, **options).to(
                device
            )
            return m, build_optimizer(param_groups(m, lr=tc.lr, weight_decay=tc.weight_decay), tc)

        bare_model, bare_opt = fresh()
        eng_model, eng_opt = fresh()
        sched = build_scheduler(
            eng_opt, tc.model_copy(update={"epochs": args.rounds + 1}), steps_per_epoch=len(train_loader)
        )
        scaler = make_scaler(device, choose_precision(device, amp=tc.amp))

        # A first round of each (allocator, thread pools, first-call costs) is not counted.
        bare_train_epoch(bare_model, train_loader, bare_opt, device)
        engine_train_epoch(eng_model, train_loader, eng_opt, sched, scaler, config, device, 0)
        train_bare, train_engine = [], []
        for r in range(args.rounds):
            train_bare.append(bare_train_epoch(bare_model, train_loader, bare_opt, device))
            train_engine.append(
                engine_train_epoch(eng_model, train_loader, eng_opt, sched, scaler, config, device, r + 1)
            )
            print(f"train round {r + 1}: bare {_ips(train_bare[-1])}, engine {_ips(train_engine[-1])}", flush=True)

        val_set = val_loader.dataset
        engine_predict(eng_model, val_set, bs, device, tmp / "warm.parquet")
        bare_predict(eng_model, val_set, bs, device, tmp / "warm_bare.parquet")
        pred_bare, pred_engine = [], []
        for r in range(args.rounds):
            pred_bare.append(bare_predict(eng_model, val_set, bs, device, tmp / "bare.parquet"))
            pred_engine.append(engine_predict(eng_model, val_set, bs, device, tmp / "engine.parquet"))
            print(f"predict round {r + 1}: bare {_ips(pred_bare[-1])}, engine {_ips(pred_engine[-1])}", flush=True)
        same = pq.read_table(tmp / "bare.parquet").equals(pq.read_table(tmp / "engine.parquet"))

        # End to end: fit() for two epochs (validation of n_val images and checkpoints included).
        model, _ = fresh()
        fit_config = config.model_copy(update={"train": tc.model_copy(update={"epochs": 2})})
        start = time.perf_counter()
        result = fit(
            model,
            train_loader,
            val_loader,
            config=fit_config,
            task="classification",
            out_dir=tmp / "run",
            meta={"model_name": args.model},
        )
        fit_wall = time.perf_counter() - start
        fit_train_ips = float(result.history.get_column("train/images_per_s").median())
        ckpt_mb = (tmp / "run" / "last.pt").stat().st_size / 2**20
        gpu_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    out = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "load_average_at_start": load_at_start,
        },
        "setup": {
            "model": args.model,
            "options": options,
            "img_size": config.data.img_size,
            "batch_size": bs,
            "n_train": args.n_train,
            "n_val": args.n_val,
            "workers": args.workers,
            "rounds": args.rounds,
        },  # fmt: skip
        "train": summarise(train_bare, train_engine),
        "predict": summarise(pred_bare, pred_engine) | {"identical_parquet": same},
        "fit": {
            "epochs": 2,
            "wall_s": round(fit_wall, 2),
            "train_ips": round(fit_train_ips, 2),
            "checkpoint_mib": round(ckpt_mb, 1),
            "gpu_max_mem_gib": gpu_mem,
        },  # fmt: skip
    }
    for part in ("train", "predict"):
        w, c = out[part]["wall"], out[part]["cpu"]
        print(f"{part:8s} engine/bare: wall {w['ratio']:.3f} ({w['engine_ips']:.1f} vs {w['bare_ips']:.1f} img/s), "
              f"CPU {c['ratio']:.3f} ({c['engine_ips']:.1f} vs {c['bare_ips']:.1f} img per CPU-s); medians of {args.rounds} rounds")  # fmt: skip
    print(f"predict: same Parquet table from both: {same}")
    print(
        f"fit, 2 epochs: {fit_wall:.1f} s wall, {fit_train_ips:.1f} train img/s, last.pt {ckpt_mb:.1f} MiB"
        + (f", GPU peak {gpu_mem:.2f} GiB" if gpu_mem else "")
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
