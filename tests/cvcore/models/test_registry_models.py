"""Registry-generated tests: every registered model (ours and any added later) keeps the interface.

Each model is built small (``img_size`` 32 for classifiers, 64 for detectors), runs forward in
train mode (loss or logits, with a backward pass) and in eval mode on CPU, and its outputs have
the shapes docs/ARCHITECTURE.md §4 documents.
"""

from __future__ import annotations

import math

import pytest
import torch

from cvcore.models import build_model, list_models, model_spec

K = 3
STABLE_NAMES = [
    "resnet18", "resnet34", "resnet50", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "yolov1", "faster_rcnn",
]  # fmt: skip


def test_stable_names_are_registered():
    assert set(STABLE_NAMES) <= set(list_models())
    assert set(list_models("classification")) >= {n for n in STABLE_NAMES if n.startswith(("vgg", "resnet"))}
    assert {"yolov1", "faster_rcnn"} <= set(list_models("detection"))


def test_every_model_declares_run_defaults():
    for name in list_models():
        defaults = model_spec(name).defaults
        assert (defaults.data.img_size or 0) >= 16, name


@pytest.mark.parametrize("name", list_models("classification"))
def test_classifier_forward_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=K, img_size=32)
    x = torch.rand(2, 3, 32, 32)
    model.train()
    logits = model(x)
    assert logits.shape == (2, K) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, K)


@pytest.mark.parametrize("name", list_models("detection"))
def test_detector_forward_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=K, img_size=64)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]  # sizes differ: outputs are per input image
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [34.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
    ]
    model.train()
    losses = model(images, targets)
    assert isinstance(losses, dict) and losses
    for key, value in losses.items():
        assert value.dim() == 0 and math.isfinite(float(value.detach())), key
    total = sum(losses.values())
    if total.requires_grad:  # R-CNN-style models may train no parameter in a given step
        total.backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert isinstance(outputs, list) and len(outputs) == 2
    for out, (h, w) in zip(outputs, [(64, 64), (48, 80)]):
        n = len(out["scores"])
        assert out["boxes"].shape == (n, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (n,) and out["labels"].dtype == torch.int64
        assert out["scores"].shape == (n,)
        if n:
            assert out["labels"].min() >= 0 and out["labels"].max() < K
            assert out["boxes"][:, 0::2].min() >= 0 and out["boxes"][:, 0::2].max() <= w + 1e-3
            assert out["boxes"][:, 1::2].min() >= 0 and out["boxes"][:, 1::2].max() <= h + 1e-3
            assert (out["scores"][:-1] >= out["scores"][1:]).all()  # best first


def test_unknown_model_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'.*resnet18"):
        build_model("nope", num_classes=2)
    with pytest.raises(ValueError, match="unknown option.*grid_size.*grid"):
        build_model("yolov1", num_classes=2, img_size=64, grid_size=7)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", num_classes=0)


def test_duplicate_registration_is_an_error():
    from cvcore.models import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18", task="classification")(lambda num_classes: None)
