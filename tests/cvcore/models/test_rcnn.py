"""R-CNN: warping, SVM labels and hard negatives, the SVM stage, box regression, the model."""

from __future__ import annotations

import math

import polars as pl
import pyarrow as pa
import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

from cvcore import schema
from cvcore.data.torch_dataset import DetectionDataset
from cvcore.models import build_model
from cvcore.models.proposals import ProposalSettings, image_key
from cvcore.models.rcnn import (
    RCNN,
    RCNN_BOX_WEIGHTS,
    classifier_features,
    decode_class_boxes,
    hard_negative_mask,
    regression_targets,
    svm_hinge_loss,
    svm_labels,
    warp_regions,
)

CODER = BoxCoder(RCNN_BOX_WEIGHTS)


# -- warping -----------------------------------------------------------------------------------


def _ramp(h: int = 20, w: int = 30) -> torch.Tensor:
    """Pixel (y, x) holds x in channel 0, y in channel 1: bilinear sampling reads exact coordinates."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)])


def test_warp_regions_samples_the_box_on_a_regular_grid():
    crops = warp_regions(_ramp(), torch.tensor([[4.0, 2.0, 14.0, 12.0]]), size=5)
    assert crops.shape == (1, 3, 5, 5)
    # a 10 px box into 5 bins: bin centres at 4+1, 4+3, ... in continuous coordinates, i.e. pixel
    # index centre - 0.5 (aligned=True), where the ramp holds exactly that value
    assert torch.allclose(crops[0, 0, 0], torch.tensor([4.5, 6.5, 8.5, 10.5, 12.5]))
    assert torch.allclose(crops[0, 1, :, 0], torch.tensor([2.5, 4.5, 6.5, 8.5, 10.5]))


def test_warp_regions_context_pad_widens_the_box():
    # size 8, pad 2: the 4 px box fills the central 4 px of the warp, so the crop spans 8 px
    crops = warp_regions(_ramp(), torch.tensor([[10.0, 6.0, 14.0, 10.0]]), size=8, context_pad=2)
    assert torch.allclose(
        crops[0, 0, 0], torch.arange(8.0, 16.0)
    )  # box [8, 4, 16, 12]: 1 px bins centred at 8.5.., read at 8..
    with pytest.raises(ValueError, match="context_pad"):
        warp_regions(_ramp(), torch.zeros(1, 4), size=8, context_pad=4)


# -- SVM labels, hard negatives, the SVM stage -------------------------------------------------


def test_svm_labels_hand_checked():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    gt_labels = torch.tensor([1, 0])
    boxes = torch.cat([gt, torch.tensor([[0.0, 0, 10, 12], [0, 0, 10, 20], [50, 50, 60, 60]])])
    lab = svm_labels(boxes, gt, gt_labels, num_classes=3, pos_iou=0.7, neg_iou=0.3)
    assert lab.dtype == torch.int8 and lab.shape == (5, 3)
    assert lab.tolist() == [
        [-1, 1, -1],  # gt of class 1
        [1, -1, -1],  # gt of class 0
        [-1, 1, -1],  # IoU 0.83 with the class-1 box
        [-1, 0, -1],  # IoU 0.5 with it: ignored for class 1
        [-1, -1, -1],  # background
    ]
    only_gt = svm_labels(boxes, gt, gt_labels, num_classes=3, pos_iou=1.0, neg_iou=0.3)
    assert only_gt[:, 1].tolist() == [1, -1, 0, 0, -1]  # the paper's choice: positives are gt only
    assert (
        svm_labels(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), num_classes=3, pos_iou=0.7, neg_iou=0.3)
        == -1
    ).all()


def test_hard_negative_mask_picks_the_highest_scoring_negatives():
    scores = torch.tensor([[5.0], [-3.0], [2.0], [-1.0], [0.5], [9.0]])
    labels = torch.tensor([[1], [-1], [-1], [-1], [-1], [0]], dtype=torch.int8)
    mask = hard_negative_mask(scores, labels, negatives_per_positive=2, min_negatives=1)
    assert mask[:, 0].tolist() == [False, False, True, False, True, False]  # 2.0 and 0.5; never the ignored 9.0
    everything = hard_negative_mask(scores, labels, negatives_per_positive=2, min_negatives=10)
    assert everything[:, 0].tolist() == [False, True, True, True, True, False]


def test_svm_hinge_loss_hand_checked():
    scores = torch.tensor([[0.5, -2.0], [-0.5, 0.0], [3.0, 1.0]])
    labels = torch.tensor([[1, -1], [-1, 1], [-1, 0]], dtype=torch.int8)
    # class 0: positive 0.5 → 0.5; hard negatives (quota 16 covers both) -0.5 → 0.5 and 3.0 → 4.0
    # class 1: positive 0.0 → 1.0; negative -2.0 → 0.0; the ignored 1.0 does not count
    loss = svm_hinge_loss(scores, labels, negatives_per_positive=3, min_negatives=16)
    assert loss.item() == pytest.approx(((0.5 + 0.5 + 4.0) / 3 + (1.0 + 0.0) / 2) / 2)
    assert svm_hinge_loss(scores, torch.zeros_like(labels)).item() == 0.0


def test_svm_stage_separates_linearly_separable_features():
    torch.manual_seed(0)
    k, d, n = 3, 16, 300
    centres = torch.randn(k, d) * 3
    y = torch.randint(0, k + 1, (n,))  # k means background
    x = torch.randn(n, d) * 0.5 + torch.cat([centres, torch.zeros(1, d)])[y]
    labels = torch.where(y[:, None] == torch.arange(k)[None], 1, -1).to(torch.int8)
    svm = nn.Linear(d, k)
    opt = torch.optim.SGD(svm.parameters(), lr=0.05)
    for _ in range(300):
        loss = (
            svm_hinge_loss(svm(x), labels, negatives_per_positive=3, min_negatives=16)
            + 0.5 * 1e-4 * svm.weight.pow(2).sum()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    margins = svm(x).detach() * labels
    assert (margins > 0).all(), "every training vector on its side of every SVM"
    assert loss.item() < 0.05


# -- box regression ----------------------------------------------------------------------------


def test_regression_targets_hand_checked():
    reg = regression_targets(
        torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]]),
        torch.tensor([[1.0, 2, 11, 12], [2.0, -2, 22, 18]]),
        torch.tensor([3, 1]),
        min_iou=0.5,
        box_coder=CODER,
    )
    assert reg.index.tolist() == [0] and reg.labels.tolist() == [3]
    assert torch.allclose(reg.targets, torch.tensor([[0.1, 0.2, 0.0, 0.0]]))


def test_box_regression_targets_invert_exactly():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=g) * 100
    proposals = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 60], dim=1)
    gt = proposals + torch.randn(50, 4, generator=g) * 3
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    labels = torch.randint(0, 4, (50,), generator=g)
    reg = regression_targets(proposals, gt, labels, min_iou=0.0, box_coder=CODER)
    m = len(reg.index)
    assert m == 50
    # each target in its class's slot of a K*4 delta vector, decoded on its proposal
    deltas = torch.zeros(m, 4, 4)
    deltas[torch.arange(m), reg.labels] = reg.targets
    decoded = decode_class_boxes(deltas.reshape(m, 16), proposals[reg.index], box_coder=CODER)[
        torch.arange(m), reg.labels
    ]
    match = box_iou(proposals, gt).argmax(dim=1)[reg.index]  # the gt box each proposal was paired with
    assert torch.equal(reg.labels, labels[match])
    assert torch.allclose(decoded, gt[match], atol=1e-4)


# -- the model ---------------------------------------------------------------------------------


class _TinyFeatures(nn.Module):
    """A stand-in CNN: ``[B, 3, S, S] -> [B, 12]``, counting the regions it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, stride=2)
        self.bn = nn.BatchNorm2d(12)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def _model(cache_dir=None, **options) -> RCNN:
    torch.manual_seed(0)
    return RCNN(
        4,
        features=_TinyFeatures(),
        feature_dim=12,
        proposals=ProposalSettings(max_proposals=40),
        warp_size=16,
        context_pad=1,
        cache_dir=cache_dir,
        **options,
    )


