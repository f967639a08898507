"""CutMix and MixUp per batch (classification), on torchvision.transforms.v2.CutMix / MixUp.

Each batch gets CutMix with probability ``cutmix_p``, else MixUp with probability ``mixup_p``,
else nothing (one uniform draw; the config checks ``cutmix_p + mixup_p <= 1``). Targets come
back as soft labels ``float32[B, K]`` in every case (one-hot when the batch was not mixed), so
the loss always takes probabilities: ``torch.nn.functional.cross_entropy(logits, targets)``.

v2.CutMix pastes the box of the next image in the batch (``roll(1)``) and weights the labels by
the pasted area, clipped to the image (``lam_adjusted``), which is what the CutMix paper asks.
Pairing is by neighbour, so the batch must come from a shuffled loader.

The mixer owns its randomness: a generator seeded from ``config.seed``; the v2 transform runs
with torch's CPU generator seeded from it and restored afterwards, so mixing is reproducible and
does not shift the training RNG. ``state_dict``/``load_state_dict`` carry it across resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn.functional import one_hot
from torchvision.transforms import v2

from cvcore.augment.seeding import torch_seeded
from cvcore.config import AugmentConfig

Method = Literal["none", "cutmix", "mixup"]


@dataclass(frozen=True)
class MixedBatch:
    """images: float[B, 3, H, W] (same dtype/device as given); targets: float32[B, K] (rows sum to 1)."""

    images: torch.Tensor
    targets: torch.Tensor
    method: Method


class BatchMixer:
    """``mixer(images, labels) -> (images, soft_targets)``, CutMix/MixUp with the config's odds."""

    def __init__(self, config: AugmentConfig, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.cutmix_p = config.cutmix_p
        self.mixup_p = config.mixup_p
        self._cutmix = v2.CutMix(alpha=config.cutmix_alpha, num_classes=num_classes)
        self._mixup = v2.MixUp(alpha=config.mixup_alpha, num_classes=num_classes)
        self._gen = torch.Generator().manual_seed(int(config.seed))

    @property
    def active(self) -> bool:
        """False when both probabilities are 0 (the mixer only one-hot encodes)."""
        return self.cutmix_p > 0 or self.mixup_p > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images float[B, 3, H, W], labels int64[B]) -> (images, soft_targets float32[B, K])``."""
        mixed = self.mix(images, labels)
        return mixed.images, mixed.targets

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> MixedBatch:
        """Mix one batch; see the module docstring. Raises ValueError for bad shapes or dtypes."""
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected images [B, C, H, W] and labels [B], got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"batch mixing needs float images in [0, 1], got {images.dtype}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must be in 0..{self.num_classes - 1}, got {labels.min().item()}..{labels.max().item()}"
            )
        u = float(torch.rand((), generator=self._gen))
        seed = int(torch.randint(2**62, (), generator=self._gen))
        method: Method = "cutmix" if u < self.cutmix_p else "mixup" if u < self.cutmix_p + self.mixup_p else "none"
        if method == "none" or images.shape[0] < 2:
            return MixedBatch(images, one_hot(labels, self.num_classes).float(), "none")
        transform = self._cutmix if method == "cutmix" else self._mixup
        with torch_seeded(seed):
            out, targets = transform(images, labels)
        return MixedBatch(out.as_subclass(torch.Tensor), targets.float(), method)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state (a uint8 tensor; loads with ``weights_only=True``)."""
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._gen.set_state(state["generator"])
