"""Pipelines from presets and specs: fixed output, eval = resize + convert, errors, description."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvcore.augment.catalog import CATALOG, list_transforms, make_transform
from cvcore.augment.pipelines import build_transforms, describe_pipeline
from cvcore.augment.presets import PRESETS
from cvcore.config import AugmentConfig


def sample(h=48, w=64):
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        [[4.0, 6.0, 30.0, 40.0], [40.0, 2.0, 60.0, 20.0]], format="XYXY", canvas_size=(h, w)
    )
    return image, {"boxes": boxes, "labels": torch.tensor([2, 0]), "image_id": 7}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("task", ["detection", "classification"])
def test_every_preset_ends_in_a_fixed_size_float_image(preset, task):
    pipeline = build_transforms(AugmentConfig(preset=preset), task=task, img_size=40, train=True)
    torch.manual_seed(0)
    for _ in range(3):
        if task == "detection":
            image, target = pipeline(*sample())
            assert len(target["boxes"]) == len(target["labels"])
            assert target["image_id"] == 7
        else:
            image = pipeline(sample()[0])
        assert image.shape == (3, 40, 40) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_eval_pipeline_only_resizes_and_converts():
    pipeline = build_transforms(
        AugmentConfig(preset="strong", mosaic_p=1.0), task="detection", img_size=96, train=False
    )
    image, target = pipeline(*sample())
    # 64 x 48 -> 96 x 96: x scales by 1.5, y by 2 (a stretch, as in training).
    expected = torch.tensor([[6.0, 12.0, 45.0, 80.0], [60.0, 4.0, 90.0, 40.0]])
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), expected)
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    names = [
        r["name"] for r in describe_pipeline(AugmentConfig(preset="strong"), task="detection", img_size=96, train=False)
    ]
    assert names == ["ToImage", "Resize", "ToDtype"]


def test_eval_pipeline_is_deterministic():
    pipeline = build_transforms(AugmentConfig(), task="classification", img_size=32, train=False)
    image = sample()[0]
    assert torch.equal(pipeline(image), pipeline(image))


def test_sanitiser_drops_degenerate_boxes_with_their_labels():
    pipeline = build_transforms(
        AugmentConfig(preset="none", min_box_size=3.0), task="detection", img_size=64, train=True
    )
    image = tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        [[1.0, 1.0, 20.0, 20.0], [30.0, 30.0, 31.0, 50.0], [50.0, 50.0, 90.0, 60.0], [70.0, 70.0, 80.0, 80.0]],
        format="XYXY",
        canvas_size=(64, 64),
    )
    _, target = pipeline(image, {"boxes": boxes, "labels": torch.tensor([0, 1, 2, 3])})
    # box 1 is 1 px wide (< 3): dropped; box 2 is cut to the canvas: kept; box 3 is off the canvas: dropped.
    assert target["labels"].tolist() == [0, 2]
    assert target["boxes"].tolist() == [[1.0, 1.0, 20.0, 20.0], [50.0, 50.0, 64.0, 60.0]]


def test_config_transforms_override_the_preset_and_p_wraps_in_random_apply():
    config = AugmentConfig(
        preset="strong",
        transforms=[{"name": "GaussianBlur", "kernel_size": 3, "p": 0.3}, {"name": "RandomVerticalFlip", "p": 1.0}],
    )
    rows = describe_pipeline(config, task="detection", img_size=32, train=True)
    assert [r["name"] for r in rows] == [
        "ToImage",
        "GaussianBlur",
        "RandomVerticalFlip",
        "Resize",
        "ClampBoundingBoxes",
        "SanitizeBoundingBoxes",
        "ToDtype",
    ]
    assert rows[1]["source"] == "config" and rows[1]["params"] == {"kernel_size": 3, "sigma": [0.1, 2.0], "p": 0.3}
    assert isinstance(make_transform(config.transforms[0], task="detection"), v2.RandomApply)
    assert isinstance(make_transform(config.transforms[1], task="detection"), v2.RandomVerticalFlip)  # has its own p
    image, target = build_transforms(config, task="detection", img_size=48, train=True)(*sample())
    # 64 x 48 image: the vertical flip maps y to 48 - y, then x scales by 48 / 64.
    assert target["boxes"].tolist()[0] == pytest.approx([3.0, 8.0, 22.5, 42.0])


def test_describe_lists_every_parameter_and_the_mixing_steps():
    det = describe_pipeline(
        AugmentConfig(preset="default", mosaic_p=0.5, close_mosaic=3), task="detection", img_size=64, train=True
    )
    assert det[0]["name"] == "Mosaic" and det[0]["stage"] == "sample"
    assert det[0]["params"] == {"p": 0.5, "scale": [0.5, 1.0], "close_mosaic": 3}
    affine = next(r for r in det if r["name"] == "RandomAffine")
    assert affine["source"] == "preset:default"
    assert {"degrees", "translate", "scale", "shear", "interpolation", "fill", "center", "p"} <= set(affine["params"])
    assert affine["params"]["interpolation"] == "bilinear"
    assert [r["step"] for r in det] == list(range(len(det)))
    cls = describe_pipeline(AugmentConfig(cutmix_p=0.4, mixup_p=0.2), task="classification", img_size=32, train=True)
    assert [r["name"] for r in cls[-2:]] == ["CutMix", "MixUp"]
    assert cls[-2]["params"] == {"p": 0.4, "alpha": 1.0}
    assert "Mosaic" not in [r["name"] for r in cls]


def test_bad_specs_name_the_step_and_the_problem():
    with pytest.raises(
        ValueError, match=r"augment.transforms\[1\]: unknown transform 'RandomRotate'; did you mean RandomRotation"
    ):
        build_transforms(
            AugmentConfig(transforms=[{"name": "RandomHorizontalFlip"}, {"name": "RandomRotate"}]),
            task="detection",
            img_size=32,
            train=True,
        )
    with pytest.raises(ValueError, match=r"augment.transforms\[0\]: RandomRotation\(degrees=-5\) is invalid"):
        build_transforms(
            AugmentConfig(transforms=[{"name": "RandomRotation", "degrees": -5}]),
            task="detection",
            img_size=32,
            train=True,
        )
    with pytest.raises(ValueError, match="RandomIoUCrop is not usable for classification"):
        build_transforms(
            AugmentConfig(transforms=[{"name": "RandomIoUCrop"}]), task="classification", img_size=32, train=True
        )
    with pytest.raises(ValueError, match="TrivialAugmentWide is not usable for detection"):
        build_transforms(
            AugmentConfig(transforms=[{"name": "TrivialAugmentWide"}]), task="detection", img_size=32, train=True
        )
    with pytest.raises(ValueError, match="interpolation 'cubicle'"):
        make_transform({"name": "RandomRotation", "degrees": 5, "interpolation": "cubicle"}, task="detection")
    with pytest.raises(ValueError, match="needs a 'name'"):
        AugmentConfig(transforms=[{"degrees": 5}])


def test_config_checks_mixing_probabilities():
    with pytest.raises(ValueError, match="cutmix_p \\+ mixup_p must be <= 1"):
        AugmentConfig(cutmix_p=0.7, mixup_p=0.5)
    AugmentConfig(cutmix_p=0.5, mixup_p=0.5)


def test_catalog_lists_every_transform_with_its_parameters():
    frame = list_transforms()
    assert sorted(frame.get_column("name").to_list()) == sorted(CATALOG)
    rotation = frame.row(by_predicate=pl.col("name") == "RandomRotation", named=True)
    assert rotation["kind"] == "geometric" and "degrees" in rotation["params"] and "expand=False" in rotation["params"]
    assert "RandomIoUCrop" not in list_transforms(task="classification").get_column("name").to_list()
    for info in CATALOG.values():
        assert issubclass(info.cls, v2.Transform)
