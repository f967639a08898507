"""Fast R-CNN (Girshick 2015): the CNN runs once per image; each region is pooled from its map.

Region proposals still come from outside the network (selective search by default, as in the
paper; cvcore.models.proposals), cached per image by content digest because selective search
costs far more than the CNN on small images. The rest is torchvision's detection machinery,
which is exactly Fast R-CNN's second stage (Faster R-CNN only adds the RPN in front of it):

- ``GeneralizedRCNNTransform`` resizes each image (``min_size``/``max_size``) and batches it;
- the CNN trunk (a registry classifier's convolutional stages up to ``stage``) gives one map;
- ``MultiScaleRoIAlign`` pools every proposal to ``roi_size`` x ``roi_size`` from that shared map
  (RoIAlign rather than the paper's RoI max-pooling: same role, no quantisation of box edges);
- ``TwoMLPHead`` (fc6, fc7) and ``FastRCNNPredictor`` give K+1 class logits and class-specific
  box offsets; ``RoIHeads`` samples ``batch_size_per_image`` regions per image with a
  ``positive_fraction`` of foreground (IoU >= ``fg_iou``; background IoU < ``bg_iou``) and
  computes the multi-task loss (cross-entropy + smooth-L1 box regression on the true class,
  the paper's ``L_cls + [u >= 1] L_loc``), and at inference decodes, thresholds and runs
  class-wise NMS.

Trained end to end by ``cvcore.engine.train.fit`` (train mode returns ``loss_classifier`` and
``loss_box_reg``). Labels follow cvflow's convention 0..K-1; torchvision's background class 0 is
internal (labels are shifted on the way in and out).
"""

from __future__ import annotations

from pathlib import Path
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from cvcore.config import PartialRunConfig
from cvcore.models._registry import register_model
from cvcore.models.build import build_model
from cvcore.models.capabilities import CachesProposals, Finetunable, ProposesRegions, Transferable
from cvcore.models.pretrained import Renames, TorchvisionSource
from cvcore.models.proposals import ProposalSettings, TensorCache, image_key


