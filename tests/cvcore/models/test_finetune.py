"""Freeze policies, frozen batch norm and parameter groups (cvcore.models.finetune)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvcore.models import apply_freeze, build_model, param_groups
from cvcore.models.finetune import stage_names


def _resnet(**options):
    torch.manual_seed(0)
    # The standard stem at 32 px keeps these tests cheap; stages are the same either way.
    return build_model("resnet18", num_classes=3, small_input=False, **options)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()  # must not wake frozen batch norm up
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_stage_names_in_forward_order():
    assert stage_names(_resnet()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    vgg = build_model("vgg11_bn", num_classes=3, img_size=32)
    assert stage_names(vgg) == ["block1", "block2", "block3", "block4", "block5", "classifier"]


def test_from_stage_freezes_earlier_stages_and_they_do_not_change():
    model = _resnet()
    report = apply_freeze(model, "from:layer3")
    assert report.frozen_stages == ("stem", "layer1", "layer2")
    before = _snapshot(model)
    optimizer = torch.optim.AdamW(param_groups(model, lr=0.1, weight_decay=0.1), lr=0.1)
    _train_step(model, optimizer)
    changed = _changed(before, model)
    frozen_prefixes = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2.")
    assert not {k for k in changed if k.startswith(frozen_prefixes)}  # weights and BN statistics alike
    assert any(k.startswith("backbone.layer3.") for k in changed) and any(k.startswith("head.") for k in changed)
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d)
    assert isinstance(model.backbone.layer3[0].bn1, nn.BatchNorm2d)  # trainable stages keep live BN
    assert all(not p.requires_grad for p in model.backbone.layer2.parameters())
    assert all(p.requires_grad for p in model.backbone.layer3.parameters())


def test_backbone_policy_trains_only_the_head():
    model = _resnet()
    report = apply_freeze(model, "backbone")
    assert report.trainable_parameters == sum(p.numel() for p in model.head.parameters())
    before = _snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)  # even a naive optimiser
    for _ in range(2):
        _train_step(model, optimizer)
    assert _changed(before, model) == {"head.weight", "head.bias"}


def test_freeze_bn_keeps_statistics_through_train_calls():
    model = _resnet()
    apply_freeze(model, "none", freeze_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    before = _snapshot(model)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32) * 5)  # a batch far from the running statistics
    assert _changed(before, model) == set()
    # Convolutions still train; batch-norm affine weights are fixed too.
    optimizer = torch.optim.AdamW(param_groups(model, lr=0.01, weight_decay=0.0), lr=0.01)
    _train_step(model, optimizer)
    changed = _changed(before, model)
    assert "backbone.layer1.0.conv1.weight" in changed
    assert not {k for k in changed if ".bn" in k or "downsample.1" in k}


def test_frozen_state_dict_loads_into_a_fresh_model_and_back():
    frozen = _resnet()
    apply_freeze(frozen, "from:layer2", freeze_bn=True)
    fresh = _resnet()
    fresh.load_state_dict(frozen.state_dict())  # strict: same names either way
    again = _resnet()
    apply_freeze(again, "from:layer2", freeze_bn=True)
    again.load_state_dict(fresh.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), again.eval()(x), atol=1e-5)


def test_frozen_model_matches_the_unfrozen_one_in_eval():
    model = _resnet()
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        apply_freeze(model, "backbone", freeze_bn=True)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_policy_errors_name_the_stages():
    with pytest.raises(ValueError, match="unknown stage 'layer9'.*layer1"):
        apply_freeze(_resnet(), "from:layer9")
    with pytest.raises(ValueError, match="unknown freeze policy"):
        apply_freeze(_resnet(), "half")
    with pytest.raises(ValueError, match="needs a model with .backbone"):
        apply_freeze(nn.Sequential(nn.Linear(2, 2)), "backbone")
    assert apply_freeze(nn.Sequential(nn.Linear(2, 2)), "none").frozen_parameters == 0


def test_param_groups_learning_rates_and_decay():
    model = _resnet()
    apply_freeze(model, "from:layer2")
    groups = param_groups(model, lr=0.1, weight_decay=0.05, backbone_lr_factor=0.1)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    assert by_name["backbone"]["lr"] == pytest.approx(0.01) and by_name["backbone_no_decay"]["lr"] == pytest.approx(
        0.01
    )
    assert by_name["head"]["lr"] == 0.1 and by_name["head"]["weight_decay"] == 0.05
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and by_name["head_no_decay"]["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(by_name["head"]) == {id(model.head.weight)} and ids(by_name["head_no_decay"]) == {id(model.head.bias)}
    bn = model.backbone.layer3[0].bn1
    assert {id(bn.weight), id(bn.bias)} <= ids(by_name["backbone_no_decay"])
    assert id(model.backbone.layer3[0].conv1.weight) in ids(by_name["backbone"])
    # Every trainable parameter exactly once, frozen ones nowhere.
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == sum(1 for p in model.parameters() if p.requires_grad)


def test_detectors_share_the_freeze_interface():
    yolo = build_model("yolov1", num_classes=2, img_size=128)  # trunk up to layer3 at 128 px
    report = apply_freeze(yolo, "from:layer3", freeze_bn=True)
    assert report.frozen_stages == ("stem", "layer1", "layer2")
    assert all(p.requires_grad for p in yolo.head.parameters())
    assert isinstance(yolo.head.reduce[1], nn.BatchNorm2d)  # freeze_bn is about the backbone
    assert not any(isinstance(m, nn.BatchNorm2d) for m in yolo.backbone.modules())
    frcnn = build_model("faster_rcnn", num_classes=2, img_size=64)
    apply_freeze(frcnn, "backbone")
    assert all(not p.requires_grad for p in frcnn.detector.backbone.body.parameters())
    assert all(p.requires_grad for p in frcnn.detector.backbone.fpn.parameters())
    assert all(p.requires_grad for p in frcnn.detector.roi_heads.parameters())
