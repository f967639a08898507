"""Boxes in one place: the formats' conventions, and IoU / NMS over ``torchvision.ops``.

Inside cvflow boxes are **xyxy absolute pixels, float64** (``x2 - x1`` is the width, no +1). The
other formats exist only at the edges, and this module is where they are converted:

- COCO ``xywh``: top-left corner, width, height, pixels; ``x2 = x + w`` exactly (one float64
  addition, the right edge pycocotools forms);
- VOC corners: 1-based and inclusive (``xmin = 1`` is the first pixel column, ``xmax = W`` the
  last), so ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``;
- YOLO ``cxcywh``: centre and size, normalised by the image width/height (fractions in [0, 1]).

**Polars expressions** (:func:`xyxy_from_xywh`, :func:`xyxy_from_voc`, :func:`xyxy_from_cxcywh`,
:func:`xywh_from_xyxy`, :func:`scale_xyxy`) are what the format readers, the COCO writer and
ingest use: they work on polars frames, one vectorised expression per coordinate, aliased to the
target column names. They import no torch, so reading a dataset does not pay torch's import.

**Tensor / array functions** take a ``torch.Tensor[N, 4]`` or a ``numpy.ndarray[N, 4]`` and return
the same kind (NumPy arrays go through ``torch.from_numpy`` without a copy); torch and
torchvision are imported on their first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", "torch.Tensor", np.ndarray)

XYXY = ("x1", "y1", "x2", "y2")  # the canonical box columns (schema ANNOTATIONS, DETECTIONS)

__all__ = [
    "XYXY",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_norm_to_xyxy",
    "nms",
    "scale_xyxy",
    "xywh_from_xyxy",
    "xywh_to_xyxy",
    "xyxy_from_cxcywh",
    "xyxy_from_voc",
    "xyxy_from_xywh",
    "xyxy_to_cxcywh_norm",
    "xyxy_to_xywh",
]


# ---------------------------------------------------------------------------------------------
# Polars expressions: the format edges


def xyxy_from_xywh(x: str = "x", y: str = "y", w: str = "w", h: str = "h") -> list[pl.Expr]:
    """COCO ``bbox`` columns (top-left corner, width, height; px) -> ``x1, y1, x2, y2`` (float64 px).

    ``x2 = x + w`` and ``y2 = y + h``: one float64 addition each, exactly as COCO readers and
    pycocotools form the far edges (the snapshot digests of COCO data depend on it).
    """
    xs, ys, ws, hs = (pl.col(c).cast(pl.Float64) for c in (x, y, w, h))
    return [xs.alias("x1"), ys.alias("y1"), (xs + ws).alias("x2"), (ys + hs).alias("y2")]


def xywh_from_xyxy(x1: str = "x1", y1: str = "y1", x2: str = "x2", y2: str = "y2") -> list[pl.Expr]:
    """``x1, y1, x2, y2`` columns (px) -> COCO ``x, y, w, h`` (float64; ``w = x2 - x1``, ``h = y2 - y1``)."""
    a, b, c, d = (pl.col(col).cast(pl.Float64) for col in (x1, y1, x2, y2))
    return [a.alias("x"), b.alias("y"), (c - a).alias("w"), (d - b).alias("h")]


def xyxy_from_voc(xmin: str = "xmin", ymin: str = "ymin", xmax: str = "xmax", ymax: str = "ymax") -> list[pl.Expr]:
    """VOC ``<bndbox>`` columns (1-based inclusive pixel corners) -> continuous ``x1, y1, x2, y2`` (px).

    ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``: the same object gives the same box as
    in COCO (``x2 - x1`` = pixels covered).
    """
    return [
        (pl.col(xmin).cast(pl.Float64) - 1.0).alias("x1"),
        (pl.col(ymin).cast(pl.Float64) - 1.0).alias("y1"),
        pl.col(xmax).cast(pl.Float64).alias("x2"),
        pl.col(ymax).cast(pl.Float64).alias("y2"),
    ]


def xyxy_from_cxcywh(cx: str = "cx", cy: str = "cy", w: str = "w", h: str = "h") -> list[pl.Expr]:
    """Centre/size columns -> ``x1, y1, x2, y2`` in the same units (``x1 = cx - w / 2`` ...).

    YOLO label lines give them as fractions of the image size; the result stays in fractions
    until :func:`scale_xyxy` multiplies by the image's width and height.
    """
    cxs, cys, ws, hs = (pl.col(c).cast(pl.Float64) for c in (cx, cy, w, h))
    return [
        (cxs - ws / 2).alias("x1"),
        (cys - hs / 2).alias("y1"),
        (cxs + ws / 2).alias("x2"),
        (cys + hs / 2).alias("y2"),
    ]


def scale_xyxy(width: str | pl.Expr, height: str | pl.Expr) -> list[pl.Expr]:
    """``x1, y1, x2, y2`` as fractions of the image size -> pixels: x times ``width``, y times ``height`` (columns or expressions)."""
    w = pl.col(width) if isinstance(width, str) else width
    h = pl.col(height) if isinstance(height, str) else height
    return [
        (pl.col("x1") * w).alias("x1"),
        (pl.col("y1") * h).alias("y1"),
        (pl.col("x2") * w).alias("x2"),
        (pl.col("y2") * h).alias("y2"),
    ]


# ---------------------------------------------------------------------------------------------
# Tensors and arrays


def _torch():
    """torch and torchvision.ops, imported on first use: the readers import this module for its
    expressions, and importing torch + torchvision took 4-5 s here (a shared 2-core machine)."""
    import torch
    from torchvision import ops

    return torch, ops


def _as_tensor(boxes: torch.Tensor | np.ndarray, name: str = "boxes") -> torch.Tensor:
    torch, _ = _torch()
    t = boxes if isinstance(boxes, torch.Tensor) else torch.from_numpy(np.asarray(boxes))
    if t.ndim != 2 or t.shape[-1] != 4:
        raise ValueError(f"{name}: expected shape [N, 4], got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64 if isinstance(boxes, np.ndarray) else torch.float32)
    return t


def _like(result: torch.Tensor, reference: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    return result if isinstance(reference, _torch()[0].Tensor) else result.numpy()


def xyxy_to_xywh(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[N, 4]`` xyxy pixels -> COCO xywh pixels (top-left corner, width, height)."""
    return _like(_torch()[1].box_convert(_as_tensor(boxes), "xyxy", "xywh"), boxes)


