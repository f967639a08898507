"""VGG and ResNet classifiers from torchvision's builders, with a new head and a small-input stem.

Registered names: ``vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn`` (depth
11-19 weight layers, all 3x3 convolutions, with or without batch norm) and ``resnet18, resnet34``
(basic blocks), ``resnet50`` (bottleneck blocks). The networks are torchvision's, not rewritten.

A model is ``Classifier(normalize -> backbone -> head)``:

- ``backbone``: the torchvision network with its last linear layer replaced by ``Identity``, so
  its state-dict names are torchvision's (``backbone.layer1.0.conv1.weight``) and ImageNet weights
  load by name; it maps images to a feature vector ``float[B, F]``;
- ``head``: ``nn.Linear(F, num_classes)``, re-initialised whenever ``num_classes`` changes.

``small_input`` adapts the networks to tiny images (32 px): ResNet gets a 3x3 stride-1 stem
without max-pool (as for CIFAR), VGG a global average pool and a 512-wide classifier instead of
the 7x7x512 -> 4096 layers. It is the default when ``img_size < 64``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter

from cvcore.config import PartialRunConfig, overlay
from cvcore.models._registry import register_model
from cvcore.models.capabilities import Finetunable, Transferable, TrunkSource
from cvcore.models.normalize import ImageNetNormalize
from cvcore.models.pretrained import TorchvisionSource, imagenet_weights

SMALL_INPUT_BELOW = 64  # px: below this the stride-32 trunks end on maps of 1-2 pixels

# torchvision's ResNets (also the bodies of the FCOS and Faster R-CNN detectors): their ImageNet
# weights, and their stages in forward order (the stem's max-pool and ReLU have no weights).
RESNET_WEIGHTS: dict[str, type[tvm.WeightsEnum]] = {
    "resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights, "resnet50": tvm.ResNet50_Weights,
}  # fmt: skip
RESNET_STAGES: dict[str, tuple[str, ...]] = {
    "stem": ("conv1", "bn1"),
    **{f"layer{i}": (f"layer{i}",) for i in range(1, 5)},
}

# Run settings (cvcore.config.resolve uses them where a user left a field unset) that train well on the
# built-in 32-px shapes data on 2 CPU cores. Measured with a bare loop (benchmarks/RESULTS.md,
# "Models"): small-input ResNet-18, AdamW 1e-3, batch 32: 0.985 val accuracy after 125 steps.
RESNET_DEFAULTS = PartialRunConfig(
    data={"img_size": 32},
    augment={"preset": "light"},
    train={
        "epochs": 8, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "scheduler": "cosine",
        "warmup_epochs": 0.5,
    },
)  # fmt: skip
# VGG learns more slowly per step than a small-input ResNet here (same bare loop, AdamW 1e-3):
# vgg11_bn 0.94 after 200 steps and 0.975 after 300; vgg11 (no batch norm) 0.91 after 300 and
# 0.96 after 350, and 0.865 after 400 at 5e-4. Deeper VGGs without batch norm were not measured.
VGG_BN_DEFAULTS = overlay(PartialRunConfig(train={"epochs": 12}), RESNET_DEFAULTS)
VGG_DEFAULTS = overlay(PartialRunConfig(train={"epochs": 16, "warmup_epochs": 2.0}), RESNET_DEFAULTS)


class Classifier(nn.Module, Finetunable, Transferable, TrunkSource):
    """``float[B, 3, H, W]`` in [0, 1] -> logits ``float[B, num_classes]``.

    Capabilities (cvcore.models.capabilities): Finetunable (``backbone``, ``backbone_stages``),
    Transferable (``torchvision_sources``, ``transfer_renames``), TrunkSource (``feature_layer`` (the backbone child whose output is the last feature map),
    ``feature_channels`` (its channels) and ``feature_cuts`` (``{stride: (cut, channels)}``: the
    trunk's feature maps, where ``cut`` names the last layer kept; see ``feature_extractor``)).
    ``head`` is the new linear layer.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        backbone_stages: dict[str, tuple[str, ...]],
        torchvision_weights: type[tvm.WeightsEnum],
        feature_layer: str,
        feature_channels: int,
        feature_cuts: dict[int, tuple[str, int]],
    ):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.backbone = backbone
        self.head = head
        self.backbone_stages = backbone_stages
        self.torchvision_sources = tuple(
            TorchvisionSource(w, (("", "backbone."),)) for w in imagenet_weights(torchvision_weights)
        )
        # A Faster R-CNN checkpoint's ResNet body is our backbone under another prefix.
        self.transfer_renames = (("detector.backbone.body.", "backbone."),)
        self.feature_layer = feature_layer
        self.feature_channels = feature_channels
        self.feature_cuts = feature_cuts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(images)))

    def feature_extractor(self, *, stride: int = 32) -> nn.Module:
        """The backbone's convolutional trunk up to ``stride``: ``x -> {"out": float[B, C, H/stride, W/stride]}``.

        ``stride`` is one of ``feature_cuts`` (ResNet: 4, 8, 16, 32 - the outputs of layer1..4;
        VGG: 2..32 - after each max-pool); ``C`` is ``feature_cuts[stride][1]``. The module shares
        this model's layers and keeps their names (``conv1``, ``layer1``..., ``features.0``...), so
        a detector holding it as ``backbone`` has this classifier's state-dict keys and transfers
        weights by name. Input: normalised images.
        """
        if stride not in self.feature_cuts:
            raise ValueError(
                f"{type(self.backbone).__name__} trunk has feature maps at strides {sorted(self.feature_cuts)}, not {stride}"
            )
        cut = self.feature_cuts[stride][0]
        if cut.startswith("features."):  # VGG: a prefix of the conv Sequential (original indices kept)
            return _PrefixTrunk(self.backbone.features[: int(cut.split(".")[1]) + 1])
        # torchvision's own detection backbones cut ResNets the same way (IntermediateLayerGetter).
        return IntermediateLayerGetter(self.backbone, return_layers={cut: "out"})