def _batch(snapshot, n=2):
    ds = DetectionDataset(snapshot, "train")
    samples = [ds.raw(i) for i in range(n)]
    images = [s[0].float() / 255 for s in samples]
    targets = [{"boxes": s[1]["boxes"].as_subclass(torch.Tensor), "labels": s[1]["labels"]} for s in samples]
    return images, targets


def test_rcnn_trains_a_step_only_its_svms_and_regressors(shapes_detection):
    model = _model().train()
    images, targets = _batch(shapes_detection)
    bn_before = model.features.bn.running_mean.clone()
    losses = model(images, targets)
    assert set(losses) == {"loss_svm", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.svm.weight.grad is not None and model.bbox_reg.weight.grad is not None
    assert all(p.grad is None for p in model.features.parameters()), "the CNN is frozen"
    assert torch.equal(model.features.bn.running_mean, bn_before), "frozen batch-norm statistics"
    with pytest.raises(ValueError, match="targets"):
        model(images)


def test_rcnn_finetune_trains_the_cnn_by_softmax_and_the_svms_on_detached_features(shapes_detection):
    model = _model(finetune=True, finetune_regions=8).train()
    assert model.features.training and all(p.requires_grad for p in model.features.parameters())
    images, targets = _batch(shapes_detection)
    bn_before = model.features.bn.running_mean.clone()
    losses = model(images, targets)
    assert set(losses) == {"loss_finetune", "loss_svm", "loss_box_reg"} and all(
        torch.isfinite(v) for v in losses.values()
    )
    assert model.features.seen == 2 * 8, "8 sampled regions per image through the CNN, no feature cache"
    assert not torch.equal(model.features.bn.running_mean, bn_before), "the CNN's batch-norm statistics move"
    (losses["loss_svm"] + losses["loss_box_reg"]).backward()
    assert model.svm.weight.grad is not None and model.svm.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.features.parameters()), "SVMs and regressors learn on detached features"
    losses["loss_finetune"].backward()
    assert model.features.conv.weight.grad is not None and model.features.conv.weight.grad.abs().sum() > 0
    assert model.finetune_cls.out_features == 4 + 1  # K objects + background
    out = model.eval()(images[:1])[0]  # detection is the SVMs' and regressors', as without fine-tuning
    assert not model.features.training and out["boxes"].shape[1] == 4 and (out["scores"] <= 1).all()


