"""Fine-tuning: which weights train (freeze policies, frozen batch norm) and their learning rates.

Models opt in by being ``Finetunable`` (cvcore.models.capabilities; every registered model but
R-CNN, whose CNN is frozen):

- ``backbone``: the transferable part (a ResNet/VGG trunk, Faster R-CNN's FPN body);
- ``backbone_stages``: ``{stage name: (submodule path relative to backbone, ...)}`` in forward
  order, e.g. ``stem, layer1, ..., layer4`` for ResNets and ``block1..block5, classifier`` for VGG.

Freezing only ever freezes: a policy never unfreezes what a builder froze (e.g. Faster R-CNN's
``trainable_backbone_layers``). Apply it to a freshly built model, before making the optimiser.

Frozen batch norm is torchvision's ``FrozenBatchNorm2d`` (statistics and affine as buffers), the
layer torchvision's own detection models use for frozen backbones. Swapping modules, rather than
overriding ``train()``, means no ``model.train()`` call, deepcopy (EMA) or ``torch.compile`` can
turn statistics updates back on; the state dict keeps the same names, so checkpoints load into
models with ordinary batch norm and back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvcore.models.capabilities import Finetunable

log = logging.getLogger(__name__)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, FrozenBatchNorm2d)


@dataclass(frozen=True)
class FreezeReport:
    """What ``apply_freeze`` did. Parameter counts are numbers of scalars after freezing."""

    policy: str
    frozen_stages: tuple[str, ...]
    frozen_bn_layers: int  # BatchNorm2d layers turned into FrozenBatchNorm2d
    trainable_parameters: int
    frozen_parameters: int


def stage_names(model: nn.Module) -> list[str]:
    """The model's backbone stages in forward order (``[]`` when it is not Finetunable)."""
    return list(model.backbone_stages) if isinstance(model, Finetunable) else []


def apply_freeze(model: nn.Module, policy: str = "none", *, freeze_bn: bool = False) -> FreezeReport:
    """Freeze parts of ``model`` in place according to ``policy``.

    - ``"none"``: nothing more is frozen;
    - ``"backbone"``: the whole backbone is frozen, only the rest (the head) trains;
    - ``"from:<stage>"``: the backbone stages before ``<stage>`` are frozen, e.g. ``from:layer3``
      freezes stem, layer1 and layer2; ``from:head`` equals ``backbone``.

    Batch norm inside frozen stages is always frozen too (a frozen layer whose statistics drift is
    not frozen). ``freeze_bn=True`` also fixes every batch norm of the backbone that still trains
    (its affine weights included), the usual choice for small fine-tuning batches.

    Raises ValueError for an unknown policy or stage, or a model without the needed attributes.
    """
    stages = _stages_to_freeze(model, policy)
    if stages and stages == stage_names(model):
        n_bn = freeze_module(model.backbone)  # the whole backbone, parts outside the stages included
    else:
        n_bn = freeze_stages(model, stages)
    if freeze_bn:
        n_bn += freeze_batchnorm(model.backbone if isinstance(model, Finetunable) else model)
    report = FreezeReport(
        policy=policy,
        frozen_stages=tuple(stages),
        frozen_bn_layers=n_bn,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        frozen_parameters=sum(p.numel() for p in model.parameters() if not p.requires_grad),
    )
    log.info(
        "freeze %r: frozen stages %s, %d batch-norm layers frozen; %d trainable / %d frozen parameters",
        policy, list(report.frozen_stages), report.frozen_bn_layers, report.trainable_parameters, report.frozen_parameters,
    )  # fmt: skip
    return report


def freeze_stages(model: Finetunable, names: list[str] | tuple[str, ...]) -> int:
    """Freeze the named backbone stages of ``model``; returns the number of batch norms frozen."""
    count = 0
    for name in names:
        for path in model.backbone_stages[name]:
            parent_path, _, attr = path.rpartition(".")
            parent = model.backbone.get_submodule(parent_path) if parent_path else model.backbone
            module = getattr(parent, attr)
            if isinstance(module, nn.BatchNorm2d):  # a bare BN stage member, like ResNet's stem "bn1"
                setattr(parent, attr, _frozen_copy(module))
                count += 1
            else:
                count += freeze_module(module)
    return count


def freeze_module(module: nn.Module) -> int:
    """Turn off every parameter of ``module`` and freeze its batch norms; returns how many BNs."""
    for p in module.parameters():
        p.requires_grad_(False)
    return freeze_batchnorm(module)


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``BatchNorm2d`` below ``module`` by an equivalent ``FrozenBatchNorm2d``.

    The frozen layer computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` in
    train and eval mode alike. Returns the number of layers replaced.
    """
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen_copy(child))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


def param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_factor: float = 1.0
) -> list[dict[str, Any]]:
    """Optimiser parameter groups: backbone at ``lr * backbone_lr_factor``, the rest at ``lr``.

    The backbone is a ``Finetunable`` model's; other models are all head. Biases and normalisation
    weights get no weight decay (decaying them only shrinks the scale the next layer has to undo).
    Frozen parameters are left out. Each group has a ``"name"`` (``backbone``,
    ``backbone_no_decay``, ``head``, ``head_no_decay``); empty groups are dropped.
    """
    backbone_ids = {id(p) for p in model.backbone.parameters()} if isinstance(model, Finetunable) else set()
    no_decay_ids = {
        id(p)
        for module in model.modules()
        for pname, p in module.named_parameters(recurse=False)
        if isinstance(module, _NORM_TYPES) or pname == "bias"
    }
    groups: dict[str, dict[str, Any]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if id(p) in backbone_ids else "head"
        decay = id(p) not in no_decay_ids
        name = part if decay else f"{part}_no_decay"
        group = groups.setdefault(
            name,
            {
                "name": name,
                "params": [],
                "lr": lr * (backbone_lr_factor if part == "backbone" else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(p)
    order = ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    return [groups[n] for n in order if n in groups]


def _stages_to_freeze(model: nn.Module, policy: str) -> list[str]:
    if policy == "none":
        return []
    stages = stage_names(model)
    if not stages:
        raise ValueError(
            f"freeze policy {policy!r} needs a model with .backbone and .backbone_stages (Finetunable); {type(model).__name__} has none"
        )
    if policy == "backbone":
        return stages
    if policy.startswith("from:"):
        first = policy.removeprefix("from:")
        if first == "head":
            return stages
        if first not in stages:
            raise ValueError(
                f"freeze policy {policy!r}: unknown stage {first!r}; stages are {', '.join(stages + ['head'])}"
            )
        return stages[: stages.index(first)]
    raise ValueError(
        f"unknown freeze policy {policy!r}; use 'none', 'backbone' or 'from:<stage>' (stages: {', '.join(stages)})"
    )


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    # torchvision has no public BatchNorm2d -> FrozenBatchNorm2d converter; this copies the four tensors.
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    if bn.affine:
        frozen.weight.copy_(bn.weight.detach())
        frozen.bias.copy_(bn.bias.detach())
    if bn.track_running_stats and bn.running_mean is not None:
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
    return frozen.to(device=bn.weight.device if bn.affine else None)
