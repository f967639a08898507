"""YOLOv1: hand-computed targets, loss and decoding; the module's resizing and pixel mapping."""

from __future__ import annotations

import math

import pytest
import torch

import cvcore.models.yolov1 as yolov1_module
from cvcore.models import build_model
from cvcore.models.yolov1_loss import GridPrediction, decode, encode_targets, paired_iou, predicted_boxes, yolo_loss


def _prediction(s: int, b: int, c: int, *, conf: float = 0.1) -> dict[str, torch.Tensor]:
    """Editable prediction tensors for one image: every predictor at its cell centre, quarter size."""
    return {
        "xy": torch.full((1, s, s, b, 2), 0.5),
        "wh_sqrt": torch.full((1, s, s, b, 2), 0.5),
        "conf": torch.full((1, s, s, b), conf),
        "class_prob": torch.full((1, s, s, c), 1.0 / c),
    }


# One truth box on a 2x2 grid, xyxy fractions (0.1, 0.2, 0.3, 0.6): centre (0.2, 0.4), w 0.2, h 0.4.
# Its centre lies in cell row 0, col 0 at offsets x = 0.2 * 2 - 0 = 0.4, y = 0.4 * 2 - 0 = 0.8.
TRUTH = torch.tensor([[0.1, 0.2, 0.3, 0.6]])


def test_encode_places_the_object_in_its_centre_cell():
    t = encode_targets([TRUTH], [torch.tensor([1])], grid=2, num_classes=2)
    assert t.has_object.tolist() == [[[True, False], [False, False]]]
    assert torch.allclose(t.xy[0, 0, 0], torch.tensor([0.4, 0.8]))
    assert torch.allclose(t.wh_sqrt[0, 0, 0], torch.tensor([math.sqrt(0.2), math.sqrt(0.4)]))
    assert t.class_onehot[0, 0, 0].tolist() == [0.0, 1.0]
    assert torch.equal(t.box[0, 0, 0], TRUTH[0])


def test_encode_keeps_the_largest_of_objects_sharing_a_cell():
    small = torch.tensor([0.05, 0.05, 0.15, 0.15])  # centre (0.1, 0.1): cell (0, 0)
    large = torch.tensor([0.0, 0.0, 0.4, 0.3])  # centre (0.2, 0.15): cell (0, 0) too
    other = torch.tensor([0.6, 0.6, 0.9, 0.8])  # cell (1, 1)
    for order in ([small, large, other], [large, small, other]):
        labels = torch.tensor([0, 1, 0]) if order[0] is small else torch.tensor([1, 0, 0])
        t = encode_targets([torch.stack(order)], [labels], grid=2, num_classes=2)
        assert torch.equal(t.box[0, 0, 0], large) and t.class_onehot[0, 0, 0].tolist() == [0.0, 1.0]
        assert t.has_object.sum() == 2 and torch.equal(t.box[0, 1, 1], other)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1"):
        encode_targets([TRUTH], [torch.tensor([2])], grid=2, num_classes=2)


def test_predicted_boxes_use_cell_offsets():
    p = _prediction(2, 1, 1)
    p["xy"][0, 1, 0, 0] = torch.tensor([0.25, 0.5])  # row 1, col 0: centre ((0 + 0.25)/2, (1 + 0.5)/2)
    boxes = predicted_boxes(GridPrediction(**p))
    assert torch.allclose(boxes[0, 1, 0, 0], torch.tensor([0.125 - 0.125, 0.75 - 0.125, 0.125 + 0.125, 0.75 + 0.125]))
    assert torch.allclose(boxes[0, 0, 1, 0], torch.tensor([0.625, 0.125, 0.875, 0.375]))  # row 0, col 1


def test_paired_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]])
    assert torch.allclose(paired_iou(a, b), torch.tensor([1.0 / 7.0, 0.0]))


