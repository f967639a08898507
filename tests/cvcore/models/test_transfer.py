"""Transfer learning: a backbone trained on one task starts better than a random one on a related task.

Task A: which of four shapes (circle, square, triangle, cross) a 32-px image shows. Task B,
related: is the shape a circle or triangle, or a square or cross, on other images. A ResNet-18
is trained briefly on A and saved as one of our checkpoints; a 2-class model is then built from
it with ``pretrained=<checkpoint>`` (its head re-initialised), its backbone frozen, and only the
head trained on 64 images of B: a linear probe. The same probe on a random backbone is the
baseline.

The images are drawn here, plain shapes on plain backgrounds, so that a few dozen steps of
pretraining already learn shape features (the textured built-in data needs hundreds of steps).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cvcore.models import apply_freeze, build_model, param_groups

GROUP = torch.tensor([0, 1, 0, 1])  # task B: {circle, triangle} -> 0, {square, cross} -> 1


def _shapes(n: int, *, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images float[n, 3, size, size] in [0, 1] of one bright shape on a dark background, and its class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        cls = int(rng.integers(4))
        side = int(rng.integers(size // 2, size - 4))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
        x1, y1 = x0 + side - 1, y0 + side - 1
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
        draw, colour = ImageDraw.Draw(image), tuple(int(v) for v in rng.integers(150, 256, 3))
        if cls == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif cls == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif cls == 2:
            draw.polygon([(x0 + (side - 1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
        else:
            t = side // 3
            draw.rectangle([x0, y0 + t, x1, y1 - t], fill=colour)
            draw.rectangle([x0 + t, y0, x1 - t, y1], fill=colour)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        labels.append(cls)
    return torch.stack(images).float() / 255, torch.tensor(labels)


def _pretrain_on_a(tmp_path) -> str:
    x, y = _shapes(1024, seed=0)
    torch.manual_seed(0)
    # The standard stride-32 stem keeps this cheap at 32 px (small_input costs ~15x more per image).
    model = build_model("resnet18", num_classes=4, small_input=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=40, pct_start=0.1)
    model.train()
    for _ in range(40):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    path = tmp_path / "task_a.pt"
    torch.save({"model": model.state_dict(), "meta": {"model_name": "resnet18", "num_classes": 4}}, path)
    return str(path)


def _linear_probe(pretrained: str | None, train: tuple, val: tuple) -> float:
    """Val accuracy of the 2-class model after training only its head on ``train``."""
    torch.manual_seed(1)  # the same head initialisation for both backbones
    model = build_model("resnet18", num_classes=2, small_input=False, pretrained=pretrained)
    apply_freeze(model, "backbone", freeze_bn=True)
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.0), lr=1e-2)
    assert {g["name"] for g in optimizer.param_groups} == {"head", "head_no_decay"}  # nothing else trains
    model.eval()
    with torch.no_grad():  # the backbone is frozen: its features are computed once
        f_train, f_val = (model.backbone(model.normalize(x)) for x in (train[0], val[0]))
    for _ in range(100):
        loss = F.cross_entropy(model.head(f_train), train[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (model.head(f_val).argmax(1) == val[1]).float().mean().item()


def test_transferred_backbone_beats_a_random_one_on_a_related_task(tmp_path):
    checkpoint = _pretrain_on_a(tmp_path)
    (xt, yt), (xv, yv) = _shapes(64, seed=1), _shapes(256, seed=2)
    train, val = (xt, GROUP[yt]), (xv, GROUP[yv])
    transferred = _linear_probe(checkpoint, train, val)
    random = _linear_probe(None, train, val)
    # Measured: transferred ~0.9, random ~0.58 (chance 0.5).
    assert transferred >= 0.8 and transferred >= random + 0.2, (transferred, random)
