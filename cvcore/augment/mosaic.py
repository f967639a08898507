"""Mosaic (detection): four images joined around a random centre, boxes following their pixels.

torchvision has no Mosaic, so the composition is written here; every pixel and box operation in
it is a ``torchvision.transforms.v2.functional`` kernel (resize, crop) or ``SanitizeBoundingBoxes``.

Layout on an ``S`` x ``S`` canvas (S = img_size) with centre ``(xc, yc)``: tile 0 fills the
top-left quadrant with its bottom-right corner at the centre, tile 1 the top-right with its
bottom-left corner there, tile 2 the bottom-left, tile 3 the bottom-right. Each tile is first
resized so its longer side is ``S x scale``; the part of it that falls inside its quadrant is
kept (the rest is cropped away), and uncovered canvas is grey. Boxes are cropped with their
tile, moved onto the canvas and dropped with their labels when they become degenerate or keep
less than ``min_visible`` of their area.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.ops import box_area
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cvcore.augment.seeding import one_thread, sample_rng, torch_seeded
from cvcore.config import AugmentConfig

log = logging.getLogger(__name__)

Sample = tuple[tv_tensors.Image, dict]


@dataclass(frozen=True)
class Mosaic:
    """One composed mosaic.

    image: uint8[3, S, S]; boxes: float32[N, 4] XYXY pixels on the canvas; labels: int64[N];
    tile: int64[N], the input (0..3) each box came from; centre: (x, y) pixels;
    boxes_in: number of boxes in the four inputs before cropping.
    """

    image: tv_tensors.Image
    boxes: tv_tensors.BoundingBoxes
    labels: torch.Tensor
    tile: torch.Tensor
    centre: tuple[int, int]
    boxes_in: int


def make_mosaic(
    tiles: Sequence[Sample | None],
    *,
    centre: tuple[int, int],
    img_size: int,
    scales: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    fill: int = 114,
    min_size: float = 1.0,
    min_visible: float = 0.1,
) -> Mosaic:
    """Compose four ``(image uint8[3, H, W], {"boxes", "labels"})`` samples into one mosaic.

    ``centre`` must lie strictly inside the canvas; ``scales[k]`` sets tile k's longer side to
    ``round(img_size * scales[k])`` pixels. A None tile leaves its quadrant grey.
    """
    if len(tiles) != 4 or len(scales) != 4:
        raise ValueError(f"a mosaic needs 4 tiles and 4 scales, got {len(tiles)} and {len(scales)}")
    xc, yc = (int(c) for c in centre)
    if not (0 < xc < img_size and 0 < yc < img_size):
        raise ValueError(f"mosaic centre {centre} must lie inside the {img_size} px canvas")
    canvas = torch.full((3, img_size, img_size), fill, dtype=torch.uint8)
    parts, boxes_in = [], 0
    for k, (tile, scale) in enumerate(zip(tiles, scales)):
        if tile is None:
            continue
        image, target = tile
        boxes_in += len(target["boxes"])
        part = _place(k, image, target, canvas, xc=xc, yc=yc, long_side=max(1, round(img_size * float(scale))))
        if part is not None:
            parts.append(part)
    boxes = torch.cat([p[0] for p in parts]) if parts else torch.zeros((0, 4))
    labels = torch.cat([p[1] for p in parts]) if parts else torch.zeros((0,), dtype=torch.int64)
    tile_ids = torch.cat([p[2] for p in parts]) if parts else torch.zeros((0,), dtype=torch.int64)
    visible = torch.cat([p[3] for p in parts]) if parts else torch.zeros((0,))
    keep = visible >= min_visible
    sanitize = v2.SanitizeBoundingBoxes(
        min_size=min_size, labels_getter=lambda inputs: (inputs[1]["labels"], inputs[1]["tile"])
    )
    bb = tv_tensors.BoundingBoxes(boxes[keep].float(), format="XYXY", canvas_size=(img_size, img_size))
    bb, kept = sanitize(bb, {"labels": labels[keep], "tile": tile_ids[keep]})
    return Mosaic(tv_tensors.Image(canvas), bb, kept["labels"], kept["tile"], (xc, yc), boxes_in)


def _place(k: int, image: torch.Tensor, target: dict, canvas: torch.Tensor, *, xc: int, yc: int, long_side: int):
    """Resize tile k, paste its part inside quadrant k; return (boxes, labels, tile, visible) or None."""
    s = canvas.shape[-1]
    h, w = image.shape[-2:]
    f = long_side / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    image = F.resize(tv_tensors.Image(image), [nh, nw], antialias=True)
    boxes = F.resize(
        tv_tensors.BoundingBoxes(torch.as_tensor(target["boxes"]).float(), format="XYXY", canvas_size=(h, w)), [nh, nw]
    )
    # The corner of the tile that touches the centre, and the canvas region it covers.
    x1a, x2a = (max(xc - nw, 0), xc) if k in (0, 2) else (xc, min(xc + nw, s))
    y1a, y2a = (max(yc - nh, 0), yc) if k in (0, 1) else (yc, min(yc + nh, s))
    width, height = x2a - x1a, y2a - y1a
    left = nw - width if k in (0, 2) else 0
    top = nh - height if k in (0, 1) else 0
    canvas[:, y1a:y2a, x1a:x2a] = F.crop(image, top, left, height, width)
    cropped = F.crop(boxes, top, left, height, width)  # shifted by (-left, -top) and clamped to the crop
    full = box_area(boxes.as_subclass(torch.Tensor))
    visible = torch.where(
        full > 0, box_area(cropped.as_subclass(torch.Tensor)) / full.clamp(min=1e-9), torch.zeros_like(full)
    )
    moved = cropped.as_subclass(torch.Tensor) + torch.tensor([x1a, y1a, x1a, y1a], dtype=torch.float32)
    labels = torch.as_tensor(target["labels"], dtype=torch.int64)
    return moved, labels, torch.full_like(labels, k), visible


def mosaic_active(epoch: int, *, epochs: int, close_mosaic: int) -> bool:
    """Whether Mosaic runs in ``epoch`` (0-based): off for the last ``close_mosaic`` epochs."""
    return epoch < epochs - close_mosaic


class MosaicDataset(torch.utils.data.Dataset):
    """Mosaic with probability ``p`` over a DetectionDataset, then the dataset's own transforms.

    ``dataset`` is a cvcore.data.torch_dataset.DetectionDataset (anything with ``raw(i)``,
    ``transforms`` and ``image_ids``). Sample ``index`` is either a mosaic of image ``index``
    (in a random quadrant) and three random others, or image ``index`` alone; either way it then
    goes through ``dataset.transforms`` (the pipeline ends by resizing to its image size, so a
    mosaic of ``img_size`` px is not resized again when the sizes agree).

    Everything random is drawn from ``(seed, epoch, index)`` (cvcore.augment.seeding), so
    samples are identical with any number of DataLoader workers. Call :meth:`set_epoch` each
    epoch; set ``enabled = False`` for the last ``close_mosaic`` epochs (see
    :func:`mosaic_active`). Both reach workers when they start (each epoch unless
    ``persistent_workers=True``). ``on_mosaic``, when set, is called with every
    :class:`Mosaic` built (used for statistics; leave None in training).
    """

    def __init__(
        self,
        dataset,
        *,
        p: float,
        img_size: int,
        seed: int,
        scale: tuple[float, float] = (0.5, 1.0),
        centre_range: tuple[float, float] = (0.25, 0.75),
        fill: int = 114,
        min_size: float = 1.0,
        min_visible: float = 0.1,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mosaic probability p must be in [0, 1], got {p}")
        if not 0.0 < centre_range[0] <= centre_range[1] < 1.0:
            raise ValueError(f"centre_range must be (low, high) inside (0, 1), got {centre_range}")
        self.dataset = dataset
        self.p = float(p)
        self.img_size = int(img_size)
        self.seed = int(seed)
        self.scale = (float(scale[0]), float(scale[1]))
        self.centre_range = centre_range
        self.fill = fill
        self.min_size = min_size
        self.min_visible = min_visible
        self.epoch = 0
        self.enabled = True
        self.on_mosaic: Callable[[Mosaic], None] | None = None

    @classmethod
    def from_config(cls, dataset, config: AugmentConfig, *, img_size: int) -> "MosaicDataset":
        """Mosaic with the config's ``mosaic_p``, ``mosaic_scale``, ``min_box_size`` and ``seed``."""
        return cls(
            dataset,
            p=config.mosaic_p,
            img_size=img_size,
            seed=config.seed,
            scale=config.mosaic_scale,
            min_size=config.min_box_size,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        rng = sample_rng(self.seed, self.epoch, index)
        with torch_seeded(int(rng.integers(2**63))), one_thread():
            use_mosaic = self.enabled and self.p > 0 and rng.random() < self.p
            sample = self._mosaic(index, rng) if use_mosaic else self.dataset.raw(index)
            if sample is None or self.dataset.transforms is None:
                return sample
            return self.dataset.transforms(*sample)

    def _mosaic(self, index: int, rng) -> Sample | None:
        primary = self.dataset.raw(index)
        if primary is None:
            return None
        others = [self.dataset.raw(int(i)) for i in rng.integers(len(self.dataset), size=3)]
        slot = int(rng.integers(4))  # the primary image's quadrant
        tiles = others[:slot] + [primary] + others[slot:]
        lo, hi = (round(self.img_size * c) for c in self.centre_range)
        lo, hi = max(lo, 1), min(hi, self.img_size - 1)
        centre = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
        m = make_mosaic(
            tiles,
            centre=centre,
            img_size=self.img_size,
            scales=rng.uniform(*self.scale, size=4).tolist(),
            fill=self.fill,
            min_size=self.min_size,
            min_visible=self.min_visible,
        )
        if self.on_mosaic is not None:
            self.on_mosaic(m)
        return m.image, {"boxes": m.boxes, "labels": m.labels, "image_id": primary[1]["image_id"]}
