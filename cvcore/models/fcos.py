"""FCOS (Tian et al., 2019): an anchor-free one-stage detector, assembled from torchvision's parts.

torchvision's ``FCOS`` class does the detection work - per-location classification with sigmoid
focal loss, (l, t, r, b) box regression with GIoU loss, centre-ness, centre sampling, scale
ranges per pyramid level, batched NMS - and this module only chooses the parts for small objects
on small images, and maps our interface onto it:

- backbone: a ResNet body (``resnet18`` by default) under a ``FeaturePyramidNetwork`` on its
  stride-8 and stride-16 stages (P3, P4) plus one max-pooled level (P5). P3's 8-px cells give
  16-48 px objects 2-6 locations each; a stride-16 map gives them 1-3. The stride-32 stage
  (``stages`` option) is left out by default: it holds 8 of ResNet-18's 11 M weights, sees a
  4 x 4 map at 128 px, and on digits-det-dev it slowed learning (mAP@0.5 0.42 against 0.59
  after 8 epochs, benchmarks/RESULTS.md).
- head: torchvision's ``FCOSHead`` (GroupNorm conv towers shared by all levels), narrower and
  shallower than the COCO setting (``fpn_channels=128``, ``head_convs=2`` instead of 256 and 4):
  at 128 px the COCO head alone would cost several times the backbone.
- labels: FCOS has no background class (a sigmoid per class), so our labels 0..K-1 go in as they
  are and ``num_classes`` = K.

Interface (docs/ARCHITECTURE.md §4, as every detector): input a list of ``float[3, H, W]`` images in [0, 1]
(sizes may differ) or a batch ``float[N, 3, H, W]``; torchvision's transform normalises them
(ImageNet mean/std) and resizes so the short side is ``min_size`` (default ``img_size``). Train
mode ``model(images, targets)`` returns ``{"classification", "bbox_regression", "bbox_ctrness"}``
(each a mean over foreground locations; the total is their sum). Eval mode returns
``[dict(boxes=float32[K, 4] xyxy pixels of the input image, labels=int64[K], scores=float32[K])]``.
Nothing downloads: weights come from ``build_model(..., pretrained=...)`` after building.
"""

from __future__ import annotations

import torch
from torchvision import models as tvm
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead

from cvcore.config import PartialRunConfig
from cvcore.models._registry import register_model
from cvcore.models._tv_detector import TorchvisionDetector, body_sources, resize_limits
from cvcore.models.capabilities import Finetunable, Postprocessable, Transferable
from cvcore.models.classifiers import RESNET_STAGES, RESNET_WEIGHTS, out_channels

BACKBONES = tuple(RESNET_WEIGHTS)
_RESNET_BUILDERS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}

# Run settings measured on real data (digits-det-dev, 128 px, 2 CPU cores) and the built-in shapes:
# benchmarks/RESULTS.md, "Detector recipes on real data".
# No augmentation: at these budgets it slowed learning more than it helped generalise (YOLOv1 on
# the same set: val mAP@0.5 0.86 without, 0.74 with photometric + affine, after 8 epochs).
FCOS_DEFAULTS = PartialRunConfig(
    data={"img_size": 128},
    augment={"preset": "none"},
    train={
        "epochs": 16, "batch_size": 16, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-4, "scheduler": "cosine",
        "warmup_epochs": 1.0,
    },
)  # fmt: skip


class FCOS(TorchvisionDetector):
    """torchvision FCOS with our interface (see the module docstring); the plumbing (interface,
    fine-tuning, transfer, decoding) is cvcore.models._tv_detector's. ``backbone`` is the ResNet
    body under the FPN, keys named as in torchvision's ResNet and our classifiers' trunks; its
    stages are those built (``layer4`` only when ``stages`` asks for it)."""

    label_offset = 0  # one sigmoid per class, no background class
    decoding_module = ""  # torchvision's FCOS holds its decoding settings itself
    display_name = "FCOS"
    registry_name = "fcos"

    @property
    def num_classes(self) -> int:
        return self.detector.head.classification_head.num_classes


