"""Input normalisation inside the models, so data pipelines hand over plain [0, 1] images."""

from __future__ import annotations

import torch
from torch import nn

# The statistics torchvision's ImageNet weights were trained with (torchvision.models *_Weights.transforms()).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` per channel: ``float[B, 3, H, W]`` in [0, 1] -> standardised float.

    The statistics are non-persistent buffers: they move with ``.to(device)`` but stay out of the
    state dict, so weights trained with and without this module load into each other.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(
                f"models take float images in [0, 1], got dtype {x.dtype} (convert with v2.ToDtype(float32, scale=True))"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
