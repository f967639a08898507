"""Fast R-CNN: one CNN pass per image, RoI pooling, the multi-task loss, the interface."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
import torch

from cvcore import schema
from cvcore.data.torch_dataset import DetectionDataset
from cvcore.models import build_model
from cvcore.models.fast_rcnn import FastRCNN

# A small trunk keeps the test fast: resnet18 up to layer2 (stride 8), no upscaling of 64-px images.
OPTIONS = {
    "stage": "layer2",
    "min_size": 64,
    "max_size": 64,
    "representation": 64,
    "max_proposals": 50,
    "batch_size_per_image": 16,
}


def _batch(snapshot, split="train", n=2):
    ds = DetectionDataset(snapshot, split)
    samples = [ds.raw(i) for i in range(n)]
    images = [s[0].float() / 255 for s in samples]
    targets = [{"boxes": s[1]["boxes"].as_subclass(torch.Tensor), "labels": s[1]["labels"]} for s in samples]
    return images, targets


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("fast_rcnn", num_classes=4, **OPTIONS)


def test_fast_rcnn_trains_a_step_end_to_end(model, shapes_detection):
    images, targets = _batch(shapes_detection)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # end to end: the trunk gets gradients through RoIAlign, not only the heads
    assert model.backbone.body.layer1[0].conv1.weight.grad is not None
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # K + background
    model.zero_grad()
    with pytest.raises(ValueError, match="targets"):
        model(images)


def test_fast_rcnn_runs_the_cnn_once_per_image(model, shapes_detection):
    calls = []
    handle = model.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    try:
        images, _ = _batch(shapes_detection, "val", n=3)
        with torch.no_grad():
            model.eval()(images)
    finally:
        handle.remove()
    assert calls == [3], "one batched trunk pass for three images, however many proposals"


def test_fast_rcnn_caches_proposals_per_image(shapes_detection, tmp_path):
    torch.manual_seed(0)
    net = build_model("fast_rcnn", num_classes=4, cache_dir=str(tmp_path), **OPTIONS).eval()
    images, _ = _batch(shapes_detection, "val", n=2)
    with torch.no_grad():
        net(images)
        net(images)
    assert net.proposal_cache.misses == 2 and net.proposal_cache.hits == 2
    assert len(list((tmp_path / "proposals").rglob("*.pt"))) == 2
    assert net.proposals_seen and all(0 < n <= 50 for n in net.proposals_seen)


def test_fast_rcnn_detections_fit_the_predictions_schema(model, shapes_detection):
    from cvcore.engine.infer import predict

    ds = DetectionDataset(shapes_detection, "val")
    batches = list(predict(model, ds, task="detection", batch_size=4, device="cpu", indices=[0, 1, 2]))
    frame = pl.from_arrow(pa.Table.from_batches(batches))
    assert schema.validate(frame, "detections").schema == schema.DETECTIONS
    assert frame.get_column("category_id").is_between(0, 3).all()  # background never leaks out
    out = model.eval()([ds.raw(0)[0].float() / 255])[0]
    assert out["labels"].dtype == torch.int64 and out["boxes"].shape[1] == 4
    assert (out["boxes"][:, 2:] <= 64).all(), "boxes in the input image's pixels, not the resized one's"


def test_fast_rcnn_loads_a_classifier_as_its_trunk(tmp_path):
    torch.manual_seed(1)
    classifier = build_model("resnet18", num_classes=4, small_input=False)
    torch.save({"model": classifier.state_dict(), "meta": {}}, tmp_path / "cls.pt")
    net = build_model("fast_rcnn", num_classes=3, pretrained=str(tmp_path / "cls.pt"), **OPTIONS)
    assert isinstance(net, FastRCNN)
    assert torch.equal(net.backbone.body.layer2[0].conv1.weight, classifier.backbone.layer2[0].conv1.weight)
    assert list(net.backbone_stages) == ["stem", "layer1", "layer2"]
