"""The model registry: a name → builder map, small and strict (after torchvision's models/_api.py).

Every registered builder takes ``num_classes`` and keyword options and returns an ``nn.Module``
with the shared interface (docs/ARCHITECTURE.md §4):

- classifiers: ``model(images: float32[B, 3, H, W] in [0, 1]) -> logits float32[B, K]``;
- detectors: ``model(images: list[float32[3, H, W]] in [0, 1], targets)`` in train mode returns a
  dict of named scalar losses, and ``model(images)`` in eval mode returns
  ``list[dict(boxes=float32[N, 4] xyxy pixels of the input image, labels=int64[N], scores=float32[N])]``.

Models normalise their inputs themselves (ImageNet mean/std), so data pipelines hand over plain
[0, 1] images and pretrained backbones see what they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from torch import nn

from cvcore.config import NO_SETTINGS, PartialRunConfig, resolve
from cvcore.models.capabilities import CAPABILITIES

Task = Literal["classification", "detection"]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of one model: its builder, task, per-model run defaults and capabilities.

    ``defaults``: this model's run settings (e.g. ``data.img_size``, ``train.epochs``, ``train.lr``),
    a PartialRunConfig whose unset fields (None) are cvflow's defaults; they apply where a user
    did not choose (cvcore.config.resolve). ``capabilities``: the
    protocols of cvcore.models.capabilities its models satisfy (readable without building one).
    """

    name: str
    task: Task
    builder: Callable[..., nn.Module]
    defaults: PartialRunConfig = NO_SETTINGS
    capabilities: tuple[type, ...] = ()


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    task: Task,
    defaults: PartialRunConfig | Mapping[str, Any] | None = None,
    capabilities: tuple[type, ...] = (),
):
    """Decorator registering ``builder(num_classes, **options) -> nn.Module`` under ``name``.

    ``defaults``: the model's run settings, a PartialRunConfig or its mapping by section
    (``{"data": {"img_size": 128}, "train": {"lr": 2e-3}}``); checked here, with cvflow's
    defaults under them, so a bad default fails the import that registers it.

    ``capabilities``: the protocols of cvcore.models.capabilities the built models satisfy
    (the registry tests check that they satisfy exactly these).
    Raises ValueError when ``name`` is already registered or a capability is not such a protocol.
    """
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        raise ValueError(
            f"model {name!r}: {unknown} are not capabilities; choose from {[c.__name__ for c in CAPABILITIES]}"
        )
    claimed = tuple(c for c in CAPABILITIES if c in capabilities)
    try:
        settings = PartialRunConfig.model_validate(defaults or {})
        resolve(NO_SETTINGS, settings)
    except ValueError as exc:
        raise ValueError(f"model {name!r}: invalid run defaults (a PartialRunConfig, by section):\n{exc}") from None

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].builder.__module__})")
        _MODELS[name] = ModelSpec(name, task, builder, settings, capabilities=claimed)
        return builder

    return wrap


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model; ValueError listing the known names otherwise."""
    _load_builtin_models()
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def list_models(task: Task | None = None) -> list[str]:
    """Sorted names of registered models, optionally only those of one task."""
    _load_builtin_models()
    return sorted(n for n, s in _MODELS.items() if task is None or s.task == task)


def _load_builtin_models() -> None:
    # Importing the package registers the built-in models (the modules use @register_model).
    import cvcore.models  # noqa: F401
