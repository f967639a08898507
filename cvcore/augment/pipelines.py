"""Train and eval pipelines on torchvision.transforms.v2, built from an AugmentConfig.

A pipeline is a ``v2.Compose`` of steps:

    ToImage -> [preset or config transforms] -> Resize(img_size x img_size)
            -> ClampBoundingBoxes -> SanitizeBoundingBoxes (detection) -> ToDtype(float32, scale)

so every output image is ``float32[3, img_size, img_size]`` in [0, 1]. Detection samples are
``(image, target)`` with ``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` (XYXY pixels): v2
moves boxes with the pixels, and the sanitiser removes boxes that became degenerate or left the
canvas together with their ``labels``. Work stays in uint8 until the final conversion (faster,
and what every photometric v2 transform accepts). Eval pipelines only resize and convert.

The resize stretches to a square (no letterbox) in train and eval alike, so a model sees the same
geometry in both; predictions are mapped back by the inverse scale per axis.

Batch mixing (CutMix/MixUp, cvcore.augment.mixing) and Mosaic (cvcore.augment.mosaic) are not
part of the per-sample pipeline; ``describe_pipeline`` lists them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torchvision.transforms import v2

from cvcore.augment.catalog import Task, make_transform, resolved_params, transform_info
from cvcore.augment.presets import preset_specs
from cvcore.config import AugmentConfig


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: the callable, and what it is for the description and statistics."""

    name: str
    kind: Literal["photometric", "geometric", "fixed"]
    source: str  # "preset:<name>", "config" (AugmentConfig.transforms) or "fixed" (head/tail)
    params: dict[str, Any] = field(default_factory=dict)
    transform: Callable = field(default=v2.Identity(), repr=False, compare=False)


def build_transforms(config: AugmentConfig, *, task: Task, img_size: int, train: bool) -> v2.Compose:
    """The train pipeline (``train=True``) or the eval pipeline of ``task`` (CONTRACTS.md).

    Equivalent to :func:`build_train_transforms` / :func:`build_eval_transforms`.
    """
    if train:
        return build_train_transforms(config, task=task, img_size=img_size)
    return build_eval_transforms(task=task, img_size=img_size)


def build_train_transforms(config: AugmentConfig, *, task: Task, img_size: int) -> v2.Compose:
    """Preset or config transforms, then resize, sanitise (detection) and convert to float [0, 1]."""
    return v2.Compose([s.transform for s in train_steps(config, task=task, img_size=img_size)])


def build_eval_transforms(*, task: Task, img_size: int) -> v2.Compose:
    """Resize to ``img_size`` x ``img_size`` and convert to float [0, 1]; boxes are scaled along."""
    return v2.Compose([s.transform for s in eval_steps(task=task, img_size=img_size)])


def train_steps(config: AugmentConfig, *, task: Task, img_size: int) -> list[Step]:
    """The steps of the train pipeline, in order (see the module docstring)."""
    _check(task, img_size)
    if config.transforms is not None:
        specs, source, where = config.transforms, "config", "augment.transforms"
    else:
        specs, source, where = (
            preset_specs(config.preset, task=task, img_size=img_size),
            f"preset:{config.preset}",
            f"preset {config.preset!r}",
        )
    body = [_user_step(spec, task=task, source=source, where=f"{where}[{i}]") for i, spec in enumerate(specs)]
    tail = [_resize(img_size)]
    if task == "detection":
        # Clamp first: the sanitiser drops any box with a coordinate off the canvas, and a box that
        # is only partly outside should be cut to the canvas, not dropped.
        tail += [
            Step("ClampBoundingBoxes", "fixed", "fixed", {}, v2.ClampBoundingBoxes()),
            Step(
                "SanitizeBoundingBoxes",
                "fixed",
                "fixed",
                {"min_size": config.min_box_size},
                v2.SanitizeBoundingBoxes(min_size=config.min_box_size),
            ),
        ]
    return [_to_image(), *body, *tail, _to_float()]


def eval_steps(*, task: Task, img_size: int) -> list[Step]:
    """The steps of the eval pipeline: ToImage, Resize, ToDtype."""
    _check(task, img_size)
    return [_to_image(), _resize(img_size), _to_float()]


def describe_pipeline(config: AugmentConfig, *, task: Task, img_size: int, train: bool) -> list[dict[str, Any]]:
    """Every step and its full parameters (defaults filled in), in the order they run.

    Each row: ``{"step": int, "stage": "sample" | "pipeline" | "batch", "name": str, "kind": str,
    "source": str, "params": dict}``. ``sample`` is Mosaic (before the pipeline, detection),
    ``batch`` is CutMix/MixUp (after collation, classification); both only in train and only when
    their probability is above 0.
    """
    steps = train_steps(config, task=task, img_size=img_size) if train else eval_steps(task=task, img_size=img_size)
    rows: list[dict[str, Any]] = []
    if train and task == "detection" and config.mosaic_p > 0:
        rows.append(
            {
                "stage": "sample",
                "name": "Mosaic",
                "kind": "geometric",
                "source": "config",
                "params": {
                    "p": config.mosaic_p,
                    "scale": list(config.mosaic_scale),
                    "close_mosaic": config.close_mosaic,
                },
            }
        )
    rows += [
        {"stage": "pipeline", "name": s.name, "kind": s.kind, "source": s.source, "params": dict(s.params)}
        for s in steps
    ]
    if train and task == "classification":
        for name, p, alpha in (
            ("CutMix", config.cutmix_p, config.cutmix_alpha),
            ("MixUp", config.mixup_p, config.mixup_alpha),
        ):
            if p > 0:
                rows.append(
                    {
                        "stage": "batch",
                        "name": name,
                        "kind": "mixing",
                        "source": "config",
                        "params": {"p": p, "alpha": alpha},
                    }
                )
    return [{"step": i, **row} for i, row in enumerate(rows)]


def _user_step(spec: dict[str, Any], *, task: Task, source: str, where: str) -> Step:
    transform = make_transform(spec, task=task, where=where)
    info = transform_info(spec["name"], task=task, where=where)
    return Step(info.name, info.kind, source, resolved_params(spec, task=task), transform)


def _to_image() -> Step:
    return Step("ToImage", "fixed", "fixed", {}, v2.ToImage())


def _resize(img_size: int) -> Step:
    return Step(
        "Resize",
        "fixed",
        "fixed",
        {"size": [img_size, img_size], "antialias": True},
        v2.Resize([img_size, img_size], antialias=True),
    )


def _to_float() -> Step:
    return Step("ToDtype", "fixed", "fixed", {"dtype": "float32", "scale": True}, v2.ToDtype(torch.float32, scale=True))


def _check(task: str, img_size: int) -> None:
    if task not in ("detection", "classification"):
        raise ValueError(f"task must be 'detection' or 'classification', got {task!r}")
    if img_size < 1:
        raise ValueError(f"img_size must be a positive number of pixels, got {img_size}")