def test_loss_one_object_by_hand():
    p = _prediction(2, 2, 2, conf=0.1)
    # Cell (0, 0), predictor 0: centre (0.25, 0.25), w = h = 0.25 -> box (0.125, 0.125, 0.375, 0.375).
    #   IoU with the truth: inter 0.175 * 0.175 = 0.030625, union 0.0625 + 0.08 - 0.030625 -> 0.27374.
    p["conf"][0, 0, 0, 0] = 0.6
    # Predictor 1: the truth's size, centre (0.2, 0.35) -> box (0.1, 0.15, 0.3, 0.55).
    #   IoU: inter 0.2 * 0.35 = 0.07, union 0.08 + 0.08 - 0.07 = 0.09 -> 7/9: it is responsible.
    p["xy"][0, 0, 0, 1] = torch.tensor([0.4, 0.7])
    p["wh_sqrt"][0, 0, 0, 1] = torch.tensor([math.sqrt(0.2), math.sqrt(0.4)])
    p["conf"][0, 0, 0, 1] = 0.9
    p["class_prob"][0, 0, 0] = torch.tensor([0.3, 0.7])
    target = encode_targets([TRUTH], [torch.tensor([1])], grid=2, num_classes=2)
    loss = yolo_loss(GridPrediction(**p), target, lambda_coord=5.0, lambda_noobj=0.5)
    assert loss["coord"].item() == pytest.approx(5.0 * (0.7 - 0.8) ** 2)  # x, sqrt w, sqrt h exact
    assert loss["obj"].item() == pytest.approx((0.9 - 7.0 / 9.0) ** 2)  # confidence target = IoU
    # Every predictor that is not responsible: predictor 0 of cell (0, 0) and both of 3 empty cells.
    assert loss["noobj"].item() == pytest.approx(0.5 * (0.6**2 + 6 * 0.1**2))
    assert loss["class"].item() == pytest.approx(0.3**2 + 0.3**2)  # only the object's cell


def test_loss_responsible_predictor_switches_with_iou():
    p = _prediction(2, 2, 2)
    p["xy"][0, 0, 0, 0] = torch.tensor([0.4, 0.8])  # now predictor 0 matches the truth exactly
    p["wh_sqrt"][0, 0, 0, 0] = torch.tensor([math.sqrt(0.2), math.sqrt(0.4)])
    p["conf"][0, 0, 0, 0] = 0.5
    target = encode_targets([TRUTH], [torch.tensor([0])], grid=2, num_classes=2)
    loss = yolo_loss(GridPrediction(**p), target, lambda_coord=5.0, lambda_noobj=0.5)
    assert loss["coord"].item() == pytest.approx(0.0, abs=1e-9)
    assert loss["obj"].item() == pytest.approx((0.5 - 1.0) ** 2)
    assert loss["noobj"].item() == pytest.approx(0.5 * 7 * 0.1**2)


def test_loss_ties_go_to_the_first_predictor_and_empty_images_only_pay_noobj():
    p = _prediction(2, 2, 2, conf=0.2)
    # Truth (0, 0, 0.1, 0.1): cell (0, 0), offsets (0.1, 0.1), sqrt w = sqrt h = sqrt(0.1).
    # Both predictors of the cell are tiny boxes far from it (IoU 0 and 0), at different offsets.
    p["xy"][0, 0, 0, 0] = torch.tensor([0.9, 0.9])
    p["xy"][0, 0, 0, 1] = torch.tensor([0.8, 0.8])
    p["wh_sqrt"][0, 0, 0] = 0.1
    target = encode_targets([torch.tensor([[0.0, 0.0, 0.1, 0.1]])], [torch.tensor([0])], grid=2, num_classes=2)
    loss = yolo_loss(GridPrediction(**p), target)
    # Predictor 0 is responsible: coord = 5 * (2 * (0.9 - 0.1)^2 + 2 * (0.1 - sqrt(0.1))^2), obj = (0.2 - 0)^2.
    assert loss["coord"].item() == pytest.approx(5.0 * (2 * 0.8**2 + 2 * (0.1 - math.sqrt(0.1)) ** 2))
    assert loss["obj"].item() == pytest.approx(0.04)
    empty = encode_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], grid=2, num_classes=2)
    loss = yolo_loss(GridPrediction(**p), empty, lambda_noobj=0.5)
    assert loss["noobj"].item() == pytest.approx(0.5 * 8 * 0.04)
    assert loss["coord"].item() == loss["obj"].item() == loss["class"].item() == 0.0


