"""What caps R-CNN on a dataset: the proposals, or the CNN features the SVMs score (issue 15 item 4).

Two measurements on a snapshot's val split, CPU only:

- **proposals**: recall of R-CNN's proposals (the registry defaults' selective search, or the
  run's settings) at IoU 0.5 / 0.7 against the ground truth, and proposals per image;
- **features**: how well a linear classifier names the object in a *perfect* box. Each
  ground-truth box is warped as R-CNN warps it and passed through a CNN; a softmax probe
  (the linear layer an SVM also is, trained 300 full-batch AdamW steps on the train split's boxes)
  is scored on the val boxes' class accuracy. The CNN is either R-CNN's untrained (frozen, random)
  ResNet-18 at the given warp, or the CNN of a trained run (``--run``; its own SVMs' arg-max
  accuracy is reported too).

    .venv/bin/python benchmarks/rcnn_caps.py --data SNAPSHOT_DIR [--run RUN_DIR ...] [--warp 64 --pad 4]

A probe near chance with perfect boxes means the features cap the detector whatever the proposals;
high proposal recall means the proposals do not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cvcore.data.snapshot import read_snapshot  # noqa: E402
from cvcore.data.torch_dataset import DetectionDataset  # noqa: E402
from cvcore.engine.checkpoint import load_checkpoint  # noqa: E402
from cvcore.models import build_model  # noqa: E402
from cvcore.models.proposals import proposal_recall  # noqa: E402
from cvcore.models.rcnn import RCNN  # noqa: E402


def boxes_of(snapshot: Path, split: str) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Images ``float[3, H, W]`` in [0, 1], their boxes ``float[G, 4]`` and labels ``int64[G]``."""
    ds = DetectionDataset(read_snapshot(snapshot), split)
    images, boxes, labels = [], [], []
    for i in range(len(ds)):
        sample = ds.raw(i)
        if sample is None:
            continue
        image, target = sample
        images.append(image.as_subclass(torch.Tensor).float() / 255)
        boxes.append(target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4))
        labels.append(target["labels"].long())
    return images, boxes, labels


@torch.no_grad()
def gt_features(model: RCNN, images, boxes) -> torch.Tensor:
    """The model's (normalised) CNN features of every ground-truth box: ``float[sum G, D]``."""
    model.eval()
    return model._normalise(torch.cat(model._extract_many(images, boxes)))


def probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *, steps: int = 300
) -> float:
    """Val accuracy of a softmax linear probe trained full-batch on ``train_x [N, D]``."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(val_x).argmax(1) == val_y).float().mean())


def measure(name: str, model: RCNN, train, val) -> dict:
    start = time.process_time()
    tx, vx = gt_features(model, train[0], train[1]), gt_features(model, val[0], val[1])
    ty, vy = torch.cat(train[2]), torch.cat(val[2])
    row = {
        "cnn": name,
        "warp": model.warp_size,
        "context_pad": model.context_pad,
        "probe_val_accuracy": round(probe_accuracy(tx, ty, vx, vy), 3),
    }
    if not name.startswith("untrained"):
        with torch.no_grad():
            row["svm_val_accuracy"] = round(float((model.svm(vx).argmax(1) == vy).float().mean()), 3)
    row["cpu_s"] = round(time.process_time() - start, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a snapshot folder")
    ap.add_argument("--run", type=Path, action="append", default=[], help="a trained rcnn run folder (its best.pt)")
    ap.add_argument("--warp", type=int, default=64, help="warp of the untrained CNN's row (px)")
    ap.add_argument("--pad", type=int, default=4, help="context padding of the untrained CNN's row (px)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    train, val = boxes_of(args.data, "train"), boxes_of(args.data, "val")
    num_classes = int(torch.cat(train[2]).max()) + 1
    rows = []
    untrained = build_model("rcnn", num_classes=num_classes, warp_size=args.warp, context_pad=args.pad)
    start = time.process_time()
    recall = proposal_recall([untrained.proposals(im) for im in val[0]], val[1], iou=(0.5, 0.7))
    rows.append(
        {
            "proposals": untrained.proposal_settings.key(),
            **recall.as_metrics(),
            "cpu_s": round(time.process_time() - start, 1),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    rows.append(measure(f"untrained resnet18 (frozen), warp {args.warp}", untrained, train, val))
    print(json.dumps(rows[-1]), flush=True)
    for run in args.run:
        state = load_checkpoint(run / "best.pt")
        meta = state["meta"]
        model = build_model("rcnn", num_classes=meta["num_classes"], **meta["options"])
        model.load_state_dict(state["model"])
        rows.append(measure(f"trained: {run.name}", model, train, val))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        from cvcore.io import atomic_write

        with atomic_write(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