class FastRCNN(nn.Module, Finetunable, Transferable, ProposesRegions, CachesProposals):
    """Fast R-CNN over a CNN trunk and external proposals; see the module docstring.

    Args:
        num_classes: K object classes (labels 0..K-1).
        backbone: ``float[B, 3, H, W]`` in [0, 1] → ``float[B, C, h, w]``, normalising its input
            itself (registry classifiers do).
        out_channels: C.
        proposals: how regions are proposed (computed on the input image, before resizing).
        cache_dir: where proposals are cached on disk (None: memory only).
        min_size / max_size: the image is resized so its short side is ``min_size`` (long side at
            most ``max_size``) before the CNN; small images gain finer feature maps.
        roi_size: RoIAlign output (the paper's 7 x 7); representation: width of fc6/fc7.
        fg_iou / bg_iou / batch_size_per_image / positive_fraction: region sampling.
        score_thresh / nms_thresh / detections_per_img: inference.
        backbone_stages: the trunk's freezable stages, ``{name: (path under backbone, ...)}``.
        torchvision_sources / transfer_renames: how weights files map onto the trunk
            (cvcore.models.pretrained; :func:`classifier_trunk` and the builder give them).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: nn.Module,
        out_channels: int,
        proposals: ProposalSettings = ProposalSettings(),
        cache_dir: str | Path | None = None,
        min_size: int = 600,
        max_size: int = 1000,
        roi_size: int = 7,
        representation: int = 512,
        fg_iou: float = 0.5,
        bg_iou: float = 0.5,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
        backbone_stages: dict[str, tuple[str, ...]] | None = None,
        torchvision_sources: tuple[TorchvisionSource, ...] = (),
        transfer_renames: Renames = (),
    ):
        super().__init__()
        self.num_classes = num_classes
        # The backbone normalises; the transform only resizes and batches (identity mean/std).
        self.transform = GeneralizedRCNNTransform(
            min_size, max_size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0]
        )
        self.backbone = backbone
        self.roi_heads = RoIHeads(
            box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_size, sampling_ratio=2),
            box_head=TwoMLPHead(out_channels * roi_size**2, representation),
            box_predictor=FastRCNNPredictor(representation, num_classes + 1),
            fg_iou_thresh=fg_iou,
            bg_iou_thresh=bg_iou,
            batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction,
            bbox_reg_weights=None,  # torchvision's (10, 10, 5, 5): the paper's normalised targets
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )
        self.proposal_settings = proposals
        self.proposal_cache = TensorCache(
            Path(cache_dir) / "proposals" / proposals.key() if cache_dir is not None else None
        )
        self.proposals_seen: list[int] = []  # proposals per image of the eval-mode calls (bake-off)
        self.backbone_stages = dict(backbone_stages or {})
        self.torchvision_sources = torchvision_sources
        self.transfer_renames = transfer_renames

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("Fast R-CNN in train mode needs targets (boxes, labels) for every image")
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        proposals = [self.proposals(im) for im in images]
        if not self.training:
            self.proposals_seen.extend(len(p) for p in proposals)
        internal = None
        if targets is not None:
            internal = [
                {
                    "boxes": torch.as_tensor(t["boxes"]).as_subclass(torch.Tensor).float().reshape(-1, 4),
                    "labels": t["labels"].long() + 1,
                }
                for t in targets
            ]
        batch, internal = self.transform(images, internal)
        proposals = [_scale(p, old, new) for p, old, new in zip(proposals, original_sizes, batch.image_sizes)]
        features = {"0": self.backbone(batch.tensors)}
        detections, losses = self.roi_heads(features, proposals, batch.image_sizes, internal)
        if self.training:
            return losses
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        return [{"boxes": d["boxes"], "labels": d["labels"] - 1, "scores": d["scores"]} for d in detections]

    def proposals(self, image: torch.Tensor) -> torch.Tensor:
        """The (cached) proposals of one input image: ``float32[P, 4]`` xyxy pixels, on its device."""
        entry = self.proposal_cache.get_or_compute(
            image_key(image), lambda: {"boxes": self.proposal_settings.propose(image)}
        )
        return entry["boxes"].to(image.device)


def _scale(boxes: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Boxes of an ``old`` (h, w) image in the pixels of its ``new`` (h, w) resized version."""
    (oh, ow), (nh, nw) = old, new
    return boxes * torch.tensor([nw / ow, nh / oh, nw / ow, nh / oh], dtype=boxes.dtype, device=boxes.device)


class Trunk(nn.Module):
    """A classifier's convolutional stages up to one stage: ``float[B, 3, H, W]`` in [0, 1] →
    ``float[B, C, H/s, W/s]``. Normalises its input (the classifier's ``normalize``)."""

    def __init__(self, normalize: nn.Module, body: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.body = body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(images))["out"]


def classifier_trunk(classifier: nn.Module, *, stage: str | None = None) -> tuple[Trunk, dict[str, tuple[str, ...]]]:
    """The trunk of a registry classifier (cvcore.models.classifiers.Classifier) up to ``stage``.

    ``stage``: a child of the classifier's torchvision network (``"layer3"`` for a ResNet: stride
    16, like the paper's VGG conv5; ``None``: the classifier's last feature layer). Layers share
    the classifier's names (``body.layer1...``), so its checkpoints load by name. Returns the
    trunk and its freezable stages (``backbone_stages`` relative to the trunk).
    """
    stage = stage or classifier.feature_layer
    children = [name for name, _ in classifier.backbone.named_children()]
    if stage not in children:
        raise ValueError(f"{type(classifier).__name__} has no stage {stage!r}; its stages are {children}")
    # torchvision's own detection backbones cut classifiers this way.
    body = IntermediateLayerGetter(classifier.backbone, return_layers={stage: "out"})
    kept = {name for name, _ in body.named_children()}
    stages = {
        name: tuple(f"body.{p}" for p in paths)
        for name, paths in classifier.backbone_stages.items()
        if all(p.split(".")[0] in kept for p in paths)
    }
    return Trunk(classifier.normalize, body), stages


