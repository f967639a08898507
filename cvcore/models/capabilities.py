"""What a model can do beyond the shared interface, declared as ``typing.Protocol``s.

Code that needs more than ``model(images)`` asks ``isinstance(model, <protocol>)`` instead of
probing attributes; every model class inherits the protocols it implements, and its registry
entry claims the same ones (``register_model(..., capabilities=...)``), so a model's abilities
can be read without building it. ``tests/cvcore/models/test_registry_models.py`` builds every
registered model and checks that it satisfies exactly the protocols its entry claims, with
members that work (docs/ARCHITECTURE.md §4).

- :class:`Finetunable`: a ``backbone`` with named ``backbone_stages`` (freeze policies,
  backbone learning rate: cvcore.models.finetune).
- :class:`Transferable`: ``torchvision_sources`` and ``transfer_renames`` (pretrained weights
  and checkpoints of other models, loaded by name: cvcore.models.pretrained).
- :class:`Postprocessable`: ``set_postprocess`` sets eval-mode decoding (score threshold, NMS
  IoU, detections per image) from the run's EvalConfig (cvcore.engine.infer.predict).
- :class:`ProposesRegions`: ``proposals(image)``, the regions a two-stage model scores
  (proposal recall in validation).
- :class:`CachesProposals`: a ``proposal_cache`` and the ``proposals_seen`` per image of
  eval-mode calls (candidate counts and cold-cache timing in the bake-off).
- :class:`TrunkSource`: a classifier whose convolutional trunk other models build on
  (``feature_extractor``, ``feature_cuts``: YOLOv1's and Fast R-CNN's backbones).
- :class:`GridDetector`: an S x S grid with B boxes per cell (S*S*B candidates per image).

Python 3.12 checks a runtime protocol's members with ``inspect.getattr_static``, which does not
see an ``nn.Module``'s submodules (they live in ``_modules``); a model therefore declares a
protocol with a module member (``Finetunable.backbone``) by inheriting it, as ours do, and the
check is then nominal on every Python version. Protocols of methods and plain attributes also
match structurally (e.g. a test double with ``set_postprocess``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the protocols check member names, this module imports nothing
    from torch import Tensor, nn

    from cvcore.models.pretrained import Renames, TorchvisionSource
    from cvcore.models.proposals import TensorCache


@runtime_checkable
class Finetunable(Protocol):
    """A transferable ``backbone`` split into stages that freeze policies name.

    ``backbone_stages``: ``{stage name: (submodule path relative to backbone, ...)}`` in forward
    order, e.g. ``stem, layer1, ..., layer4`` for a ResNet; only stages the model built.
    """

    backbone: nn.Module
    backbone_stages: dict[str, tuple[str, ...]]


@runtime_checkable
class Transferable(Protocol):
    """Where a model's pretrained weights come from and how other models' keys map onto it.

    ``torchvision_sources``: torchvision weights it can start from, tried in order (each with
    its key renames); ``transfer_renames``: ``(source prefix, model prefix)`` pairs applied to a
    weights file's keys that do not match as they are (e.g. a classifier's ``backbone.`` is
    Faster R-CNN's ``detector.backbone.body.``).
    """

    torchvision_sources: tuple[TorchvisionSource, ...]
    transfer_renames: Renames


@runtime_checkable
class Postprocessable(Protocol):
    """A detector whose eval-mode decoding can be set after building."""

    def set_postprocess(
        self, *, score_threshold: float | None = None, nms_iou: float | None = None, max_detections: int | None = None
    ) -> None:
        """Box score threshold, class-wise NMS IoU, detections per image; ``None`` keeps the current value."""
        ...


@runtime_checkable
class ProposesRegions(Protocol):
    """A two-stage detector whose first stage is external region proposals (R-CNN, Fast R-CNN)."""

    def proposals(self, image: Tensor) -> Tensor:
        """The proposals of one ``float[3, H, W]`` input image: ``float32[P, 4]`` xyxy pixels, on its device."""
        ...


@runtime_checkable
class CachesProposals(Protocol):
    """Proposals cached by image content, and a record of how many each eval-mode image had.

    ``proposal_cache``: a cvcore.models.proposals.TensorCache (replace it to start cold);
    ``proposals_seen``: proposals per image of eval-mode calls, appended in call order.
    """

    proposal_cache: TensorCache
    proposals_seen: list[int]


@runtime_checkable
class TrunkSource(Protocol):
    """A classifier whose convolutional trunk is cut out for detectors.

    ``feature_cuts``: ``{stride: (last layer kept, channels)}``; ``feature_layer``: the backbone
    child giving the last feature map, of ``feature_channels`` channels.
    """

    feature_layer: str
    feature_channels: int
    feature_cuts: dict[int, tuple[str, int]]

    def feature_extractor(self, *, stride: int = 32) -> nn.Module:
        """The trunk up to ``stride``: normalised ``float[B, 3, H, W]`` -> ``{"out": float[B, C, H/stride, W/stride]}``."""
        ...


@runtime_checkable
class GridDetector(Protocol):
    """A detector predicting ``boxes_per_cell`` boxes in each cell of a ``grid`` x ``grid`` map."""

    grid: int
    boxes_per_cell: int


CAPABILITIES: tuple[type, ...] = (
    Finetunable, Transferable, Postprocessable, ProposesRegions, CachesProposals, TrunkSource, GridDetector,
)  # fmt: skip
"""Every capability protocol, in the order registry entries list them."""


def capabilities_of(model: object) -> tuple[type, ...]:
    """The protocols of :data:`CAPABILITIES` that ``model`` satisfies, in that order."""
    return tuple(p for p in CAPABILITIES if isinstance(model, p))
