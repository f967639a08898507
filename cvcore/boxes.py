"""Box formats, IoU and non-maximum suppression: a thin, typed layer over ``torchvision.ops``.

Inside cvflow boxes are **xyxy absolute pixels** (``x2 - x1`` is the width, no +1). The other
formats exist only at the edges: COCO ``xywh`` (top-left corner, width, height, pixels) and YOLO
normalised ``cxcywh`` (centre and size divided by the image width/height, in [0, 1]).

Every function takes a ``torch.Tensor[N, 4]`` or a ``numpy.ndarray[N, 4]`` and returns the same
kind (NumPy arrays go through ``torch.from_numpy`` without a copy), so data code and model code
share one implementation.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torchvision import ops

ArrayOrTensor = TypeVar("ArrayOrTensor", torch.Tensor, np.ndarray)

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_norm_to_xyxy",
    "nms",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh_norm",
    "xyxy_to_xywh",
]


def _as_tensor(boxes: torch.Tensor | np.ndarray, name: str = "boxes") -> torch.Tensor:
    t = boxes if isinstance(boxes, torch.Tensor) else torch.from_numpy(np.asarray(boxes))
    if t.ndim != 2 or t.shape[-1] != 4:
        raise ValueError(f"{name}: expected shape [N, 4], got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64 if isinstance(boxes, np.ndarray) else torch.float32)
    return t


def _like(result: torch.Tensor, reference: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    return result if isinstance(reference, torch.Tensor) else result.numpy()


def xyxy_to_xywh(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[N, 4]`` xyxy pixels -> COCO xywh pixels (top-left corner, width, height)."""
    return _like(ops.box_convert(_as_tensor(boxes), "xyxy", "xywh"), boxes)


def xywh_to_xyxy(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[N, 4]`` COCO xywh pixels -> xyxy pixels."""
    return _like(ops.box_convert(_as_tensor(boxes), "xywh", "xyxy"), boxes)


def xyxy_to_cxcywh_norm(boxes: ArrayOrTensor, *, width: float, height: float) -> ArrayOrTensor:
    """``[N, 4]`` xyxy pixels -> YOLO centre/size normalised by the image ``width``/``height`` (px)."""
    _check_size(width, height)
    t = ops.box_convert(_as_tensor(boxes), "xyxy", "cxcywh")
    scale = torch.tensor([width, height, width, height], dtype=t.dtype)
    return _like(t / scale, boxes)


def cxcywh_norm_to_xyxy(boxes: ArrayOrTensor, *, width: float, height: float) -> ArrayOrTensor:
    """``[N, 4]`` YOLO normalised cx, cy, w, h -> xyxy pixels of a ``width`` x ``height`` image."""
    _check_size(width, height)
    t = _as_tensor(boxes)
    scale = torch.tensor([width, height, width, height], dtype=t.dtype)
    return _like(ops.box_convert(t * scale, "cxcywh", "xyxy"), boxes)


def box_area(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[N]`` areas (px²) of ``[N, 4]`` xyxy boxes."""
    return _like(ops.box_area(_as_tensor(boxes)), boxes)


def box_iou(boxes1: ArrayOrTensor, boxes2: ArrayOrTensor) -> ArrayOrTensor:
    """Pairwise IoU ``[N, M]`` = overlap area / union area of xyxy ``boxes1[N, 4]``, ``boxes2[M, 4]``."""
    a, b = _as_tensor(boxes1, "boxes1"), _as_tensor(boxes2, "boxes2")
    return _like(ops.box_iou(a, b.to(a.dtype)), boxes1)


def clip_boxes(boxes: ArrayOrTensor, *, width: float, height: float) -> ArrayOrTensor:
    """Clip ``[N, 4]`` xyxy boxes to a ``width`` x ``height`` image (px)."""
    _check_size(width, height)
    return _like(ops.clip_boxes_to_image(_as_tensor(boxes), (int(height), int(width))), boxes)


def nms(boxes: ArrayOrTensor, scores: ArrayOrTensor, *, iou_threshold: float) -> ArrayOrTensor:
    """Non-maximum suppression: indices ``int64[K]`` of the kept boxes, highest score first.

    Greedy: take the best-scoring box, drop every remaining box whose IoU with it is greater
    than ``iou_threshold``, repeat. ``boxes: [N, 4]`` xyxy, ``scores: [N]``.
    """
    b = _as_tensor(boxes)
    s = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(np.asarray(scores))
    return _like(ops.nms(b, s.to(b.dtype), iou_threshold), boxes)


def batched_nms(
    boxes: ArrayOrTensor, scores: ArrayOrTensor, labels: ArrayOrTensor, *, iou_threshold: float
) -> ArrayOrTensor:
    """Class-wise NMS: boxes only suppress boxes of the same ``labels[N]`` value.

    Returns indices ``int64[K]`` of the kept boxes, highest score first.
    """
    b = _as_tensor(boxes)
    s = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(np.asarray(scores))
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    return _like(ops.batched_nms(b, s.to(b.dtype), lab.to(torch.int64), iou_threshold), boxes)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
