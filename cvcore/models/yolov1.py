"""YOLOv1 (Redmon et al., 2016): one network maps an image to an S x S x (B*5 + C) grid.

The backbone is a registered classifier's convolutional trunk (ResNet-18 by default), cut at the
coarsest stride that is still finer than a grid cell (stride 32 at the paper's 448 px, 16 at
128 px). Two heads turn its feature map into the grid:

- ``head="conv"`` (default): convolutions whose weights are shared by all cells, the map brought
  to S x S by pooling or interpolation. On the built-in 240-image data it learns several times
  faster than the paper's head (benchmarks/RESULTS.md, "Models").
- ``head="fc"``: the paper's - convolutions, then two fully connected layers producing the whole
  grid, every cell with its own output weights.

Everything the notes and the paper fix is the same for both: the S x S x (B*5 + C) output, the
responsible predictor, the sum-squared loss and the decoding (cvcore.models.yolov1_loss).

Interface (torchvision's detection convention, docs/ARCHITECTURE.md §4): input is a list of
``float[3, H, W]`` images in [0, 1] (sizes may differ) or a batch ``float[N, 3, H, W]``; each is
resized to ``img_size`` x ``img_size`` inside. Train mode ``model(images, targets)`` with targets
``[dict(boxes=float[n, 4] xyxy pixels of that input image, labels=int64[n] in 0..C-1)]`` returns
``{"coord", "obj", "noobj", "class"}`` (weighted losses; the total is their sum). Eval mode
``model(images)`` returns ``[dict(boxes=float32[K, 4] xyxy pixels of the input image,
labels=int64[K], scores=float32[K])]``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvcore.config import PartialRunConfig
from cvcore.models._registry import model_spec, register_model
from cvcore.models.capabilities import Finetunable, GridDetector, Postprocessable, Transferable, TrunkSource
from cvcore.models.normalize import ImageNetNormalize
from cvcore.models.yolov1_loss import decode, encode_targets, split_output, yolo_loss

# Run settings measured on real data (digits-det-dev: 16-48 px handwritten digits on cluttered
# 128-px canvases) and the built-in shapes, 2 CPU cores (benchmarks/RESULTS.md, "Detector recipes
# on real data"). A 16 x 16 grid (8-px cells, so the trunk is cut at stride 8) instead of the
# paper's 7 x 7: val mAP@0.5 0.86 after 8 epochs against 0.31 after 30 with 7 x 7 on stride 16,
# where one 18-px cell had to hold several digits and a 16-px digit had barely a pixel of its own
# in the map. No augmentation: it slowed learning at this budget (0.74 with photometric + affine).
YOLOV1_DEFAULTS = PartialRunConfig(
    data={"img_size": 128},
    model={"options": {"grid": 16}},
    augment={"preset": "none"},
    train={
        "epochs": 12, "batch_size": 16, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-4, "scheduler": "cosine",
        "warmup_epochs": 1.0,
    },
)  # fmt: skip


class YOLOv1(nn.Module, Finetunable, Transferable, Postprocessable, GridDetector):
    """YOLOv1 detector; see the module docstring for inputs and outputs.

    Capabilities (cvcore.models.capabilities): Finetunable (``backbone``: the trunk, keys named
    as in the source classifier, so a classifier checkpoint's backbone transfers by name;
    ``backbone_stages``), Transferable (``torchvision_sources``, ``transfer_renames``),
    Postprocessable (the decoding settings ``score_threshold``, ``nms_iou``, ``max_detections``,
    changed with ``set_postprocess``), GridDetector (``grid``, ``boxes_per_cell``). Also ``head``.

    Options: ``backbone`` (a registered classifier), ``img_size`` (square input, px; 448 in the
    paper), ``grid`` (S), ``boxes_per_cell`` (B), ``head`` ("conv" or the paper's "fc"; ``hidden``
    and ``dropout`` size the fc head), ``feature_stride`` (trunk output stride; None: the
    coarsest not above a cell's size in pixels), ``lambda_coord``, ``lambda_noobj`` (the paper's
    5 and 0.5), ``score_threshold``, ``nms_iou``, ``max_detections`` (decoding).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "resnet18",
        img_size: int = 448,
        grid: int = 7,
        boxes_per_cell: int = 2,
        head: str = "conv",
        feature_stride: int | None = None,
        hidden: int = 512,
        dropout: float = 0.5,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        score_threshold: float = 0.01,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ):
        super().__init__()
        if img_size < 32 or grid < 1 or boxes_per_cell < 1:
            raise ValueError(
                f"YOLOv1: need img_size >= 32, grid >= 1, boxes_per_cell >= 1; got {img_size}, {grid}, {boxes_per_cell}"
            )
        trunk_source = _classifier_trunk_source(backbone)
        self.num_classes = num_classes
        self.img_size = img_size
        self.grid = grid
        self.boxes_per_cell = boxes_per_cell
        self.lambda_coord = lambda_coord
        self.lambda_noobj = lambda_noobj
        self.normalize = ImageNetNormalize()
        self.feature_stride = feature_stride or _grid_stride(trunk_source.feature_cuts, img_size / grid)
        self.backbone = trunk_source.feature_extractor(stride=self.feature_stride)
        self.backbone_stages = {k: v for k, v in trunk_source.backbone_stages.items() if _has_all(self.backbone, v)}
        self.torchvision_sources = trunk_source.torchvision_sources
        self.transfer_renames = trunk_source.transfer_renames
        depth = boxes_per_cell * 5 + num_classes
        channels = trunk_source.feature_cuts[self.feature_stride][1]
        if head == "fc":
            self.head = FullyConnectedGridHead(
                channels, _feature_size(self.backbone, img_size), grid=grid, depth=depth, hidden=hidden, dropout=dropout
            )
        elif head == "conv":
            self.head = ConvGridHead(channels, grid=grid, depth=depth)
        else:
            raise ValueError(f"YOLOv1: head must be 'fc' (the paper's) or 'conv', got {head!r}")
        with torch.no_grad():
            # Confidences start near 0.12 rather than sigmoid(0) = 0.5 (the paper's linear output
            # starts near 0): at 0.5 the first steps only learn "no object" for S*S*B predictors.
            # Not lower, where the sigmoid's small slope slows the rise of responsible confidences.
            self.head.output_bias().view(-1, depth)[:, 4 : boxes_per_cell * 5 : 5] = -2.0
        self.set_postprocess(score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections)

    def set_postprocess(
        self, *, score_threshold: float | None = None, nms_iou: float | None = None, max_detections: int | None = None
    ) -> None:
        """Change eval-mode decoding (class-specific score threshold, NMS IoU, detections per image)."""
        if score_threshold is not None:
            self.score_threshold = float(score_threshold)
        if nms_iou is not None:
            self.nms_iou = float(nms_iou)
        if max_detections is not None:
            self.max_detections = int(max_detections)

    def forward(self, images: Tensor | list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        batch, sizes = self._prepare(images)
        # Loss and decoding in float32 even under autocast: squared errors of small offsets.
        raw = self.head(self.backbone(self.normalize(batch))["out"]).float()
        pred = split_output(raw, num_boxes=self.boxes_per_cell)
        if self.training:
            if targets is None:
                raise ValueError("YOLOv1 in train mode needs targets (list of dict(boxes, labels))")
            if len(targets) != len(sizes):
                raise ValueError(f"YOLOv1: {len(sizes)} images but {len(targets)} targets")
            boxes = [_fractions(t["boxes"], size, raw.device) for t, size in zip(targets, sizes)]
            labels = [torch.as_tensor(t["labels"], device=raw.device) for t in targets]
            target = encode_targets(boxes, labels, grid=self.grid, num_classes=self.num_classes)
            return yolo_loss(pred, target, lambda_coord=self.lambda_coord, lambda_noobj=self.lambda_noobj)
        return decode(
            pred, sizes, score_threshold=self.score_threshold, nms_iou=self.nms_iou, max_detections=self.max_detections
        )

    def _prepare(self, images: Tensor | list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Stack the images at ``img_size`` x ``img_size``; also return each one's (height, width)."""
        size = (self.img_size, self.img_size)
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError(
                    f"YOLOv1: expected images float[N, 3, H, W] or a list of [3, H, W], got shape {tuple(images.shape)}"
                )
            sizes = [tuple(images.shape[-2:])] * images.shape[0]
            return (images if images.shape[-2:] == size else _resize(images, size)), sizes
        if not images:
            raise ValueError("YOLOv1: empty image list")
        sizes = [tuple(im.shape[-2:]) for im in images]
        return torch.stack([im if tuple(im.shape[-2:]) == size else _resize(im[None], size)[0] for im in images]), sizes


class FullyConnectedGridHead(nn.Module):
    """The paper's head: convolutions, then two fully connected layers that output the whole grid.

    ``float[N, C, h, w]`` trunk features -> raw ``float[N, S, S, depth]``. Every cell has its own
    output weights and sees the whole image. The first linear layer's size depends on ``h x w``,
    hence on the input size fixed at construction.
    """

    def __init__(
        self, channels: int, feature_size: tuple[int, int], *, grid: int, depth: int, hidden: int, dropout: float
    ):
        super().__init__()
        self.grid, self.depth = grid, depth
        self.convs = nn.Sequential(
            _conv_bn(channels, 256, 3),
            _conv_bn(256, 256, 3),
            _conv_bn(256, 64, 1),  # squeeze channels so the first linear layer stays small at 448 px
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * feature_size[0] * feature_size[1], hidden),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, grid * grid * depth),
        )

    def output_bias(self) -> Tensor:
        """The last layer's bias, laid out as ``[S, S, depth]`` when viewed so."""
        return self.fc[-1].bias

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.convs(features)).view(-1, self.grid, self.grid, self.depth)


