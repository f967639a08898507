"""FCOS: torchvision's anchor-free detector behind our interface, built for small objects."""

from __future__ import annotations

import pytest
import torch

from cvcore.models import build_model
from cvcore.models.pretrained import load_pretrained


def _square_scene(n: int, *, seed: int, size: int = 64) -> tuple[list[torch.Tensor], list[dict]]:
    """``n`` images with one bright 16-24 px square (class 1) on a dark background, and its box."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        side = int(torch.randint(16, 25, (1,), generator=g))
        x0, y0 = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
        image = torch.rand(3, size, size, generator=g) * 0.2
        image[:, y0 : y0 + side, x0 : x0 + side] = 0.9
        images.append(image)
        targets.append(
            {"boxes": torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32), "labels": torch.tensor([1])}
        )
    return images, targets


def test_starts_with_boxes_of_anchor_size_so_giou_has_a_gradient():
    # torchvision's init (0 behind a ReLU) gives zero-size boxes and a GIoU loss stuck at 1.
    torch.manual_seed(0)
    model = build_model("fcos", num_classes=2, img_size=64).train()
    images, targets = _square_scene(2, seed=0)
    losses = model(images, targets)
    assert losses["bbox_regression"].item() < 0.9
    losses["bbox_regression"].backward()
    assert model.detector.head.regression_head.bbox_reg.bias.grad.abs().sum() > 0


def test_learns_to_find_a_square():
    torch.manual_seed(0)
    model = build_model("fcos", num_classes=2, img_size=64)
    images, targets = _square_scene(8, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(40):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(images[:4])
    from torchvision.ops import box_iou

    for o, t in zip(out, targets[:4]):
        assert len(o["boxes"]) and o["labels"][0] == 1
        assert float(box_iou(o["boxes"][:1], t["boxes"])[0, 0]) > 0.5


def test_set_postprocess_reaches_torchvision_decoding():
    model = build_model("fcos", num_classes=3, img_size=64)
    model.set_postprocess(score_threshold=0.3, nms_iou=0.4, max_detections=7)
    d = model.detector
    assert (d.score_thresh, d.nms_thresh, d.detections_per_img) == (0.3, 0.4, 7)
    model.eval()
    with torch.no_grad():
        assert all(len(o["scores"]) <= 7 and (o["scores"] >= 0.3).all() for o in model([torch.rand(3, 64, 64)]))


def test_backbone_transfers_from_a_resnet18_classifier(tmp_path):
    classifier = build_model("resnet18", num_classes=4, small_input=False)
    path = tmp_path / "resnet18.pt"
    torch.save(classifier.state_dict(), path)
    model = build_model("fcos", num_classes=2, img_size=64)
    report = load_pretrained(model, path, model_name="fcos")
    body = dict(model.backbone.named_parameters())
    assert torch.equal(body["layer3.1.conv2.weight"], classifier.backbone.layer3[1].conv2.weight)
    assert "layer4.0.conv1.weight" not in body  # the stride-32 stage is not built by default
    assert torch.equal(body["conv1.weight"], classifier.backbone.conv1.weight)
    assert report is not None


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("fcos", num_classes=2, backbone="vgg11")
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("fcos", num_classes=2, fpn_channels=100)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        model = build_model("fcos", num_classes=2, img_size=64).train()
        model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([5])}])