class _PrefixTrunk(nn.Module):
    """``features`` (the first layers of a VGG's conv Sequential) -> ``{"out": feature map}``."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.features(x)}


def resnet_classifier(
    arch: str, num_classes: int, *, small_input: bool | None = None, img_size: int | None = None, **tv_options: Any
) -> Classifier:
    """A torchvision ResNet (``arch`` = "resnet18" | "resnet34" | "resnet50") with a new head.

    ``tv_options`` go to torchvision's builder (e.g. ``zero_init_residual=True``).
    """
    net: tvm.ResNet = getattr(tvm, arch)(weights=None, **tv_options)
    if _small(small_input, img_size):
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
        net.maxpool = nn.Identity()
    features = net.fc.in_features
    net.fc = nn.Identity()
    first = 1 if _small(small_input, img_size) else 4  # stride of layer1's output: after the stem (and max-pool)
    cuts = {first * 2**i: (f"layer{i + 1}", out_channels(getattr(net, f"layer{i + 1}"))) for i in range(4)}
    return Classifier(
        net, nn.Linear(features, num_classes), backbone_stages=dict(RESNET_STAGES), torchvision_weights=RESNET_WEIGHTS[arch],
        feature_layer="layer4", feature_channels=features, feature_cuts=cuts,
    )  # fmt: skip


def vgg_classifier(
    arch: str, num_classes: int, *, small_input: bool | None = None, img_size: int | None = None, dropout: float = 0.5
) -> Classifier:
    """A torchvision VGG (``arch`` = "vgg11" ... "vgg19_bn") with a new head.

    Backbone stages are ``block1``..``block5`` (the conv blocks, each ending in a max-pool) and
    ``classifier`` (the hidden fully connected layers).
    """
    net: tvm.VGG = getattr(tvm, arch)(weights=None, dropout=dropout)
    if _small(small_input, img_size):
        # At 32 px the conv trunk ends on 1x1x512: pool globally and keep the classifier's shape
        # (linear-relu-dropout twice) at width 512, instead of 7x7-tiling one pixel into 4096 units.
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Identity(),
        )
        for layer in (net.classifier[0], net.classifier[3]):
            nn.init.normal_(layer.weight, 0, 0.01)  # torchvision's VGG init for linear layers
            nn.init.zeros_(layer.bias)
    features = net.classifier[-1].in_features if isinstance(net.classifier[-1], nn.Linear) else 512
    net.classifier[-1] = nn.Identity()
    head = nn.Linear(features, num_classes)
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)
    weights = getattr(tvm, f"{arch.upper()}_Weights")  # VGG11_Weights ... VGG19_BN_Weights
    pools = [i for i, layer in enumerate(net.features) if isinstance(layer, nn.MaxPool2d)]
    cuts = {2 ** (k + 1): (f"features.{i}", out_channels(net.features[:i])) for k, i in enumerate(pools)}
    return Classifier(
        net, head, backbone_stages=_vgg_stages(net), torchvision_weights=weights, feature_layer="features",
        feature_channels=512, feature_cuts=cuts,
    )  # fmt: skip


def out_channels(module: nn.Module) -> int:
    """Output channels of a conv stack (a ResNet stage, VGG's first layers): those of its last convolution."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _vgg_stages(net: tvm.VGG) -> dict[str, tuple[str, ...]]:
    stages: dict[str, tuple[str, ...]] = {}
    block: list[str] = []
    for index, layer in enumerate(net.features):
        block.append(f"features.{index}")
        if isinstance(layer, nn.MaxPool2d):
            stages[f"block{len(stages) + 1}"] = tuple(block)
            block = []
    stages["classifier"] = ("classifier",)
    return stages


def _small(small_input: bool | None, img_size: int | None) -> bool:
    if small_input is not None:
        return small_input
    return img_size is not None and img_size < SMALL_INPUT_BELOW


def _register(name: str, make: Callable[..., Classifier], defaults: dict[str, Any]) -> None:
    def builder(num_classes: int, **options: Any) -> Classifier:
        return make(name, num_classes, **options)

    builder.__name__ = builder.__qualname__ = name
    # The registry and build_model read the real keyword options from this signature.
    options = list(inspect.signature(make).parameters.values())[2:]
    builder.__signature__ = inspect.Signature(
        [inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int), *options]
    )
    builder.__doc__ = f"{name} classifier from torchvision's builder. Options: see {make.__name__}."
    register_model(
        name, task="classification", defaults=defaults, capabilities=(Finetunable, Transferable, TrunkSource)
    )(builder)


for _arch in ("resnet18", "resnet34", "resnet50"):
    _register(_arch, resnet_classifier, RESNET_DEFAULTS)
for _depth in (11, 13, 16, 19):
    _register(f"vgg{_depth}", vgg_classifier, VGG_DEFAULTS)
    _register(f"vgg{_depth}_bn", vgg_classifier, VGG_BN_DEFAULTS)