class ConvGridHead(nn.Module):
    """A convolutional head: the same weights predict every cell (as from YOLOv2 on).

    ``float[N, C, h, w]`` -> raw ``float[N, S, S, depth]``. The feature map is brought to S x S
    between the convolutions: average-pooled when larger (448 px: 14 -> 7, the paper's cell
    size), bilinearly interpolated when smaller (128 px: 4 -> 7). Sharing weights across cells
    means each object trains the one predictor, which learns from far fewer images than the
    per-cell weights of the fully connected head.
    """

    def __init__(self, channels: int, *, grid: int, depth: int, width: int = 256):
        super().__init__()
        self.grid = grid
        self.reduce = _conv_bn(channels, width, 3)
        self.convs = nn.Sequential(_conv_bn(width, width, 3), _conv_bn(width, width, 3))
        self.out = nn.Conv2d(width, depth, 1)

    def output_bias(self) -> Tensor:
        """The last layer's bias: ``float[depth]``."""
        return self.out.bias

    def forward(self, features: Tensor) -> Tensor:
        x = self.reduce(features)
        s = self.grid
        if x.shape[-2] >= s and x.shape[-1] >= s:
            x = F.adaptive_avg_pool2d(x, s)
        else:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.out(self.convs(x)).permute(0, 2, 3, 1)