def test_rcnn_finetune_samples_foreground_by_iou_with_an_object(monkeypatch):
    """Regions at IoU >= 0.5 with an object are its class (1..K), the rest background (0); a quarter foreground."""
    model = _model(finetune=True, finetune_regions=8)
    image = torch.zeros(3, 64, 64)
    on_object = [[0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0]] * 4  # IoU 1 and 0.82 with the object
    elsewhere = [[40.0, 40.0, 60.0, 60.0], [30.0, 0.0, 50.0, 20.0]] * 4  # IoU 0
    model.proposal_cache.get_or_compute(image_key(image), lambda: {"boxes": torch.tensor(on_object + elsewhere)})
    seen = []
    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(
        torch.nn.functional,
        "cross_entropy",
        lambda logits, classes: seen.append(classes) or cross_entropy(logits, classes),
    )
    target = {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2])}
    losses = model.train()([image], [target])
    assert torch.isfinite(losses["loss_finetune"])
    (classes,) = seen
    assert len(classes) == 8 and sorted(classes.tolist()) == [0] * 6 + [3] * 2  # label 2 is class 3 after background
    seen.clear()
    model(
        [image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    )  # no object: all background
    assert seen[0].tolist() == [0] * 8


def test_rcnn_runs_the_cnn_once_per_training_image(shapes_detection, tmp_path):
    model = _model(cache_dir=tmp_path).train()
    images, targets = _batch(shapes_detection)
    model(images, targets)
    seen = model.features.seen
    assert seen > 0
    model(images, targets)
    assert model.features.seen == seen, "second step reads cached features"
    files = list((tmp_path / "rcnn-features").rglob("*.pt"))
    assert len(files) == 2
    fresh = _model(cache_dir=tmp_path).train()  # same weights: same cache folder, a later run
    fresh(images, targets)
    assert fresh.features.seen == 0
    with torch.no_grad():
        fresh.features.conv.weight.add_(1.0)
    other = _model(cache_dir=tmp_path)
    other.load_state_dict(fresh.state_dict())  # other backbone weights: another cache folder
    other.train()(images, targets)
    assert other.features.seen == seen
    assert len(list((tmp_path / "rcnn-features").iterdir())) == 2


def test_rcnn_detections_fit_the_predictions_schema(shapes_detection):
    from cvcore.engine.infer import predict

    model = _model()
    ds = DetectionDataset(shapes_detection, "val")
    batches = list(predict(model, ds, task="detection", batch_size=4, device="cpu", indices=[0, 1, 2]))
    frame = pl.from_arrow(pa.Table.from_batches(batches))
    assert frame.height > 0
    assert schema.validate(frame, "detections").schema == schema.DETECTIONS
    assert set(frame.get_column("image_id").unique().to_list()) <= set(ds.image_ids[:3].tolist())
    assert frame.get_column("category_id").is_between(0, 3).all()
    assert frame.get_column("score").is_between(0, 1).all()
    assert model.proposals_seen and all(0 < n <= 40 for n in model.proposals_seen)
    out = model.eval()([ds.raw(0)[0].float() / 255])[0]
    assert out["boxes"].shape[1] == 4 and out["labels"].dtype == torch.int64 and len(out["scores"]) <= 100


def test_classifier_features_removes_the_last_linear_layer():
    from torchvision.models import resnet18, vgg11

    feats, dim = classifier_features(resnet18(num_classes=7))
    assert dim == 512 and feats(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    feats, dim = classifier_features(vgg11(num_classes=7))
    assert dim == 4096  # fc7, the paper's features
    with pytest.raises(ValueError, match="linear"):
        classifier_features(nn.Conv2d(3, 3, 1))


def test_rcnn_learns_to_score_objects_above_background(shapes_detection):
    """A few SGD steps on cached features: ground-truth regions outscore background regions."""
    model = _model(svm_pos_iou=1.0)
    images, targets = _batch(shapes_detection, n=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.0)
    model.train()
    for _ in range(60):
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert losses["loss_svm"].item() < 1.0 and math.isfinite(losses["loss_box_reg"].item())


def test_rcnn_loads_a_classifier_as_its_cnn(tmp_path):
    torch.manual_seed(1)
    classifier = build_model("resnet18", num_classes=4, small_input=False)
    torch.save({"model": classifier.state_dict(), "meta": {}}, tmp_path / "cls.pt")
    net = build_model("rcnn", num_classes=3, pretrained=str(tmp_path / "cls.pt"), warp_size=64, finetune=False)
    assert torch.equal(net.features.backbone.layer4[1].conv2.weight, classifier.backbone.layer4[1].conv2.weight)
    assert not any(p.requires_grad for p in net.features.parameters())
    tuned = build_model(
        "rcnn", num_classes=3, pretrained=str(tmp_path / "cls.pt"), warp_size=64
    )  # the default fine-tunes it
    assert torch.equal(tuned.features.backbone.layer4[1].conv2.weight, classifier.backbone.layer4[1].conv2.weight)
    assert tuned.finetune and all(p.requires_grad for p in tuned.features.parameters())


def test_rcnn_with_sliding_windows(shapes_detection):
    torch.manual_seed(0)
    windows = ProposalSettings(method="sliding_windows", window_sizes=(16, 24), aspect_ratios=(1.0,), stride=8)
    model = RCNN(4, features=_TinyFeatures(), feature_dim=12, proposals=windows, warp_size=16, context_pad=0)
    images, targets = _batch(shapes_detection)
    assert set(model.train()(images, targets)) == {"loss_svm", "loss_box_reg"}
    out = model.eval()(images[:1])[0]
    assert (
        model.proposals_seen == [len(windows.propose(images[0]))] == [49 + 36]
    )  # (64 - 16) / 8 + 1 = 7 and (64 - 24) / 8 + 1 = 6 positions a side
    assert out["boxes"].shape[1] == 4 and (out["boxes"] >= 0).all() and (out["boxes"] <= 64).all()


def test_rcnn_detects_a_batch_as_it_detects_each_image(shapes_detection):
    """The regions of a whole batch share CNN passes (chunk_size regions each): same detections as one image at a time."""
    model = _model(chunk_size=7).eval()
    images, _ = _batch(shapes_detection, n=3)
    together = model(images)
    for image, out in zip(images, together):
        alone = model([image])[0]
        assert len(alone["boxes"]) > 0
        for key in ("boxes", "labels", "scores"):
            torch.testing.assert_close(out[key], alone[key])