@register_model(
    "fcos", task="detection", defaults=FCOS_DEFAULTS, capabilities=(Finetunable, Transferable, Postprocessable)
)
def fcos(
    num_classes: int,
    *,
    backbone: str = "resnet18",
    img_size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    fpn_channels: int = 128,
    head_convs: int = 2,
    stages: tuple[str, ...] = ("layer2", "layer3"),
    anchor_sizes: tuple[int, ...] | None = None,
    center_sampling_radius: float = 1.5,
    trainable_backbone_layers: int | None = None,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    topk_candidates: int = 1000,
) -> FCOS:
    """FCOS for ``num_classes`` classes on a ResNet + FPN backbone.

    - ``backbone``: ``resnet18`` (default), ``resnet34`` or ``resnet50`` body, trained from
      scratch with batch norm unless ``pretrained`` loads weights.
    - ``min_size``/``max_size``: torchvision's resize (short side / long-side cap, px). Default:
      ``img_size`` (no rescaling of fixed-size images), else 800; ``max_size`` defaults to
      ``min_size * 1333 / 800``.
    - ``fpn_channels``: width of the FPN and the head towers (a multiple of 32: GroupNorm groups);
      ``head_convs``: conv layers in each tower (torchvision's COCO model: 256 and 4).
    - ``stages``: the ResNet stages under the FPN (``layer2`` = stride 8 ... ``layer4`` = 32), one
      pyramid level each, plus a max-pooled level above the last; later stages are not built.
    - ``anchor_sizes``: one "anchor" (a point with a scale) per level, px; FCOS sends an object to
      the level where its largest edge distance lies in (4, 8) x this size (first level from 0,
      last to infinity). Default: each level's stride (torchvision's setting).
    - ``center_sampling_radius``: locations within this many strides of a box centre are positive.
    - ``trainable_backbone_layers``: body stages that train, counted from the top (0 to the
      number of built stages: stem, layer1 ... the last of ``stages``); the others are frozen.
      Default: all.
    - ``score_threshold``, ``nms_iou``, ``max_detections``, ``topk_candidates``: eval decoding.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"fcos: unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if fpn_channels < 32 or fpn_channels % 32:
        raise ValueError(f"fcos: fpn_channels must be a positive multiple of 32 (GroupNorm), got {fpn_channels}")
    if head_convs < 1:
        raise ValueError(f"fcos: head_convs must be >= 1, got {head_convs}")
    stages = tuple(stages)
    if (
        not stages
        or any(st not in ("layer1", "layer2", "layer3", "layer4") for st in stages)
        or list(stages) != sorted(set(stages))
    ):
        raise ValueError(f"fcos: stages must be increasing ResNet stages among layer1..layer4, got {stages}")
    strides = [2 ** (int(st[-1]) + 1) for st in stages]
    anchor_sizes = tuple(anchor_sizes) if anchor_sizes is not None else (*strides, strides[-1] * 2)
    if len(anchor_sizes) != len(stages) + 1:
        raise ValueError(
            f"fcos: anchor_sizes needs one size per level ({len(stages)} stages + the pooled level), got {anchor_sizes}"
        )
    min_size, max_size = resize_limits(min_size, max_size, img_size)
    body = _RESNET_BUILDERS[backbone](weights=None)
    channels = [out_channels(getattr(body, st)) for st in stages]
    fpn = BackboneWithFPN(body, {st: str(i) for i, st in enumerate(stages)}, channels, fpn_channels)
    head = FCOSHead(fpn_channels, num_anchors=1, num_classes=num_classes, num_convs=head_convs)
    with torch.no_grad():
        # torchvision starts the (l, t, r, b) outputs at 0 behind a ReLU: boxes of zero size, whose
        # GIoU gradient is zero too. From scratch (no pretrained features to lift them early) the
        # outputs then drift below 0 during warm-up and the ReLU keeps them there: measured on
        # digits-det-dev, GIoU loss stuck at 1.000 for 12 epochs. Starting at 1 (a box one
        # anchor size from the point on each side) gives every positive a gradient from step 1.
        head.regression_head.bbox_reg.bias.fill_(1.0)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((1.0,),) * len(anchor_sizes))
    detector = TorchvisionFCOS(
        fpn, num_classes, min_size=min_size, max_size=max_size, anchor_generator=anchors, head=head,
        center_sampling_radius=center_sampling_radius, score_thresh=score_threshold, nms_thresh=nms_iou,
        detections_per_img=max_detections, topk_candidates=topk_candidates,
    )  # fmt: skip
    sources = body_sources(RESNET_WEIGHTS[backbone])
    return FCOS(
        detector, backbone_stages=RESNET_STAGES, sources=sources, trainable_backbone_layers=trainable_backbone_layers
    )
