"""cvcore.boxes: conversions, IoU and NMS, against hand values and a plain reference NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvcore import boxes


def test_conversions_hand_values_and_round_trips():
    xyxy = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(boxes.xyxy_to_xywh(xyxy), [[10, 20, 20, 40]])
    np.testing.assert_allclose(boxes.xywh_to_xyxy(np.array([[10.0, 20.0, 20.0, 40.0]])), xyxy)
    norm = boxes.xyxy_to_cxcywh_norm(xyxy, width=100, height=200)
    np.testing.assert_allclose(norm, [[0.2, 0.2, 0.2, 0.2]])
    np.testing.assert_allclose(boxes.cxcywh_norm_to_xyxy(norm, width=100, height=200), xyxy)
    rng = np.random.default_rng(0)
    many = np.sort(rng.uniform(0, 500, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4)[:, [0, 2, 1, 3]]
    np.testing.assert_allclose(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(many)), many, atol=1e-9)
    back = boxes.cxcywh_norm_to_xyxy(boxes.xyxy_to_cxcywh_norm(many, width=640, height=480), width=640, height=480)
    np.testing.assert_allclose(back, many, atol=1e-9)


def test_same_kind_in_same_kind_out():
    t = torch.tensor([[0.0, 0.0, 2.0, 4.0]])
    assert isinstance(boxes.xyxy_to_xywh(t), torch.Tensor)
    assert isinstance(boxes.xyxy_to_xywh(t.numpy()), np.ndarray)
    assert boxes.box_area(t).tolist() == [8.0]
    with pytest.raises(ValueError, match=r"expected shape \[N, 4\]"):
        boxes.box_area(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="image size must be positive"):
        boxes.xyxy_to_cxcywh_norm(t, width=0, height=10)


def test_iou_hand_values():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 20.0]])
    np.testing.assert_allclose(boxes.box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.5]])


def _reference_nms(b: np.ndarray, s: np.ndarray, threshold: float) -> list[int]:
    """The notes' rule, in plain Python: sort by score, keep the best, drop IoU > threshold, repeat."""
    order = sorted(range(len(s)), key=lambda i: -s[i])
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        order = [i for i in order if boxes.box_iou(b[[best]], b[[i]])[0, 0] <= threshold]
    return keep


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_equals_plain_reference(threshold):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (60, 2))
    b = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], axis=1)
    s = rng.random(60)
    assert boxes.nms(b, s, iou_threshold=threshold).tolist() == _reference_nms(b, s, threshold)


def test_batched_nms_only_suppresses_within_a_class():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 60, (80, 2))
    b = np.concatenate([xy, xy + rng.uniform(10, 30, (80, 2))], axis=1)
    s = rng.random(80)
    labels = rng.integers(0, 3, 80)
    kept = set(boxes.batched_nms(b, s, labels, iou_threshold=0.5).tolist())
    expected = set()
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        expected |= {int(idx[i]) for i in _reference_nms(b[idx], s[idx], 0.5)}
    assert kept == expected
    same = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert boxes.batched_nms(same, np.array([0.9, 0.8]), np.array([0, 1]), iou_threshold=0.5).tolist() == [0, 1]
    assert boxes.nms(same, np.array([0.9, 0.8]), iou_threshold=0.5).tolist() == [0]


def test_clip():
    clipped = boxes.clip_boxes(np.array([[-5.0, 3.0, 120.0, 90.0]]), width=100, height=80)
    np.testing.assert_allclose(clipped, [[0, 3, 100, 80]])


def test_polars_expressions_convert_the_formats_at_the_edges():
    import polars as pl

    coco = pl.DataFrame({"x": [10, 0.1], "y": [20, 0.2], "w": [30, 0.2], "h": [40, 0.7]}, strict=False)
    xyxy = coco.select(boxes.xyxy_from_xywh())
    assert xyxy.columns == list(boxes.XYXY) and xyxy.schema["x2"] == pl.Float64
    assert xyxy.rows() == [
        (10.0, 20.0, 40.0, 60.0),
        (0.1, 0.2, 0.1 + 0.2, 0.2 + 0.7),
    ]  # x + w exactly, as the COCO reader forms it
    back = xyxy.select(boxes.xywh_from_xyxy())
    assert back.columns == ["x", "y", "w", "h"] and back.row(0) == (10.0, 20.0, 30.0, 40.0)
    assert back.row(1) == (0.1, 0.2, (0.1 + 0.2) - 0.1, (0.2 + 0.7) - 0.2)  # x2 - x1, as the COCO writer forms w

    voc = pl.DataFrame({"xmin": [1.0], "ymin": [1.0], "xmax": [64.0], "ymax": [48.0]})
    assert voc.select(boxes.xyxy_from_voc()).row(0) == (0.0, 0.0, 64.0, 48.0)  # 1-based inclusive -> continuous

    yolo = pl.DataFrame({"cx": [0.5], "cy": [0.25], "w": [0.2], "h": [0.1]})
    norm = yolo.select(boxes.xyxy_from_cxcywh())
    assert norm.row(0) == (0.5 - 0.2 / 2, 0.25 - 0.1 / 2, 0.5 + 0.2 / 2, 0.25 + 0.1 / 2)
    pixels = norm.with_columns(W=pl.lit(640.0), H=pl.lit(480.0)).select(boxes.scale_xyxy("W", "H"))
    np.testing.assert_allclose(pixels.row(0), boxes.cxcywh_norm_to_xyxy(yolo.to_numpy(), width=640, height=480)[0])


def test_the_expressions_import_no_torch():
    import subprocess
    import sys

    code = "import sys, cvcore.boxes, cvcore.data.formats.coco, cvcore.data.ingest; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
