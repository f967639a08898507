"""Named augmentation presets, as transform specs (see cvcore.augment.catalog).

Detection presets only use transforms that move boxes with their pixels; the grey fill (114)
of zoom-out and affine borders is the usual detection choice (neither black nor white objects).
Classification presets start from a random resized crop, as ImageNet training recipes do.
The final resize to ``img_size``, box sanitising and float conversion are added by
cvcore.augment.pipelines, not by the presets.
"""

from __future__ import annotations

from typing import Any, Literal

Preset = Literal["none", "light", "default", "strong"]
PRESETS: tuple[Preset, ...] = ("none", "light", "default", "strong")
FILL = 114


def preset_specs(name: Preset, *, task: str, img_size: int) -> list[dict[str, Any]]:
    """The transform specs of preset ``name`` for ``task`` at ``img_size`` pixels."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; presets are {', '.join(PRESETS)}")
    table = _detection_presets if task == "detection" else _classification_presets
    return [dict(spec) for spec in table(img_size)[name]]


def _detection_presets(img_size: int) -> dict[str, list[dict[str, Any]]]:
    flip = {"name": "RandomHorizontalFlip", "p": 0.5}
    return {
        "none": [],
        "light": [{"name": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}, flip],
        "default": [
            {"name": "RandomPhotometricDistort", "p": 0.5},
            {"name": "RandomZoomOut", "fill": FILL, "side_range": (1.0, 1.5), "p": 0.25},
            {
                "name": "RandomAffine",
                "degrees": 0.0,
                "translate": (0.1, 0.1),
                "scale": (0.75, 1.25),
                "fill": FILL,
                "interpolation": "bilinear",
            },
            flip,
        ],
        "strong": [
            {"name": "RandomPhotometricDistort", "p": 0.8},
            {"name": "RandomZoomOut", "fill": FILL, "side_range": (1.0, 2.0), "p": 0.4},
            {"name": "RandomIoUCrop", "p": 0.5},
            {
                "name": "RandomAffine",
                "degrees": 10.0,
                "translate": (0.1, 0.1),
                "scale": (0.6, 1.4),
                "shear": 5.0,
                "fill": FILL,
                "interpolation": "bilinear",
            },
            flip,
            {"name": "RandomGrayscale", "p": 0.05},
            {"name": "GaussianBlur", "kernel_size": 3, "sigma": (0.1, 1.5), "p": 0.1},
        ],
    }


def _classification_presets(img_size: int) -> dict[str, list[dict[str, Any]]]:
    flip = {"name": "RandomHorizontalFlip", "p": 0.5}
    return {
        "none": [],
        "light": [{"name": "RandomResizedCrop", "size": img_size, "scale": (0.7, 1.0)}, flip],
        "default": [
            {"name": "RandomResizedCrop", "size": img_size, "scale": (0.5, 1.0)},
            flip,
            {"name": "ColorJitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.3},
        ],
        "strong": [
            {"name": "RandomResizedCrop", "size": img_size, "scale": (0.35, 1.0)},
            flip,
            {"name": "TrivialAugmentWide"},
            {"name": "RandomErasing", "p": 0.25},
        ],
    }
