"""One base for the detectors kept whole from torchvision (Faster R-CNN, FCOS): their shared plumbing.

A torchvision detection model takes a list of float [0, 1] images of any sizes, normalises and
resizes them itself (``GeneralizedRCNNTransform``), returns boxes in each input image's pixels,
and decodes with ``score_thresh``, ``nms_thresh`` and ``detections_per_img``; its CNN body is
``detector.backbone.body`` (under an FPN). :class:`TorchvisionDetector` keeps such a model whole
as ``detector`` and gives it our interface (docs/ARCHITECTURE.md §4):

- labels: ours, 0..K-1, go in shifted by ``label_offset`` (1 where torchvision reserves class 0
  for the background, as Faster R-CNN does; 0 for FCOS's per-class sigmoids) and come out
  shifted back; targets outside 0..K-1 are a ValueError;
- capabilities (cvcore.models.capabilities): ``Finetunable`` (``backbone`` is the body, its
  ``backbone_stages`` those the body has), ``Transferable`` (``torchvision_sources`` given by the
  builder; our classifiers' and YOLOv1's ``backbone.`` keys are ``detector.backbone.body.``) and
  ``Postprocessable`` (``set_postprocess`` sets the decoding attributes of ``decoding_module``);
- ``trainable_backbone_layers``: the top stages that train, the others frozen at construction
  (torchvision applies its own option only with its weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from cvcore.models.capabilities import Finetunable, Postprocessable, Transferable
from cvcore.models.finetune import freeze_stages
from cvcore.models.pretrained import TorchvisionSource, imagenet_weights


def resize_limits(min_size: int | None, max_size: int | None, img_size: int | None) -> tuple[int, int]:
    """torchvision's resize (short side, long-side cap; px) for a detector built for ``img_size``.

    Short side: ``min_size``, else ``img_size`` (fixed-size training images are not rescaled),
    else torchvision's 800; long side: ``max_size``, else ``min_size * 1333 / 800`` as torchvision's.
    """
    min_size = min_size or img_size or 800
    return min_size, max_size or max(min_size, round(min_size * 1333 / 800))


def body_sources(weights: type[WeightsEnum], prefix: str = "") -> tuple[TorchvisionSource, ...]:
    """The ImageNet weights of ``weights`` loaded into the detector's body: keys under ``prefix``
    in the file (``features.`` for MobileNet, none for ResNet) become ``detector.backbone.body.``."""
    return tuple(TorchvisionSource(w, ((prefix, "detector.backbone.body."),)) for w in imagenet_weights(weights))


class TorchvisionDetector(nn.Module, Finetunable, Transferable, Postprocessable):
    """A torchvision detection model with our interface (see the module docstring).

    Subclasses set ``label_offset``, ``decoding_module`` (the path under ``detector`` holding
    ``score_thresh``, ``nms_thresh`` and ``detections_per_img``; "" for ``detector`` itself),
    ``display_name`` and ``registry_name`` (for messages), and give ``num_classes`` (K, ours).

    Args:
        detector: the torchvision model, built for its own number of classes (K + label_offset).
        backbone_stages: the body's stages, ``{name: (child path, ...)}`` in forward order; stages
            whose children the body lacks (not built, e.g. FCOS without ``layer4``) are left out.
        sources: torchvision weights the model can start from (cvcore.models.pretrained).
        trainable_backbone_layers: stages that train, counted from the top (0 to the number of
            kept stages); the others are frozen with frozen batch norm. None: all train.
    """

    label_offset: int = 0
    decoding_module: str = ""
    display_name: str = "torchvision detector"
    registry_name: str = "detector"

    def __init__(
        self,
        detector: nn.Module,
        *,
        backbone_stages: dict[str, tuple[str, ...]],
        sources: tuple[TorchvisionSource, ...],
        trainable_backbone_layers: int | None = None,
    ):
        super().__init__()
        self.detector = detector
        built = {name for name, _ in self.backbone.named_children()}
        self.backbone_stages = {k: v for k, v in backbone_stages.items() if all(p.split(".")[0] in built for p in v)}
        self.torchvision_sources = sources
        # Our classifiers' and YOLOv1's trunks are this body under another prefix.
        self.transfer_renames = (("backbone.", "detector.backbone.body."),)
        if trainable_backbone_layers is not None:
            names = list(self.backbone_stages)
            if not 0 <= trainable_backbone_layers <= len(names):
                raise ValueError(
                    f"{self.registry_name}: trainable_backbone_layers must be in 0..{len(names)} (stages {', '.join(names)}), "
                    f"got {trainable_backbone_layers}"
                )
            freeze_stages(self, names[: len(names) - trainable_backbone_layers])

    @property
    def backbone(self) -> nn.Module:
        """The CNN body under the FPN (keys named as in torchvision's ResNet / MobileNet features)."""
        return self.detector.backbone.body

    def set_postprocess(
        self, *, score_threshold: float | None = None, nms_iou: float | None = None, max_detections: int | None = None
    ) -> None:
        """Change eval-mode decoding (box score threshold, class-wise NMS IoU, detections per image)."""
        decoding = self.detector.get_submodule(self.decoding_module)
        if score_threshold is not None:
            decoding.score_thresh = float(score_threshold)
        if nms_iou is not None:
            decoding.nms_thresh = float(nms_iou)
        if max_detections is not None:
            decoding.detections_per_img = int(max_detections)

    def forward(self, images: Tensor | list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        images = list(images)
        if self.training:
            if targets is None:
                raise ValueError(f"{self.display_name} in train mode needs targets (list of dict(boxes, labels))")
            return self.detector(images, [self._target(t) for t in targets])
        shift = self.label_offset
        return [
            {"boxes": o["boxes"], "labels": o["labels"] - shift, "scores": o["scores"]} for o in self.detector(images)
        ]

    def _target(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        """Our target (boxes xyxy px, labels 0..K-1) as torchvision's: plain tensors, labels shifted."""
        labels = torch.as_tensor(target["labels"]).as_subclass(Tensor).long().reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{self.display_name} targets: labels must be in 0..{self.num_classes - 1}, got {labels.unique().tolist()}"
            )
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).float().reshape(-1, 4)
        return {"boxes": boxes, "labels": labels + self.label_offset}
