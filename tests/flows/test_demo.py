"""The demo's recipe and its transfer check, without training (the demo end to end is in test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.demo import DETECTION_IMAGE_SIZE, check_transfer, classifier_params, detector_params
from flows.params import DemoParams


def test_detector_gets_the_demo_recipe_and_the_classifier_backbone():
    params = DemoParams(detector_epochs=3, detector_augment="none")
    config = detector_params(Path("/data/det"), params, pretrained="models:/shapes-cls-resnet18/7").config
    assert config.model.name == "yolov1" and config.model.pretrained == "models:/shapes-cls-resnet18/7"
    assert (config.train.epochs, config.augment.preset, config.data.img_size) == (3, "none", DETECTION_IMAGE_SIZE)


def test_unset_demo_settings_leave_the_model_defaults_in_charge():
    params = DemoParams(detector_epochs=None, detector_augment=None, classifier_epochs=None)
    # Sections absent from the user's config are filled from the registry defaults by plan_run.
    for made in (detector_params(Path("/d"), params, pretrained=None), classifier_params(Path("/c"), params)):
        unset = made.config.model_dump(exclude_unset=True)
        assert "train" not in unset and "augment" not in unset and "pretrained" not in unset["model"]


def test_classifier_trains_at_the_demo_image_size():
    config = classifier_params(Path("/data/cls"), DemoParams(classification_image_size=48, classifier_epochs=2)).config
    assert (config.model.name, config.data.img_size, config.train.epochs) == ("resnet18", 48, 2)


def test_transfer_check_accepts_a_matching_backbone_and_names_the_way_out_otherwise(caplog):
    check_transfer("yolov1", "resnet18", classifier_img_size=64)  # torchvision stem: every backbone tensor fits
    assert "random start" not in caplog.text
    check_transfer("yolov1", "resnet18", classifier_img_size=32)  # small-input stem: conv1 differs, the rest fits
    assert "backbone.conv1.weight" in caplog.text
    with pytest.raises(ValueError, match=r"classifier 'vgg11_bn' cannot start detector 'yolov1'.*--no-transfer"):
        check_transfer("yolov1", "vgg11_bn", classifier_img_size=32)


def test_cli_refuses_a_classifier_that_cannot_give_its_backbone_before_anything_runs(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the demo flow started although the transfer check should have failed")

    monkeypatch.setattr("flows.demo.demo", must_not_run)
    result = CliRunner().invoke(app, ["demo", "--classifier", "vgg11_bn", "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "cannot start detector 'yolov1'" in text and "--no-transfer" in text, result.output
