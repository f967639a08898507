"""Registry-generated tests: every registered model (ours and any added later) keeps the interface.

Each model is built small (``img_size`` 32 for classifiers, 64 for detectors), runs forward in
train mode (loss or logits, with a backward pass) and in eval mode on CPU, and its outputs have
the shapes docs/ARCHITECTURE.md §4 documents. Each satisfies exactly the capability protocols
(cvcore.models.capabilities) its registry entry claims, and their members work.
"""

from __future__ import annotations

import math

import pytest
import torch

from cvcore.models import build_model, list_models, model_spec
from cvcore.models.capabilities import (
    CAPABILITIES, CachesProposals, Finetunable, GridDetector, Postprocessable, ProposesRegions, Transferable, TrunkSource,
    capabilities_of,
)  # fmt: skip
from cvcore.models.pretrained import TorchvisionSource
from cvcore.models.proposals import TensorCache

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


def _check_finetunable(model, image):
    params = {id(p) for p in model.parameters()}
    assert isinstance(model.backbone, torch.nn.Module) and {id(p) for p in model.backbone.parameters()} <= params
    assert model.backbone_stages
    for paths in model.backbone_stages.values():
        for path in paths:
            model.backbone.get_submodule(path)  # AttributeError when a stage names a missing module


def _check_transferable(model, image):
    keys = list(model.state_dict())
    assert all(isinstance(s, TorchvisionSource) for s in model.torchvision_sources)
    renames = list(model.transfer_renames) + [r for s in model.torchvision_sources for r in s.renames]
    for old, new in renames:
        assert isinstance(old, str) and any(k.startswith(new) for k in keys), (old, new)


def _check_postprocessable(model, image):
    model.eval()
    with torch.no_grad():
        model.set_postprocess(score_threshold=0.0, max_detections=5)
        assert 0 < len(model([image])[0]["scores"]) <= 5  # a random start scores above 0 somewhere
        model.set_postprocess(score_threshold=1.0)
        assert len(model([image])[0]["scores"]) == 0


def _check_proposes_regions(model, image):
    boxes = model.proposals(image)
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4 and len(boxes)
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= image.shape[-1] and boxes[:, 1::2].max() <= image.shape[-2]


def _check_caches_proposals(model, image):
    assert isinstance(model.proposal_cache, TensorCache) and model.proposals_seen == []
    model.eval()
    with torch.no_grad():
        model([image])
    assert model.proposals_seen == [len(model.proposals(image))]
    assert model.proposal_cache.hits >= 1  # the second look-up of the same image


def _check_trunk_source(model, image):
    assert model.feature_layer in dict(model.backbone.named_children()) and model.feature_channels > 0
    stride = max(model.feature_cuts)
    trunk = model.feature_extractor(stride=stride).eval()
    with torch.no_grad():
        assert trunk(image[None])["out"].shape[1] == model.feature_cuts[stride][1]


def _check_grid_detector(model, image):
    assert (
        isinstance(model.grid, int)
        and model.grid >= 1
        and isinstance(model.boxes_per_cell, int)
        and model.boxes_per_cell >= 1
    )


CHECKS = {
    Finetunable: _check_finetunable, Transferable: _check_transferable, Postprocessable: _check_postprocessable,
    ProposesRegions: _check_proposes_regions, CachesProposals: _check_caches_proposals, TrunkSource: _check_trunk_source,
    GridDetector: _check_grid_detector,
}  # fmt: skip


def test_every_capability_has_a_check():
    assert set(CHECKS) == set(CAPABILITIES)


@pytest.mark.parametrize("name", list_models())
def test_model_has_exactly_the_capabilities_its_entry_claims(name):
    spec = model_spec(name)
    size = 32 if spec.task == "classification" else 64
    torch.manual_seed(0)
    model = build_model(name, num_classes=K, img_size=size)
    assert capabilities_of(model) == spec.capabilities, name
    image = torch.rand(3, size, size)
    for capability in spec.capabilities:
        CHECKS[capability](model, image)


def test_capabilities_must_be_protocols_of_cvcore_models_capabilities():
    from cvcore.models import register_model

    with pytest.raises(ValueError, match="not capabilities"):
        register_model("not_registered", task="detection", capabilities=(int,))
    assert "not_registered" not in list_models()
