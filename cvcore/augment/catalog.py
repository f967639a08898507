"""The transforms a config may name, and how one is built from a spec dict.

A spec is ``{"name": <torchvision.transforms.v2 class name>, **constructor keywords}``, e.g.
``{"name": "RandomRotation", "degrees": 10}``. A ``p`` key on a transform that has no ``p`` of
its own wraps it in ``v2.RandomApply`` (apply with probability p). Names are looked up in an
allow-list (no import-by-string): every entry is a v2 class that handles ``tv_tensors`` itself,
so geometric transforms move boxes with their pixels and nothing here re-implements them.

Left out on purpose: ``ElasticTransform`` (boxes only approximated), ``FiveCrop``/``TenCrop``
(several outputs), ``CutMix``/``MixUp`` (batch transforms: use ``cutmix_p``/``mixup_p``),
``Normalize`` (models normalise inside), ``GaussianNoise`` (needs float images; pipelines stay
uint8 until the final conversion).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Mapping

import polars as pl
from torchvision.transforms import InterpolationMode, v2

Kind = Literal["photometric", "geometric"]
Task = Literal["detection", "classification"]
BOTH: tuple[Task, ...] = ("detection", "classification")


@dataclass(frozen=True)
class TransformInfo:
    """One allowed transform: its v2 class, what it changes, and the tasks it is safe for."""

    name: str
    cls: type
    kind: Kind
    tasks: tuple[Task, ...] = BOTH


def _entries() -> list[TransformInfo]:
    photometric = [
        "ColorJitter",
        "RandomPhotometricDistort",
        "RandomGrayscale",
        "GaussianBlur",
        "RandomAutocontrast",
        "RandomEqualize",
        "RandomAdjustSharpness",
        "RandomPosterize",
        "RandomSolarize",
        "RandomInvert",
        "RandomChannelPermutation",
        "JPEG",
    ]
    geometric = [
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "RandomRotation",
        "RandomAffine",
        "RandomPerspective",
        "RandomResizedCrop",
        "RandomZoomOut",
        "ScaleJitter",
        "RandomShortestSize",
        "RandomResize",
        "RandomCrop",
        "CenterCrop",
        "Resize",
        "Pad",
    ]
    # AutoAugment-family transforms refuse boxes; RandomErasing would erase objects but keep their boxes.
    classification_only = ["AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "RandomErasing"]
    return (
        [TransformInfo(n, getattr(v2, n), "photometric") for n in photometric]
        + [TransformInfo(n, getattr(v2, n), "geometric") for n in geometric]
        + [TransformInfo("RandomIoUCrop", v2.RandomIoUCrop, "geometric", ("detection",))]
        + [TransformInfo(n, getattr(v2, n), "photometric", ("classification",)) for n in classification_only]
    )


CATALOG: dict[str, TransformInfo] = {info.name: info for info in _entries()}


def transform_info(name: str, *, task: Task, where: str = "transform") -> TransformInfo:
    """The catalog entry for ``name``; ValueError naming ``where`` for unknown or wrong-task names."""
    info = CATALOG.get(name)
    if info is None:
        close = difflib.get_close_matches(name, CATALOG, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(CATALOG))}"
        raise ValueError(f"{where}: unknown transform {name!r}{hint}")
    if task not in info.tasks:
        raise ValueError(f"{where}: {name} is not usable for {task} (only {', '.join(info.tasks)})")
    return info


def make_transform(spec: Mapping[str, Any], *, task: Task, where: str = "transform") -> v2.Transform:
    """Build one transform from ``{"name": ..., **params}``.

    Raises ValueError naming ``where`` (e.g. ``"augment.transforms[2]"``), the transform and the
    problem when the name is unknown or the parameters are rejected by the v2 constructor.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"{where}: a transform spec needs a 'name', got {dict(spec)}")
    info = transform_info(name, task=task, where=where)
    p = params.pop("p", None) if not _has_param(info.cls, "p") else None
    kwargs = {k: _coerce(k, v) for k, v in params.items()}
    try:
        transform = info.cls(**kwargs)
        return v2.RandomApply([transform], p=float(p)) if p is not None else transform
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {name}({_fmt(params)}) is invalid: {exc}") from None


def resolved_params(spec: Mapping[str, Any], *, task: Task) -> dict[str, Any]:
    """Every constructor parameter of the spec's transform, defaults filled in, as plain values.

    ``p`` is included: the transform's own, or the RandomApply probability (1.0 when absent).
    """
    params = dict(spec)
    info = transform_info(params.pop("name"), task=task)
    apply_p = params.pop("p", None) if not _has_param(info.cls, "p") else None
    bound = inspect.signature(info.cls.__init__).bind_partial(None, **params)
    bound.apply_defaults()
    out = {k: _plain(v) for k, v in bound.arguments.items() if k != "self"}
    if not _has_param(info.cls, "p"):
        out["p"] = 1.0 if apply_p is None else float(apply_p)
    return out


def list_transforms(*, task: Task | None = None) -> pl.DataFrame:
    """The catalog as a frame: name, kind, tasks, params (``"name=default, ..."``), one row each."""
    rows = []
    for info in CATALOG.values():
        if task is not None and task not in info.tasks:
            continue
        sig = inspect.signature(info.cls.__init__)
        params = [
            f"{p.name}={_plain(p.default)!r}" if p.default is not inspect.Parameter.empty else p.name
            for p in list(sig.parameters.values())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        rows.append({"name": info.name, "kind": info.kind, "tasks": ",".join(info.tasks), "params": ", ".join(params)})
    return pl.DataFrame(rows, schema={"name": pl.String, "kind": pl.String, "tasks": pl.String, "params": pl.String})


def _has_param(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def _coerce(key: str, value: Any) -> Any:
    # YAML cannot spell an enum: accept "bilinear" / "nearest" ... for interpolation.
    if key == "interpolation" and isinstance(value, str):
        try:
            return InterpolationMode(value.lower())
        except ValueError:
            raise ValueError(f"interpolation {value!r} is not one of {[m.value for m in InterpolationMode]}") from None
    return value


def _plain(value: Any) -> Any:
    """A JSON/YAML-friendly copy: enums by value, tuples as lists, classes by name."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, type):
        return value.__name__
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _fmt(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())