# Run settings for the built-in 128-px shapes data on 2 CPU cores.
FAST_RCNN_DEFAULTS = PartialRunConfig(
    data={"img_size": 128},
    augment={"preset": "none"},
    train={
        "epochs": 6, "batch_size": 8, "optimizer": "adamw", "lr": 5e-4, "weight_decay": 1e-4, "scheduler": "cosine",
        "warmup_epochs": 1.0,
    },
)  # fmt: skip


@register_model(
    "fast_rcnn",
    task="detection",
    defaults=FAST_RCNN_DEFAULTS,
    capabilities=(Finetunable, Transferable, ProposesRegions, CachesProposals),
)
def build_fast_rcnn(
    num_classes: int,
    *,
    backbone: str = "resnet18",
    stage: str | None = None,
    small_input: bool = False,
    proposal_method: str = "selective_search",
    strategy: str = "fast",
    max_proposals: int = 2000,
    window_sizes: tuple[float, ...] = (16.0, 32.0, 64.0),
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    stride: int = 8,
    cache_dir: str | None = None,
    img_size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    roi_size: int = 7,
    representation: int = 512,
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.25,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.3,
    detections_per_img: int = 100,
) -> FastRCNN:
    """Fast R-CNN on a registry classifier's trunk: ``backbone`` up to ``stage``.

    ``min_size``/``max_size``: the resize before the CNN (short side / long-side cap); default
    ``img_size`` when given (fixed-size inputs are not rescaled), else the paper's 600 / 1000.
    ``stage`` None: for ResNets ``layer3`` (stride 16, like the paper's VGG16 conv5) when the
    short side is at least 400 px, else ``layer2`` (stride 8), so small images keep a shared map
    of 16+ cells a side (the paper's 600-px images give about 38); for VGG the whole
    convolutional stack (``features``). On the 128-px shapes data layer2 gave mAP@0.5 0.97 and
    mAP 0.83 against layer3's 0.88 and 0.69, in about the same training time.

    ``pretrained`` (given to ``build_model``) loads into the trunk: a classifier checkpoint of the
    same architecture and ``small_input``, ``"torchvision"`` (local hub cache), or a Fast R-CNN
    checkpoint. Freeze policies (``model.freeze``) act on the trunk's stages.
    """
    min_size = min_size or img_size or 600
    max_size = max_size or max(min_size, 1000 if img_size is None else img_size)
    classifier = build_model(backbone, num_classes=1, small_input=small_input)
    if stage is None and "layer3" in classifier.backbone_stages:  # a ResNet
        stage = "layer3" if min_size >= 400 else "layer2"
    trunk, stages = classifier_trunk(classifier, stage=stage)
    with torch.no_grad():
        out_channels = trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    trunk.train()
    settings = ProposalSettings(
        method=proposal_method, strategy=strategy, max_proposals=max_proposals,
        window_sizes=tuple(window_sizes), aspect_ratios=tuple(aspect_ratios), stride=stride,
    )  # fmt: skip
    return FastRCNN(
        num_classes, backbone=trunk, out_channels=out_channels, proposals=settings, cache_dir=cache_dir,
        min_size=min_size, max_size=max_size, roi_size=roi_size, representation=representation,
        batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img, backbone_stages=stages,
        # A classifier's ``backbone.<layer>`` is this model's ``backbone.body.<layer>``.
        transfer_renames=(("backbone.", "backbone.body."),),
        torchvision_sources=tuple(s.moved("backbone.body.", strip="backbone.") for s in classifier.torchvision_sources),
    )  # fmt: skip