@register_model(
    "yolov1",
    task="detection",
    defaults=YOLOV1_DEFAULTS,
    capabilities=(Finetunable, Transferable, Postprocessable, GridDetector),
)
def yolov1(num_classes: int, **options: Any) -> YOLOv1:
    """YOLOv1 with a registered classifier's trunk as backbone. Options: see ``YOLOv1``."""
    return YOLOv1(num_classes, **options)


yolov1.__signature__ = inspect.signature(YOLOv1)  # build_model checks options against it


def _classifier_trunk_source(name: str) -> nn.Module:
    spec = model_spec(name)
    if spec.task != "classification":
        raise ValueError(f"YOLOv1 backbone must be a registered classifier, {name!r} is a {spec.task} model")
    if TrunkSource not in spec.capabilities:
        raise ValueError(
            f"YOLOv1 backbone {name!r} offers no convolutional trunk (its registry entry does not claim TrunkSource)"
        )
    # small_input=False: the stride-32 trunk is what makes a 448-px image a 14x14 map.
    return spec.builder(num_classes=1, small_input=False)


def _grid_stride(cuts: dict[int, tuple[str, int]], cell: float) -> int:
    """The coarsest trunk stride that is still at least as fine as a grid cell (``cell`` px).

    448 px / 7 = 64 px cells take ResNet's stride 32 (pooled 2x2 into the grid, as the paper's
    net); 128 px / 7 = 18 px cells take stride 16, so shapes of 10-20 px still have pixels of
    their own in the feature map.
    """
    fitting = [s for s in cuts if s <= cell]
    return max(fitting) if fitting else min(cuts)


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    # Leaky ReLU 0.1 as in the paper; batch norm (YOLOv2's addition) lets it train from scratch quickly.
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)
    )


@torch.no_grad()
def _feature_size(trunk: nn.Module, img_size: int) -> tuple[int, int]:
    # One dry run in eval mode (running statistics untouched) gives the map size at any input size.
    was_training = trunk.training
    trunk.eval()
    try:
        shape = trunk(torch.zeros(1, 3, img_size, img_size))["out"].shape
    finally:
        trunk.train(was_training)
    return int(shape[-2]), int(shape[-1])


def _has_all(module: nn.Module, paths: tuple[str, ...]) -> bool:
    try:
        for path in paths:
            module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    if not images.is_floating_point():
        raise TypeError(f"YOLOv1 takes float images in [0, 1], got dtype {images.dtype}")
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _fractions(boxes: Tensor, size: tuple[int, int], device: torch.device) -> Tensor:
    """xyxy pixels of an image of ``size`` (h, w) -> xyxy fractions of it, clipped to [0, 1]."""
    h, w = size
    plain = torch.as_tensor(boxes).as_subclass(Tensor).to(device=device, dtype=torch.float32).reshape(-1, 4)
    return (plain / torch.tensor([w, h, w, h], dtype=torch.float32, device=device)).clamp(0, 1)
