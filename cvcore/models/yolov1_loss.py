"""YOLOv1's grid arithmetic (Redmon et al., 2016): target encoding, the sum-squared loss, decoding.

Pure functions over tensors. Coordinates are fractions of the image (x right, y down, in [0, 1])
unless a name says pixels. Grid cell ``(row, col)`` covers ``[col/S, (col+1)/S) x [row/S, (row+1)/S)``.

Per cell the network predicts B boxes ``(x, y, sqrt(w), sqrt(h), confidence)`` and C conditional
class probabilities. ``x, y`` are the box centre's offset inside its cell (0..1); ``w, h`` are
fractions of the image; confidence stands for ``Pr(object) * IoU(truth, pred)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class GridPrediction:
    """Activated network outputs for N images, grid S, B boxes per cell, C classes.

    xy: float[N, S, S, B, 2] centre offsets in the cell; wh_sqrt: float[N, S, S, B, 2] square
    roots of width and height (image fractions); conf: float[N, S, S, B] in [0, 1];
    class_prob: float[N, S, S, C], each row summing to 1.
    """

    xy: Tensor
    wh_sqrt: Tensor
    conf: Tensor
    class_prob: Tensor


@dataclass(frozen=True)
class GridTarget:
    """Ground truth on the grid: at most one object per cell (YOLOv1's known limit).

    has_object: bool[N, S, S]; box: float[N, S, S, 4] xyxy fractions; xy: float[N, S, S, 2]
    centre offsets in the cell; wh_sqrt: float[N, S, S, 2]; class_onehot: float[N, S, S, C].
    Cells without an object hold zeros.
    """

    has_object: Tensor
    box: Tensor
    xy: Tensor
    wh_sqrt: Tensor
    class_onehot: Tensor


def split_output(raw: Tensor, *, num_boxes: int) -> GridPrediction:
    """Raw head output ``float[N, S, S, B*5 + C]`` -> GridPrediction.

    The paper's last layer is linear. Here x, y, sqrt(w), sqrt(h) and confidence go through a
    sigmoid and the class scores through a softmax, so every quantity stays in its valid range
    (a negative sqrt(w) or a confidence above 1 cannot occur) and the class-specific score is a
    product of two probabilities; the loss on top is the paper's sum of squares.
    """
    n, s, s2, depth = raw.shape
    boxes = raw[..., : num_boxes * 5].reshape(n, s, s2, num_boxes, 5).sigmoid()
    return GridPrediction(
        xy=boxes[..., 0:2],
        wh_sqrt=boxes[..., 2:4],
        conf=boxes[..., 4],
        class_prob=raw[..., num_boxes * 5 :].softmax(-1),
    )


def encode_targets(boxes: list[Tensor], labels: list[Tensor], *, grid: int, num_classes: int) -> GridTarget:
    """Place each object in the cell holding its box centre.

    boxes: per image ``float[n_i, 4]`` xyxy image fractions; labels: per image ``int64[n_i]`` in
    ``0..num_classes-1``. When several centres fall in one cell the largest box is kept (the grid
    has room for one object per cell; which one wins must not depend on annotation order).
    """
    n = len(boxes)
    device = boxes[0].device if n else torch.device("cpu")
    all_boxes = torch.cat([b.reshape(-1, 4).float() for b in boxes]) if n else torch.zeros(0, 4)
    all_labels = torch.cat([lab.reshape(-1).long() for lab in labels]) if n else torch.zeros(0, dtype=torch.long)
    image = (
        torch.cat([torch.full((len(b),), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)])
        if n
        else all_labels
    )
    if len(all_labels) and (all_labels.min() < 0 or all_labels.max() >= num_classes):
        raise ValueError(f"YOLOv1 targets: labels must be in 0..{num_classes - 1}, got {all_labels.unique().tolist()}")

    centre = (all_boxes[:, :2] + all_boxes[:, 2:]) / 2
    wh = (all_boxes[:, 2:] - all_boxes[:, :2]).clamp(min=0)
    cell = (centre * grid).floor().long().clamp(0, grid - 1)  # [M, 2] as (col, row)
    flat = (image * grid + cell[:, 1]) * grid + cell[:, 0]
    keep = _largest_per_cell(flat, wh[:, 0] * wh[:, 1])

    has_object = torch.zeros(n * grid * grid, dtype=torch.bool, device=device)
    box = torch.zeros(n * grid * grid, 4, device=device)
    xy = torch.zeros(n * grid * grid, 2, device=device)
    wh_sqrt = torch.zeros(n * grid * grid, 2, device=device)
    onehot = torch.zeros(n * grid * grid, num_classes, device=device)
    idx = flat[keep]
    has_object[idx] = True
    box[idx] = all_boxes[keep]
    xy[idx] = centre[keep] * grid - cell[keep].float()
    wh_sqrt[idx] = wh[keep].sqrt()
    onehot[idx] = F.one_hot(all_labels[keep], num_classes).float()
    shape = (n, grid, grid)
    return GridTarget(
        has_object.view(shape),
        box.view(*shape, 4),
        xy.view(*shape, 2),
        wh_sqrt.view(*shape, 2),
        onehot.view(*shape, num_classes),
    )


def predicted_boxes(pred: GridPrediction) -> Tensor:
    """Boxes of every predictor as xyxy image fractions: ``float[N, S, S, B, 4]`` (not clipped)."""
    s = pred.xy.shape[1]
    steps = torch.arange(s, device=pred.xy.device, dtype=pred.xy.dtype)
    offset = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), dim=-1)  # [S(row), S(col), 2] as (col, row)
    centre = (pred.xy + offset[None, :, :, None, :]) / s
    half = pred.wh_sqrt.square() / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes: ``a[..., 4], b[..., 4]`` (broadcast) -> ``[...]``.

    torchvision.ops.box_iou is pairwise (all N x M pairs); here each predictor meets one truth.
    """
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def yolo_loss(
    pred: GridPrediction, target: GridTarget, *, lambda_coord: float = 5.0, lambda_noobj: float = 0.5
) -> dict[str, Tensor]:
    """YOLOv1's sum-squared loss, per image (summed over the grid, averaged over the batch).

    In a cell with an object, the predictor whose box has the highest IoU with the truth is
    *responsible* (ties: the first). Terms, each already weighted (the total is their sum):

    - ``coord``: lambda_coord * sum over responsible of (x-x')^2 + (y-y')^2 + (sqrt w - sqrt w')^2 + (sqrt h - sqrt h')^2;
    - ``obj``: sum over responsible of (C - IoU(pred, truth))^2, the IoU taken as a constant;
    - ``noobj``: lambda_noobj * sum over all other predictors of C^2;
    - ``class``: sum over cells with an object of sum_c (p(c) - onehot(c))^2.
    """
    iou = paired_iou(predicted_boxes(pred), target.box[..., None, :]).detach()  # [N, S, S, B]
    best = F.one_hot(iou.argmax(-1), iou.shape[-1]).bool()
    responsible = best & target.has_object[..., None]
    n = max(pred.conf.shape[0], 1)
    resp = responsible.float()
    coord_err = (pred.xy - target.xy[..., None, :]).square().sum(-1) + (
        pred.wh_sqrt - target.wh_sqrt[..., None, :]
    ).square().sum(-1)
    return {
        "coord": lambda_coord * (resp * coord_err).sum() / n,
        "obj": (resp * (pred.conf - iou).square()).sum() / n,
        "noobj": lambda_noobj * ((1 - resp) * pred.conf.square()).sum() / n,
        "class": (target.has_object[..., None].float() * (pred.class_prob - target.class_onehot).square()).sum() / n,
    }


def decode(
    pred: GridPrediction,
    image_sizes: list[tuple[int, int]],
    *,
    score_threshold: float = 0.01,
    nms_iou: float = 0.5,
    max_detections: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections per image in its own pixels: ``[dict(boxes float[K, 4] xyxy px, labels int64[K], scores float[K])]``.

    Every predictor proposes its box once per class with the class-specific score
    ``confidence * Pr(class | object)``; scores above ``score_threshold`` survive, then NMS per
    class (torchvision.ops.batched_nms) and the ``max_detections`` best. ``image_sizes`` holds
    ``(height, width)`` per image; boxes are clipped to the image.
    """
    boxes = predicted_boxes(pred).clamp(0, 1).flatten(1, 3)  # [N, S*S*B, 4]
    scores = (pred.conf[..., None] * pred.class_prob[:, :, :, None, :]).flatten(1, 3)  # [N, S*S*B, C]
    out = []
    for i, (h, w) in enumerate(image_sizes):
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        row, cls = (scores[i] > score_threshold).nonzero(as_tuple=True)
        b, s = boxes[i, row] * scale, scores[i, row, cls]
        keep = batched_nms(b.float(), s.float(), cls, nms_iou)[:max_detections]
        out.append({"boxes": b[keep].float(), "labels": cls[keep], "scores": s[keep].float()})
    return out


def _largest_per_cell(cell: Tensor, area: Tensor) -> Tensor:
    """Indices of the largest-area entry for each distinct ``cell`` value (ties: the first)."""
    if len(cell) == 0:
        return torch.zeros(0, dtype=torch.long, device=cell.device)
    order = torch.argsort(area, descending=True, stable=True)
    _, inverse = torch.unique(cell[order], return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(order), dtype=torch.long, device=cell.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(order), device=cell.device), reduce="amin")
    return order[first]