def test_decode_class_specific_scores_threshold_and_classwise_nms():
    p = _prediction(2, 2, 2, conf=0.05)  # background predictors: scores <= 0.05 * 0.5
    # Cell row 0, col 1, predictor 0: box (0.625, 0.125, 0.875, 0.375), conf 0.8, Pr(class) (0.25, 0.75).
    p["conf"][0, 0, 1, 0] = 0.8
    p["class_prob"][0, 0, 1] = torch.tensor([0.25, 0.75])
    # Predictor 1 of that cell: shifted 0.05 cells right (IoU 0.818 with predictor 0), conf 0.5.
    p["xy"][0, 0, 1, 1] = torch.tensor([0.55, 0.5])
    p["conf"][0, 0, 1, 1] = 0.5
    pred = GridPrediction(**p)
    (out,) = decode(pred, [(100, 200)], score_threshold=0.1, nms_iou=0.5)
    # Class-specific scores: predictor 0 -> 0.2 (class 0), 0.6 (class 1); predictor 1 -> 0.125, 0.375,
    # each suppressed by predictor 0 of its own class. Boxes in pixels of a 200 x 100 (w x h) image.
    assert out["labels"].tolist() == [1, 0]
    assert torch.allclose(out["scores"], torch.tensor([0.6, 0.2]))
    assert torch.allclose(out["boxes"], torch.tensor([[125.0, 12.5, 175.0, 37.5]] * 2))
    (strict,) = decode(pred, [(100, 200)], score_threshold=0.3, nms_iou=0.5)
    assert strict["labels"].tolist() == [1] and torch.allclose(strict["scores"], torch.tensor([0.6]))
    (loose,) = decode(pred, [(100, 200)], score_threshold=0.1, nms_iou=0.9)  # IoU 0.818 < 0.9: both survive
    assert torch.allclose(loose["scores"], torch.tensor([0.6, 0.375, 0.2, 0.125]))
    (capped,) = decode(pred, [(100, 200)], score_threshold=0.1, nms_iou=0.9, max_detections=2)
    assert len(capped["scores"]) == 2


def test_module_maps_pixels_both_ways(monkeypatch):
    torch.manual_seed(0)
    model = build_model("yolov1", num_classes=3, img_size=64, grid=4)
    seen = {}
    real_encode = yolov1_module.encode_targets

    def spy(boxes, labels, **kwargs):
        seen["boxes"] = [b.clone() for b in boxes]
        return real_encode(boxes, labels, **kwargs)

    monkeypatch.setattr(yolov1_module, "encode_targets", spy)
    image = torch.rand(3, 50, 100)  # h 50, w 100: resized to 64 x 64 inside
    model.train()
    losses = model([image], [{"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "labels": torch.tensor([2])}])
    assert set(losses) == {"coord", "obj", "noobj", "class"}
    assert torch.allclose(seen["boxes"][0], torch.tensor([[0.1, 0.1, 0.3, 0.5]]))
    model.eval()
    model.set_postprocess(score_threshold=0.0)
    with torch.no_grad():
        (out,) = model([image])
        batched = model(torch.stack([image, image]))
    assert len(out["scores"]) > 0
    assert out["boxes"][:, 0::2].max() <= 100 and out["boxes"][:, 1::2].max() <= 50
    assert out["boxes"][:, 2].max() > 64  # really in the 100-px-wide input's coordinates
    assert torch.allclose(batched[1]["boxes"], out["boxes"], atol=1e-4)


def test_yolov1_learns_two_images():
    # A smoke check that the loss and gradients fit together: a few steps on two images lower it a lot.
    torch.manual_seed(0)
    model = build_model("yolov1", num_classes=2, img_size=64, grid=4)
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[30.0, 20.0, 60.0, 50.0], [2.0, 40.0, 20.0, 60.0]]), "labels": torch.tensor([1, 0])},
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(16):
        optimizer.zero_grad()
        losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert sum(history[-1].values()) < 0.1 * sum(history[0].values())
    assert history[-1]["coord"] < 0.25 * history[0]["coord"]


@pytest.mark.parametrize(("head", "backbone"), [("conv", "resnet18"), ("fc", "resnet18"), ("conv", "vgg11_bn")])
def test_heads_and_backbones_output_the_grid(head, backbone):
    torch.manual_seed(0)
    model = build_model("yolov1", num_classes=3, img_size=64, grid=5, head=head, backbone=backbone).eval()
    with torch.no_grad():
        raw = model.head(model.backbone(model.normalize(torch.rand(2, 3, 64, 64)))["out"])
    assert raw.shape == (2, 5, 5, 2 * 5 + 3)
    # Confidences start low (bias -2: sigmoid ~0.12), so "no object" is not all the first steps learn.
    conf = torch.sigmoid(raw[..., 4:10:5])
    assert conf.mean() < 0.3


def test_trunk_stride_follows_the_grid_cell():
    assert yolov1_module._grid_stride({4: ("a", 1), 8: ("b", 1), 16: ("c", 1), 32: ("d", 1)}, 448 / 7) == 32
    assert yolov1_module._grid_stride({4: ("a", 1), 8: ("b", 1), 16: ("c", 1), 32: ("d", 1)}, 128 / 7) == 16
    assert yolov1_module._grid_stride({4: ("a", 1), 8: ("b", 1)}, 2.0) == 4
    model = build_model("yolov1", num_classes=2, img_size=128)
    assert model.feature_stride == 16 and "layer4" not in model.backbone_stages
    with pytest.raises(ValueError, match="head must be"):
        build_model("yolov1", num_classes=2, img_size=64, head="mlp")
