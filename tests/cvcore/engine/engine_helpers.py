"""Engine test helpers: tiny models and eval-style transforms (no model registry needed)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2


def resize_transform(size: int) -> v2.Compose:
    """What an eval pipeline does: resize to size x size and scale to float32 [0, 1]."""
    return v2.Compose([v2.Resize((size, size)), v2.ToDtype(torch.float32, scale=True)])


class TinyClassifier(nn.Module):
    """conv-BN-ReLU, global pooling, linear: logits[B, K] from images[B, 3, H, W]."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def tiny_classifier(seed: int = 0, num_classes: int = 4) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier(num_classes)
