"""Pretrained weights: local torch hub cache only, weight files, our checkpoints; partial loading."""

from __future__ import annotations

import logging

import pytest
import torch
from torchvision import models as tvm

from cvcore.models import build_model
from cvcore.models.pretrained import hub_cache_path, load_partial, read_state_dict


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache; any attempt to download fails the test."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("cvflow must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "hub"


def _cache(weights, state):
    path = hub_cache_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_torchvision_weights_come_from_the_hub_cache(hub_dir, caplog):
    torch.manual_seed(1)
    reference = tvm.resnet18(weights=None)  # stands in for the ImageNet file: same names and shapes
    path = _cache(tvm.ResNet18_Weights.IMAGENET1K_V1, reference.state_dict())
    assert path == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    with caplog.at_level(logging.INFO, logger="cvcore.models.pretrained"):
        model = build_model("resnet18", num_classes=5, pretrained="torchvision", small_input=False)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, reference.bn1.running_var)
    assert model.head.weight.shape == (5, 512)  # new head, fresh init
    assert "loaded 120/122 tensors" in caplog.text
    assert (
        "not in the source: 2 [head.weight, head.bias]" in caplog.text
        and "unused source tensors: 2 [fc.weight, fc.bias]" in caplog.text
    )
    # The same file serves a detector whose trunk is that ResNet (renamed into its body).
    frcnn = build_model("faster_rcnn", num_classes=2, img_size=64, pretrained="torchvision")
    assert torch.equal(frcnn.backbone.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)


def test_offline_missing_cache_is_one_line_naming_the_file(hub_dir, monkeypatch):
    monkeypatch.setenv("CVFLOW_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match=r"CVFLOW_OFFLINE is set.*resnet50-11ad3fa6\.pth at .*checkpoints"
    ) as err:
        build_model("resnet50", num_classes=2, pretrained="torchvision")
    assert "\n" not in str(err.value)


def test_failed_download_is_one_line_naming_the_file(hub_dir, monkeypatch):
    import urllib.error

    monkeypatch.delenv("CVFLOW_OFFLINE", raising=False)

    def unreachable(url, dst, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(
        FileNotFoundError,
        match=r"download failed: URLError.*put https://download.pytorch.org/models/resnet18-f37072fd\.pth at ",
    ) as err:
        build_model("resnet18", num_classes=2, pretrained="torchvision", small_input=False)
    assert "\n" not in str(err.value)


def test_online_missing_cache_downloads_into_it_hash_checked(hub_dir, monkeypatch):
    monkeypatch.delenv("CVFLOW_OFFLINE", raising=False)
    torch.manual_seed(2)
    reference = tvm.resnet18(weights=None)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # stands in for the network
        calls.append((url, hash_prefix))
        torch.save(reference.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = build_model("resnet18", num_classes=3, pretrained="torchvision", small_input=False)
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert torch.equal(model.backbone.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert hub_cache_path(tvm.ResNet18_Weights.IMAGENET1K_V1).is_file()


def test_checkpoint_transfers_backbone_and_reinitialises_head(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet18", num_classes=4, img_size=32)
    ckpt = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "meta": {"model_name": "resnet18", "num_classes": 4}, "epoch": 3}, ckpt)
    torch.manual_seed(1)
    fresh_head = build_model("resnet18", num_classes=2, img_size=32).head.weight.detach().clone()
    torch.manual_seed(1)
    model = build_model("resnet18", num_classes=2, img_size=32, pretrained=ckpt)
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.head.weight, fresh_head)  # the builder's init, not the 4-class head
    # Same num_classes: the head loads too (continuing a run).
    same = build_model("resnet18", num_classes=4, img_size=32, pretrained=ckpt)
    assert torch.equal(same.head.weight, source.head.weight)


def test_checkpoint_with_ema_gives_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, img_size=32)
    averaged = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        for p in averaged.module.parameters():
            p.add_(1.0)
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "ema": averaged.state_dict(), "meta": {}}, path)
    loaded = read_state_dict(path)
    assert set(loaded) == set(model.state_dict())
    assert torch.equal(loaded["head.bias"], model.head.bias + 1.0)


def test_classifier_backbone_transfers_into_yolov1_by_name(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet18", num_classes=4, small_input=False)
    path = tmp_path / "resnet.pt"
    torch.save(source.state_dict(), path)
    yolo = build_model("yolov1", num_classes=3, img_size=64, pretrained=path)  # trunk up to layer2 at 64 px
    assert torch.equal(yolo.backbone.layer2[1].conv2.weight, source.backbone.layer2[1].conv2.weight)


def test_load_partial_reports_what_did_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {
        "0.weight": torch.ones(4, 3),
        "0.bias": torch.ones(4),
        "1.weight": torch.ones(5, 4),
        "extra": torch.ones(1),
    }
    report = load_partial(model, state, source="x.pt")
    assert report.loaded == ("0.weight", "0.bias")
    assert report.shape_mismatch == ("1.weight",) and report.missing == ("1.bias",) and report.unused == ("extra",)
    assert torch.equal(model[0].weight, torch.ones(4, 3))
    with pytest.raises(ValueError, match="none of its 1 tensors fit"):
        load_partial(model, {"other": torch.ones(1)}, source="y.pt")


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("resnet18", num_classes=2, pretrained=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="tasks layer"):
        build_model("resnet18", num_classes=2, pretrained="runs:/abc/model")
    bad = tmp_path / "bad.pt"
    torch.save({"epoch": 3}, bad)
    with pytest.raises(ValueError, match="bad.pt: not a state dict"):
        read_state_dict(bad)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "hook": print}, evil)  # arbitrary objects are refused
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        read_state_dict(evil)
