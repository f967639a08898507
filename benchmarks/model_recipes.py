"""Bare-loop learning curves behind the model registry's defaults, on the built-in synthetic data.

A plain PyTorch loop over in-memory tensors (no engine, no augmentation pipeline: horizontal flips,
and +-4 px shifts for classification; AdamW with a one-cycle schedule), so that only the model
and optimiser settings differ between variants (warm-up: 10% of the steps for classify, 5% for
detect; gradients clipped at norm 10). It prints the validation metric every
``--every`` steps:

- ``classify``: ResNet-18 (or ``--model vgg11`` ...) on ``make_shapes_classification`` (800 train / 200 val, 32 px), with
  ``--small-input 1`` (3x3 stride-1 stem, no max-pool) or ``0`` (torchvision's stem): accuracy.
- ``detect``: YOLOv1 on ``make_shapes_detection`` (240 / 60, 128 px), ``--head conv|fc`` and
  ``--stride`` (trunk stride; 0 = the model's choice), or ``--model faster_rcnn`` (its
  defaults): COCO mAP@0.5 and mAP (cvcore.metrics).

    .venv/bin/python benchmarks/model_recipes.py classify --small-input 1 --steps 250 --every 25
    .venv/bin/python benchmarks/model_recipes.py detect --head conv --lr 2e-3 --steps 300 --every 50

The data are generated in a temporary folder with fixed seeds. Results: benchmarks/RESULTS.md,
section "Models".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.progress import track  # noqa: E402

from cvcore.data.synthetic import make_shapes_classification, make_shapes_detection  # noqa: E402
from cvcore.data.torch_dataset import ClassificationDataset, DetectionDataset  # noqa: E402
from cvcore.metrics.detection import evaluate_detections  # noqa: E402
from cvcore.models import build_model  # noqa: E402


def classify(args: argparse.Namespace, work: Path) -> None:
    snapshot = make_shapes_classification(work / "cls", n_train=800, n_val=200, image_size=32, seed=0)
    x, y = _classification_tensors(ClassificationDataset(snapshot, "train"))
    xv, yv = _classification_tensors(ClassificationDataset(snapshot, "val"))
    torch.manual_seed(0)
    model = build_model(args.model or "resnet18", num_classes=4, small_input=bool(args.small_input))
    optimizer, schedule = _optimiser(model, args)
    start = time.perf_counter()
    for step in track(range(1, args.steps + 1), description="classify", transient=True):
        model.train()
        idx = torch.randint(0, len(x), (args.batch_size,))
        batch = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x[idx].flip(-1), x[idx])
        dx, dy = torch.randint(0, 9, (2,)).tolist()
        batch = F.pad(batch, (4, 4, 4, 4), mode="replicate")[:, :, dy : dy + 32, dx : dx + 32]
        loss = F.cross_entropy(model(batch), y[idx])
        _step(loss, model, optimizer, schedule)
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(xv).argmax(1) == yv).float().mean().item()
            print(
                f"step {step:4d}  loss {loss.item():.3f}  val accuracy {accuracy:.3f}  {time.perf_counter() - start:.0f} s",
                flush=True,
            )


def detect(args: argparse.Namespace, work: Path) -> None:
    snapshot = make_shapes_detection(work / "det", n_train=240, n_val=60, image_size=128, seed=0)
    x, targets = _detection_tensors(DetectionDataset(snapshot, "train"))
    val = DetectionDataset(snapshot, "val")
    xv, _ = _detection_tensors(val)
    val_ids = [int(i) for i in val.image_ids]
    truth = snapshot.annotations.filter(pl.col("image_id").is_in(val_ids))
    images = snapshot.images.filter(pl.col("image_id").is_in(val_ids))
    torch.manual_seed(0)
    yolo = args.model in (None, "yolov1")
    options = {"head": args.head, **({"feature_stride": args.stride} if args.stride else {})} if yolo else {}
    model = build_model(args.model or "yolov1", num_classes=4, img_size=128, **options)
    model.set_postprocess(score_threshold=0.001)
    optimizer, schedule = _optimiser(model, args)
    start = time.perf_counter()
    for step in track(range(1, args.steps + 1), description="detect", transient=True):
        model.train()
        idx = torch.randint(0, len(x), (args.batch_size,)).tolist()
        flip = (torch.rand(len(idx)) < 0.5).tolist()
        batch = torch.stack([x[i].flip(-1) if f else x[i] for i, f in zip(idx, flip)])
        batch_targets = [_flipped(targets[i], 128) if f else targets[i] for i, f in zip(idx, flip)]
        losses = model(batch, batch_targets)
        _step(sum(losses.values()), model, optimizer, schedule)
        if step % args.every == 0:
            report = evaluate_detections(truth, _predict(model, xv, val_ids), images=images, protocol="coco")
            terms = "  ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            print(
                f"step {step:4d}  {terms}  mAP@0.5 {report.summary['map_50']:.3f}  mAP {report.summary['map']:.3f}  "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )


def _optimiser(model: torch.nn.Module, args: argparse.Namespace):
    if args.sgd:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    warmup = 0.1 if args.experiment == "classify" else 0.05
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=warmup)
    return optimizer, schedule


def _step(loss: torch.Tensor, model: torch.nn.Module, optimizer, schedule) -> None:
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    schedule.step()


def _classification_tensors(ds: ClassificationDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([ds.raw(i)[0] for i in range(len(ds))]).float() / 255, torch.as_tensor(ds.labels)


def _detection_tensors(ds: DetectionDataset) -> tuple[torch.Tensor, list[dict]]:
    samples = [ds.raw(i) for i in range(len(ds))]
    images = torch.stack([img for img, _ in samples]).float() / 255
    return images, [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for _, t in samples]


def _flipped(target: dict, width: int) -> dict:
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return {"boxes": boxes, "labels": target["labels"]}


def _predict(model: torch.nn.Module, images: torch.Tensor, image_ids: list[int]) -> pl.DataFrame:
    model.eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), 30):
            for image_id, out in zip(image_ids[start : start + 30], model(images[start : start + 30])):
                for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
                    rows.append((image_id, label, score, *box))
    schema = {
        "image_id": pl.Int64,
        "category_id": pl.Int32,
        "score": pl.Float64,
        "x1": pl.Float64,
        "y1": pl.Float64,
        "x2": pl.Float64,
        "y2": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=["classify", "detect"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 (classify), 16 (detect)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--small-input", type=int, choices=[0, 1], default=1)
    ap.add_argument(
        "--model", default=None, help="registered model (default: resnet18 for classify, yolov1 for detect)"
    )
    ap.add_argument("--sgd", action="store_true", help="SGD with momentum 0.9 instead of AdamW")
    ap.add_argument("--head", choices=["conv", "fc"], default="conv")
    ap.add_argument("--stride", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    args.batch_size = args.batch_size or (32 if args.experiment == "classify" else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cvflow-recipes-") as tmp:
        (classify if args.experiment == "classify" else detect)(args, Path(tmp))


if __name__ == "__main__":
    main()
