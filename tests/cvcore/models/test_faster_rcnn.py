"""Faster R-CNN wrapper: label mapping around torchvision's background class, options, freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvcore.models import build_model


def _model(**options):
    torch.manual_seed(0)
    return build_model("faster_rcnn", num_classes=3, img_size=64, **options)


class _RecordingDetector(nn.Module):
    """Stands in for torchvision's FasterRCNN: records its targets, answers in its labels 1..K."""

    def __init__(self, num_classes_with_background: int):
        super().__init__()
        self.roi_heads = nn.Module()
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(1, num_classes_with_background)
        self.seen = None

    def forward(self, images, targets=None):
        self.seen = targets
        if targets is not None:
            return {"loss_classifier": torch.tensor(0.0)}
        return [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 3]), "scores": torch.tensor([0.9, 0.8])}]


def test_labels_shift_around_the_background_class():
    model = _model()
    model.detector = _RecordingDetector(4)  # K = 3 plus background
    model.train()
    model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([2])}])
    assert model.detector.seen[0]["labels"].tolist() == [3]  # ours 2 -> torchvision's 3 (0 = background)
    model.eval()
    (out,) = model([torch.rand(3, 64, 64)])
    assert out["labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        model.train()([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([3])}])


def test_size_anchor_and_postprocess_options_reach_torchvision():
    model = _model(anchor_sizes=((8,), (16,), (32,), (64,), (128,)), score_threshold=0.2, max_detections=7)
    det = model.detector
    assert det.transform.min_size == (64,) and det.transform.max_size == round(64 * 1333 / 800)
    assert det.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert det.roi_heads.score_thresh == 0.2 and det.roi_heads.detections_per_img == 7
    model.set_postprocess(nms_iou=0.3)
    assert det.roi_heads.nms_thresh == 0.3
    assert _model(min_size=96, max_size=120).detector.transform.min_size == (96,)
    assert (
        det.roi_heads.fg_bg_sampler.batch_size_per_image == 128 and det.rpn._post_nms_top_n["training"] == 500
    )  # small images
    assert _model(box_batch_size_per_image=64).detector.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    with pytest.raises(ValueError, match="anchor_sizes needs 5 levels"):
        _model(anchor_sizes=((16,), (32,)))
    with pytest.raises(ValueError, match="unknown backbone"):
        _model(backbone="resnet101_fpn")


def test_trainable_backbone_layers_freezes_the_lower_stages():
    model = _model(trainable_backbone_layers=2)  # layer3, layer4 train
    body = model.detector.backbone.body
    assert all(not p.requires_grad for m in (body.conv1, body.layer1, body.layer2) for p in m.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer3[0].bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.detector.rpn.parameters())
    with pytest.raises(ValueError, match=r"trainable_backbone_layers must be in 0\.\.5"):
        _model(trainable_backbone_layers=6)


def test_mobilenet_backbone_builds_with_torchvision_stages():
    model = build_model(
        "faster_rcnn", num_classes=2, img_size=128, backbone="mobilenet_v3_large_fpn", trainable_backbone_layers=3
    )
    assert list(model.backbone_stages) == [f"stage{i}" for i in range(6)]
    # torchvision's stage split: blocks 0-1, 2-3, 4-6, 7-12, 13-15, 16; three stages train.
    assert model.backbone_stages["stage3"] == tuple(str(i) for i in range(7, 13))
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(int(n.split(".")[0]) < 7 for n in frozen)
    assert model.detector.rpn.anchor_generator.sizes == ((16, 32, 64, 128, 256),) * 3
