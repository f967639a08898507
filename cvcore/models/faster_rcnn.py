"""Faster R-CNN from torchvision's builders: an RPN proposes regions on the shared feature map.

Registered as ``faster_rcnn`` with option ``backbone``: ``resnet18_fpn`` (default, small enough
for CPU), ``resnet34_fpn``, ``resnet50_fpn`` (torchvision's ``fasterrcnn_resnet50_fpn``) or
``mobilenet_v3_large_fpn`` (``fasterrcnn_mobilenet_v3_large_fpn``). torchvision's model is kept
whole as ``detector``; this wrapper only maps labels, since torchvision reserves class 0 for the
background: our labels 0..K-1 go in as 1..K and come out as 0..K-1 again.

Inputs are float [0, 1] images (a list, sizes may differ, or a batch); torchvision's transform
normalises them (ImageNet mean/std) and resizes so the short side is ``min_size`` (long side at
most ``max_size``), and maps boxes back: eval outputs are in each input image's pixels.
Nothing downloads: builders get ``weights=None, weights_backbone=None``; weights come from
``build_model(..., pretrained=...)`` (local torch hub cache or a file) after building.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision import models as tvm
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FasterRCNN as TorchvisionFasterRCNN

from cvcore.config import PartialRunConfig
from cvcore.models._registry import register_model
from cvcore.models._tv_detector import TorchvisionDetector, body_sources, resize_limits
from cvcore.models.capabilities import Finetunable, Postprocessable, Transferable
from cvcore.models.classifiers import RESNET_STAGES, RESNET_WEIGHTS
from cvcore.models.pretrained import TorchvisionSource

BACKBONES = ("resnet18_fpn", "resnet34_fpn", "resnet50_fpn", "mobilenet_v3_large_fpn")

# Run settings for the built-in 128-px shapes data on 2 CPU cores. Measured with a bare loop
# (benchmarks/RESULTS.md, "Models"): ResNet-18 FPN from scratch, SGD 0.02, batch 8: mAP@0.5
# 0.73 after 180 steps (6 epochs of 240 images), 0.80 (mAP 0.58) after 240.
FASTER_RCNN_DEFAULTS = PartialRunConfig(
    data={"img_size": 128},
    train={
        "epochs": 8, "batch_size": 8, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
        "scheduler": "cosine", "warmup_epochs": 1.0,
    },
)  # fmt: skip

# Settings for images whose short side is below 512 px. Anchors one octave smaller than
# torchvision's 800-px COCO setting, so 10-60 px objects on 128-256 px images have anchors of
# their size. Fewer proposals and sampled RoIs than torchvision's COCO values (2000 proposals,
# 512 RoIs per image), which are sized for ~7 objects on 800-px images: a training step on
# 128-px images is then ~2.7x cheaper (6.4 -> 2.4 CPU-s per 8 images, measured) for the same
# positives per image.
SMALL_IMAGE_ANCHORS_FPN = ((16,), (32,), (64,), (128,), (256,))
SMALL_IMAGE_ANCHORS_MOBILENET = ((16, 32, 64, 128, 256),) * 3
SMALL_IMAGE_SAMPLING = {
    "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 300, "box_batch_size_per_image": 128,
}  # fmt: skip


class FasterRCNN(TorchvisionDetector):
    """torchvision Faster R-CNN with labels 0..K-1 (see the module docstring); the plumbing
    (interface, fine-tuning, transfer, decoding) is cvcore.models._tv_detector's. Decoding
    settings live on the RoI heads."""

    label_offset = 1  # torchvision's class 0 is the background
    decoding_module = "roi_heads"
    display_name = "Faster R-CNN"
    registry_name = "faster_rcnn"

    @property
    def num_classes(self) -> int:
        return self.detector.roi_heads.box_predictor.cls_score.out_features - 1


@register_model(
    "faster_rcnn",
    task="detection",
    defaults=FASTER_RCNN_DEFAULTS,
    capabilities=(Finetunable, Transferable, Postprocessable),
)
def faster_rcnn(
    num_classes: int,
    *,
    backbone: str = "resnet18_fpn",
    img_size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    anchor_sizes: tuple[tuple[int, ...], ...] | None = None,
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    trainable_backbone_layers: int | None = None,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    **detector_options: Any,
) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` classes (ours, without background).

    - ``min_size``/``max_size``: torchvision's resize (short side / long-side cap, px). Default:
      ``img_size`` when given (no rescaling of fixed-size training images), else 800; max_size
      defaults to ``min_size * 1333 / 800`` as in torchvision.
    - ``anchor_sizes``: one tuple per feature level (5 for ResNet FPN, 3 with 5 sizes each for
      MobileNet). Default: torchvision's when ``min_size >= 512``, one octave smaller below.
    - ``trainable_backbone_layers``: body stages that train, counted from the top (ResNet 0-5,
      MobileNet 0-6); the others are frozen with frozen batch norm. Default: all. torchvision
      ignores this option without its weights, so it is applied here.
    - ``score_threshold``, ``nms_iou``, ``max_detections``: eval decoding (roi_heads).
    - ``detector_options``: any other keyword of torchvision's ``FasterRCNN`` (e.g.
      ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``). Below 512 px the proposal
      and RoI sampling counts default to ``SMALL_IMAGE_SAMPLING``, torchvision's otherwise.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"faster_rcnn: unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    min_size, max_size = resize_limits(min_size, max_size, img_size)
    kwargs = {
        "min_size": min_size, "max_size": max_size, "box_score_thresh": score_threshold, "box_nms_thresh": nms_iou,
        "box_detections_per_img": max_detections, **(SMALL_IMAGE_SAMPLING if min_size < 512 else {}), **detector_options,
    }  # fmt: skip
    if backbone == "mobilenet_v3_large_fpn":
        detector = fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs
        )
        stages = _mobilenet_stages(detector.backbone.body)
        sources = (
            TorchvisionSource(FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1, (("", "detector."),)),
            *body_sources(tvm.MobileNet_V3_Large_Weights, "features."),
        )
        default_anchors = SMALL_IMAGE_ANCHORS_MOBILENET if min_size < 512 else ((32, 64, 128, 256, 512),) * 3
    else:
        detector = _resnet_fpn_detector(backbone.removesuffix("_fpn"), num_classes + 1, kwargs)
        stages = RESNET_STAGES
        sources = (
            *(
                (TorchvisionSource(FasterRCNN_ResNet50_FPN_Weights.COCO_V1, (("", "detector."),)),)
                if backbone == "resnet50_fpn"
                else ()
            ),
            *body_sources(RESNET_WEIGHTS[backbone.removesuffix("_fpn")]),
        )
        default_anchors = SMALL_IMAGE_ANCHORS_FPN if min_size < 512 else ((32,), (64,), (128,), (256,), (512,))
    _set_anchors(detector, anchor_sizes or default_anchors, aspect_ratios)
    return FasterRCNN(
        detector, backbone_stages=stages, sources=sources, trainable_backbone_layers=trainable_backbone_layers
    )


def _resnet_fpn_detector(arch: str, num_classes: int, kwargs: dict[str, Any]) -> TorchvisionFasterRCNN:
    if arch == "resnet50":
        # weights=None: torchvision then uses ordinary BatchNorm2d and trains every layer.
        return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    # resnet_fpn_backbone defaults to FrozenBatchNorm2d, meant for pretrained bodies; a body trained
    # from scratch needs real batch norm (what fasterrcnn_resnet50_fpn picks without weights too).
    body = resnet_fpn_backbone(backbone_name=arch, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    return TorchvisionFasterRCNN(body, num_classes=num_classes, **kwargs)


def _set_anchors(
    detector: TorchvisionFasterRCNN, sizes: tuple[tuple[int, ...], ...], ratios: tuple[float, ...]
) -> None:
    sizes = tuple(tuple(int(s) for s in level) for level in sizes)
    per_location = detector.rpn.head.cls_logits.out_channels
    levels = len(detector.rpn.anchor_generator.sizes)
    if len(sizes) != levels or any(len(level) * len(ratios) != per_location for level in sizes):
        raise ValueError(
            f"faster_rcnn: anchor_sizes needs {levels} levels with {per_location // len(ratios)} sizes each "
            f"(x {len(ratios)} aspect ratios = {per_location} anchors per location), got {sizes}"
        )
    detector.rpn.anchor_generator = AnchorGenerator(sizes, (tuple(ratios),) * levels)


def _mobilenet_stages(body: nn.Module) -> dict[str, tuple[str, ...]]:
    # torchvision's own stage split for MobileNet (backbone_utils._mobilenet_extractor): a stage
    # starts at the first block, at every block flagged _is_cn and at the last conv.
    names = [n for n, _ in body.named_children()]
    starts = (
        [0] + [i for i, (_, b) in enumerate(body.named_children()) if getattr(b, "_is_cn", False)] + [len(names) - 1]
    )
    ends = starts[1:] + [len(names)]
    return {f"stage{k}": tuple(names[a:b]) for k, (a, b) in enumerate(zip(starts, ends))}
