"""The before/after preview grid: samples with their boxes and class names drawn, as one PNG.

Drawing is torchvision.utils (draw_bounding_boxes, make_grid); captions are PIL text. Small
images are enlarged (nearest neighbour) before drawing so labels stay legible. The PNG carries a
text chunk saying cvflow drew it (:data:`PREVIEW_MARK`), so a later preview may replace it while
any other file at that path is refused (:func:`check_preview_target`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, make_grid

from cvcore.io import atomic_path, existing_output

# Distinct, readable colours; class k gets PALETTE[k % len(PALETTE)].
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324", "#800000"]
CAPTION_PX = 14
# The PNG text chunk (key, value) every preview carries: the mark of a file cvflow may replace.
PREVIEW_MARK = ("cvflow", "augmentation preview")


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``uint8[3, H, W]`` from a uint8 image or a float image in [0, 1]."""
    image = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else torch.as_tensor(image)
    if image.dtype == torch.uint8:
        return image
    return F.to_dtype(image.clamp(0, 1), torch.uint8, scale=True)


def render_detection(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_names: Sequence[str],
    caption: str,
    min_side: int = 192,
) -> torch.Tensor:
    """``uint8[3, h, w + caption]``: the image with its boxes (XYXY px) and class names drawn."""
    img, factor = _enlarge(to_uint8(image), min_side)
    boxes = torch.as_tensor(boxes).as_subclass(torch.Tensor).float().reshape(-1, 4) * factor
    labels = [int(v) for v in torch.as_tensor(labels).reshape(-1)]
    names = [class_names[v] if 0 <= v < len(class_names) else str(v) for v in labels]
    colors = [PALETTE[v % len(PALETTE)] for v in labels]
    if len(boxes):
        img = draw_bounding_boxes(img, boxes, labels=names, colors=colors, width=2)
    return _with_caption(img, caption)


def render_classification(image: torch.Tensor, *, caption: str, min_side: int = 160) -> torch.Tensor:
    """``uint8[3, h, w + caption]``: the image with its (possibly mixed) label as a caption."""
    img, _ = _enlarge(to_uint8(image), min_side)
    return _with_caption(img, caption)


def write_grid(tiles: Sequence[torch.Tensor], path: str | Path, *, columns: int) -> Path:
    """Lay ``tiles`` (uint8[3, h, w], padded to one size) out ``columns`` per row; write a PNG atomically."""
    if not tiles:
        raise ValueError(f"{path}: no samples to preview")
    h = max(t.shape[-2] for t in tiles)
    w = max(t.shape[-1] for t in tiles)
    padded = [torch.nn.functional.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]), value=255) for t in tiles]
    grid = make_grid(torch.stack(padded), nrow=columns, padding=4, pad_value=255)
    path = Path(path)
    mark = PngImagePlugin.PngInfo()
    mark.add_text(*PREVIEW_MARK)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG", pnginfo=mark)
    return path


def check_preview_target(path: str | Path) -> None:
    """Raise ValueError unless a preview may be written at ``path`` (writes nothing).

    Fine: nothing there yet, or a preview cvflow drew (a PNG with :data:`PREVIEW_MARK`), which is
    replaced. Anything else is refused in one line naming it and never overwritten: a user's
    picture, a dataset's image or manifest, a folder, a FIFO or device, a link to any of these or
    a dangling link. Only the PNG's header chunks are read.
    """
    if not existing_output(path, kind="PNG file"):
        return
    try:
        with Image.open(path) as image:
            ours = image.format == "PNG" and image.info.get(PREVIEW_MARK[0]) == PREVIEW_MARK[1]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        ours = False  # not an image PIL reads: not ours to replace
    if not ours:
        raise ValueError(
            f"refusing to overwrite {path}: it exists and is not a preview cvflow wrote; choose another path or remove it yourself"
        )


def _enlarge(img: torch.Tensor, min_side: int) -> tuple[torch.Tensor, int]:
    factor = max(1, -(-min_side // max(1, min(img.shape[-2:]))))
    if factor == 1:
        return img, 1
    return F.resize(
        img, [img.shape[-2] * factor, img.shape[-1] * factor], interpolation=F.InterpolationMode.NEAREST
    ), factor


def _with_caption(img: torch.Tensor, text: str) -> torch.Tensor:
    strip = Image.new("RGB", (img.shape[-1], CAPTION_PX), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black", font=ImageFont.load_default())
    top = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    return torch.cat([top, img], dim=1)