def xywh_to_xyxy(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[N, 4]`` COCO xywh pixels -> xyxy pixels."""
    return _like(_torch()[1].box_convert(_as_tensor(boxes), "xywh", "xyxy"), boxes)


def xyxy_to_cxcywh_norm(boxes: ArrayOrTensor, *, width: float, height: float) -> ArrayOrTensor:
    """``[N, 4]`` xyxy pixels -> YOLO centre/size normalised by the image ``width``/``height`` (px)."""
    _check_size(width, height)
    torch, ops = _torch()
    t = ops.box_convert(_as_tensor(boxes), "xyxy", "cxcywh")
    scale = torch.tensor([width, height, width, height], dtype=t.dtype)
    return _like(t / scale, boxes)


def cxcywh_norm_to_xyxy(boxes: ArrayOrTensor, *, width: float, height: float) -> ArrayOrTensor:
    """``[N, 4]`` YOLO normalised cx, cy, w, h -> xyxy pixels of a ``width`` x ``height`` image."""
    _check_size(width, height)
    torch, ops = _torch()
    t = _as_tensor(boxes)
    scale = torch.tensor([width, height, width, height], dtype=t.dtype)
    return _like(ops.box_convert(t * scale, "cxcywh", "xyxy"), boxes)


def box_area(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[N]`` areas (px²) of ``[N, 4]`` xyxy boxes."""
    return _like(_torch()[1].box_area(_as_tensor(boxes)), boxes)


def box_iou(boxes1: ArrayOrTensor, boxes2: ArrayOrTensor) -> ArrayOrTensor:
    """Pairwise IoU ``[N, M]`` = overlap area / union area of xyxy ``boxes1[N, 4]``, ``boxes2[M, 4]``."""
    a, b = _as_tensor(boxes1, "boxes1"), _as_tensor(boxes2, "boxes2")
    return _like(_torch()[1].box_iou(a, b.to(a.dtype)), boxes1)


def clip_boxes(boxes: ArrayOrTensor, *, width: float, height: float) -> ArrayOrTensor:
    """Clip ``[N, 4]`` xyxy boxes to a ``width`` x ``height`` image (px)."""
    _check_size(width, height)
    return _like(_torch()[1].clip_boxes_to_image(_as_tensor(boxes), (int(height), int(width))), boxes)


def nms(boxes: ArrayOrTensor, scores: ArrayOrTensor, *, iou_threshold: float) -> ArrayOrTensor:
    """Non-maximum suppression: indices ``int64[K]`` of the kept boxes, highest score first.

    Greedy: take the best-scoring box, drop every remaining box whose IoU with it is greater
    than ``iou_threshold``, repeat. ``boxes: [N, 4]`` xyxy, ``scores: [N]``.
    """
    torch, ops = _torch()
    b = _as_tensor(boxes)
    s = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(np.asarray(scores))
    return _like(ops.nms(b, s.to(b.dtype), iou_threshold), boxes)


def batched_nms(
    boxes: ArrayOrTensor, scores: ArrayOrTensor, labels: ArrayOrTensor, *, iou_threshold: float
) -> ArrayOrTensor:
    """Class-wise NMS: boxes only suppress boxes of the same ``labels[N]`` value.

    Returns indices ``int64[K]`` of the kept boxes, highest score first.
    """
    torch, ops = _torch()
    b = _as_tensor(boxes)
    s = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(np.asarray(scores))
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    return _like(ops.batched_nms(b, s.to(b.dtype), lab.to(torch.int64), iou_threshold), boxes)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
