"""Validation metrics: an oracle scores perfectly, so boxes survive resize → predict → map back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvcore.config import EvalConfig
from cvcore.data.torch_dataset import dataset_for
from cvcore.engine.validate import ValidationSettings, selection_key, validate

from engine_helpers import resize_transform


class Oracle(nn.Module):
    """Returns, image after image in dataset order, the ground truth as the eval transform left it
    (boxes in the 32 px input's pixels), shifted by ``shift`` pixels, score 1."""

    def __init__(self, dataset, shift: float = 0.0):
        super().__init__()
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.shift, self.calls = shift, 0

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets[self.calls]
            self.calls += 1
            boxes = t["boxes"].as_subclass(torch.Tensor) + self.shift
            out.append({"boxes": boxes, "labels": t["labels"], "scores": torch.ones(len(boxes))})
        return out


def _settings() -> ValidationSettings:
    return ValidationSettings(
        batch_size=3, num_workers=0, device=torch.device("cpu"), amp=False, eval=EvalConfig(protocol="coco")
    )


def test_a_perfect_detector_scores_map_one(shapes_detection):
    ds = dataset_for(shapes_detection, "val", resize_transform(32))  # 64 px images seen at 32 px
    metrics = validate(Oracle(ds), ds, task="detection", settings=_settings())
    assert metrics["val/map_50"] == pytest.approx(1.0)
    assert metrics["val/map"] == pytest.approx(1.0)


def test_boxes_off_by_a_few_pixels_lose_ap_at_strict_iou(shapes_detection):
    ds = dataset_for(shapes_detection, "val", resize_transform(32))
    metrics = validate(Oracle(ds, shift=2.0), ds, task="detection", settings=_settings())  # 4 px in the originals
    assert metrics["val/map_75"] < metrics["val/map_50"] <= 1.0


def test_epochs_rank_by_accuracy_then_macro_f1():
    a = {"val/accuracy": 0.9, "val/macro_f1": 0.8}
    b = {"val/accuracy": 0.9, "val/macro_f1": 0.85}
    c = {"val/accuracy": float("nan"), "val/macro_f1": 1.0}
    assert selection_key(b, "classification") > selection_key(a, "classification") > selection_key(c, "classification")
    assert selection_key({"val/map_50": 0.4}, "detection") == (0.4,)


class _Decoding(Oracle):
    """An oracle whose eval decoding the engine sets, as for YOLOv1 and Faster R-CNN."""

    def __init__(self, dataset):
        super().__init__(dataset)
        self.postprocess: dict = {}

    def set_postprocess(self, **settings):
        self.postprocess = settings


def test_validation_decodes_with_the_eval_config(shapes_detection):
    ds = dataset_for(shapes_detection, "val", resize_transform(32))
    model = _Decoding(ds)
    settings = ValidationSettings(
        batch_size=3, num_workers=0, device=torch.device("cpu"), amp=False,
        eval=EvalConfig(score_threshold=0.2, nms_iou=0.6, max_detections=7),
    )  # fmt: skip
    validate(model, ds, task="detection", settings=settings)
    assert model.postprocess == {"score_threshold": 0.2, "nms_iou": 0.6, "max_detections": 7}


class _Proposing(Oracle):
    """An oracle with region proposals (as R-CNN and Fast R-CNN have): the true boxes plus one
    that fits nothing, so proposal recall is 1 at IoU 0.5 with 1 + objects proposals per image."""

    asked = 0

    def proposals(self, image):
        boxes = self.targets[self.asked % len(self.targets)]["boxes"].as_subclass(torch.Tensor)  # dataset order
        self.asked += 1
        return torch.cat([boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]])])


def test_two_stage_models_report_proposal_recall(shapes_detection):
    ds = dataset_for(shapes_detection, "val", resize_transform(32))
    metrics = validate(_Proposing(ds), ds, task="detection", settings=_settings())
    assert metrics["val/proposal_recall_50"] == pytest.approx(1.0) and metrics[
        "val/proposal_recall_70"
    ] == pytest.approx(1.0)
    n_boxes = sum(len(t["boxes"]) for t in _Proposing(ds).targets)
    assert metrics["val/proposal_per_image"] == pytest.approx(1 + n_boxes / len(ds))
    assert "val/proposal_recall_50" not in validate(Oracle(ds), ds, task="detection", settings=_settings())


def test_an_unreadable_val_image_is_left_out_of_the_scored_images(shapes_detection, tmp_path):
    """As in evaluation: a perfect detector still scores 1 when one val image (with objects) cannot be read."""
    import shutil

    import polars as pl

    from cvcore.data.snapshot import read_snapshot

    shutil.copytree(shapes_detection.path, tmp_path / "snap")
    snap = read_snapshot(tmp_path / "snap")
    val = snap.split_images("val").filter(pl.col("image_id").is_in(snap.annotations["image_id"].implode()))
    snap.image_path(val["file_name"][0]).write_bytes(b"not an image")
    ds = dataset_for(snap, "val", resize_transform(32))

    class ReadableOracle(Oracle):
        def __init__(self, dataset):
            nn.Module.__init__(self)
            self.targets = [s[1] for s in (dataset[i] for i in range(len(dataset))) if s is not None]
            self.shift, self.calls = 0.0, 0

    metrics = validate(ReadableOracle(ds), ds, task="detection", settings=_settings())
    assert len(ReadableOracle(ds).targets) == len(ds) - 1
    assert metrics["val/map_50"] == pytest.approx(1.0) and metrics["val/mar_100"] == pytest.approx(1.0)
