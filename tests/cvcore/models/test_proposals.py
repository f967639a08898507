"""Region proposals: selective search, sliding windows, proposal recall, the tensor cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cvcore.models.proposals import (
    TensorCache,
    dataset_proposal_recall,
    image_key,
    proposal_recall,
    selective_search,
    sliding_windows,
    window_shape,
)

# Three flat rectangles on a flat background: any sensible grouping finds them exactly.
OBJECTS = torch.tensor([[8.0, 10.0, 30.0, 40.0], [40.0, 6.0, 60.0, 20.0], [36.0, 34.0, 58.0, 58.0]])


def _simple_image() -> torch.Tensor:
    img = torch.full((3, 64, 64), 0.5)
    colours = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)]
    for (x1, y1, x2, y2), colour in zip(OBJECTS.int().tolist(), colours):
        img[:, y1:y2, x1:x2] = torch.tensor(colour)[:, None, None]
    return img


def _noisy_image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, 96, 80), generator=g)


def test_selective_search_boxes_are_inside_the_image_and_well_formed():
    boxes = selective_search(_noisy_image(), strategy="fast")
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 96).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


@pytest.mark.parametrize("strategy", ["fast", "quality"])
def test_selective_search_honours_the_cap(strategy):
    uncapped = selective_search(_noisy_image(), strategy=strategy)
    capped = selective_search(_noisy_image(), strategy=strategy, max_proposals=7)
    assert len(uncapped) > 7 and len(capped) <= 7


def test_selective_search_recalls_the_objects_of_a_simple_image():
    boxes = selective_search(_simple_image(), strategy="fast")
    rec = proposal_recall([boxes], [OBJECTS], iou=(0.5, 0.7, 0.95))
    assert rec.recall == {0.5: 1.0, 0.7: 1.0, 0.95: 1.0}


def test_selective_search_accepts_uint8_and_is_reproducible_for_a_seed():
    img = (_noisy_image(1) * 255).round().to(torch.uint8)
    a = selective_search(img, max_proposals=20, seed=3)
    b = selective_search(img, max_proposals=20, seed=3)
    assert torch.equal(a, b)
    # float [0, 1] input gives the same pixels, hence the same boxes
    assert torch.equal(a, selective_search(img.float() / 255, max_proposals=20, seed=3))


def test_selective_search_rejects_bad_input():
    with pytest.raises(ValueError, match="strategy"):
        selective_search(_simple_image(), strategy="slow")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        selective_search(torch.zeros(64, 64))


def test_sliding_windows_hand_checked_case():
    boxes = sliding_windows(10, 10, sizes=(4,), aspect_ratios=(1.0,), stride=3)
    assert len(boxes) == 9  # x0 and y0 in {0, 3, 6}
    assert boxes[0].tolist() == [0, 0, 4, 4] and boxes[-1].tolist() == [6, 6, 10, 10]
    assert boxes[1].tolist() == [3, 0, 7, 4]  # rows are scanned left to right first


@pytest.mark.parametrize("height,width,stride", [(64, 48, 8), (50, 77, 5), (20, 20, 16)])
def test_sliding_window_counts_match_the_formula(height, width, stride):
    sizes, ratios = (8, 16, 32, 40), (0.5, 1.0, 2.0)
    boxes = sliding_windows(height, width, sizes=sizes, aspect_ratios=ratios, stride=stride)
    expected = 0
    for s in sizes:
        for a in ratios:
            w, h = round(s / math.sqrt(a)), round(s * math.sqrt(a))
            if w <= width and h <= height:
                expected += ((width - w) // stride + 1) * ((height - h) // stride + 1)
    assert len(boxes) == expected
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    sides = {(round(float(b[2] - b[0])), round(float(b[3] - b[1]))) for b in boxes}
    assert sides <= {window_shape(s, a) for s in sizes for a in ratios}


def test_window_shape_keeps_the_area_and_ratio():
    assert window_shape(32, 1.0) == (32, 32)
    assert window_shape(32, 4.0) == (16, 64)  # aspect ratio is height / width


def test_proposal_recall_hand_checked():
    gt = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([[0.0, 0, 4, 4]]), torch.zeros(0, 4)]
    props = [
        torch.tensor([[0.0, 0, 10, 12]]),  # IoU 100/120 = 0.833 with the first box, 0 with the second
        torch.tensor([[0.0, 0, 4, 6]]),  # IoU 16/24 = 0.667
        torch.tensor([[1.0, 1, 2, 2], [3, 3, 5, 5]]),  # an image without objects: no effect on recall
    ]
    rec = proposal_recall(props, gt, iou=(0.5, 0.7))
    assert rec.num_gt == 3 and rec.num_images == 3
    assert rec.recall[0.5] == pytest.approx(2 / 3) and rec.recall[0.7] == pytest.approx(1 / 3)
    assert rec.proposals_per_image == pytest.approx(4 / 3)
    assert rec.as_metrics() == {
        "proposal_recall_50": pytest.approx(2 / 3),
        "proposal_recall_70": pytest.approx(1 / 3),
        "proposal_per_image": pytest.approx(4 / 3),
    }


def test_proposal_recall_without_proposals_or_objects():
    assert proposal_recall([torch.zeros(0, 4)], [torch.tensor([[0.0, 0, 5, 5]])]).recall == {0.5: 0.0, 0.7: 0.0}
    assert proposal_recall([], []).recall == {0.5: 0.0, 0.7: 0.0}
    with pytest.raises(ValueError, match="images"):
        proposal_recall([torch.zeros(0, 4)], [])


def test_image_key_depends_on_content_only():
    a = _noisy_image(0)
    assert image_key(a) == image_key(a.clone())
    assert image_key(a) != image_key(_noisy_image(1))
    assert image_key(a, OBJECTS) != image_key(a, OBJECTS + 1)


def test_tensor_cache_computes_once_and_persists_on_disk(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"boxes": torch.arange(8.0).reshape(2, 4)}

    cache = TensorCache(tmp_path / "c")
    first = cache.get_or_compute("abcd", compute)
    second = cache.get_or_compute("abcd", compute)
    assert len(calls) == 1 and torch.equal(first["boxes"], second["boxes"])
    fresh = TensorCache(tmp_path / "c")  # a new process would see the file
    assert torch.equal(fresh.get_or_compute("abcd", compute)["boxes"], first["boxes"])
    assert len(calls) == 1 and fresh.hits == 1
    assert [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()] == ["abcd.pt"]  # no temp left


def test_tensor_cache_recomputes_a_corrupt_entry_and_evicts_from_memory(tmp_path):
    cache = TensorCache(tmp_path, max_memory_bytes=4)  # room for one float32[1]
    cache.get_or_compute("k1", lambda: {"x": torch.ones(1)})
    (tmp_path / "k1" / "k1.pt").write_bytes(b"not a torch file")
    cache.get_or_compute("k2", lambda: {"x": torch.zeros(1)})  # evicts k1 from memory
    again = cache.get_or_compute("k1", lambda: {"x": torch.full((1,), 7.0)})
    assert again["x"].item() == 7.0 and cache.misses == 3
    assert np.isclose(TensorCache(tmp_path).get_or_compute("k1", lambda: {"x": torch.zeros(1)})["x"].item(), 7.0)


def test_dataset_proposal_recall_over_a_detection_dataset(shapes_detection):
    from cvcore.data.torch_dataset import DetectionDataset

    ds = DetectionDataset(shapes_detection, "val")
    seen = []

    def propose(image):
        seen.append(image.dtype)
        return torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # the whole image: finds only huge objects

    rec = dataset_proposal_recall(propose, ds)
    assert rec.num_images == len(ds) and seen == [torch.float32] * len(ds)
    n_objects = sum(len(ds.targets[i][0]) for i in range(len(ds)))
    assert rec.num_gt == n_objects and rec.recall[0.5] < 0.5
    nothing = dataset_proposal_recall(lambda image: torch.zeros(0, 4), ds)
    assert nothing.recall == {0.5: 0.0, 0.7: 0.0}


def test_proposal_settings_choose_the_method_and_cap_it():
    from cvcore.models.proposals import ProposalSettings

    windows = ProposalSettings(
        method="sliding_windows", window_sizes=[8, 16], aspect_ratios=[1], stride=4, max_proposals=10
    )
    boxes = windows.propose(torch.zeros(3, 32, 32))
    assert len(boxes) == 10 and boxes[0].tolist() == [0, 0, 8, 8]  # 49 + 25 windows thinned evenly to 10
    assert (
        windows.window_sizes == (8.0, 16.0)
        and windows.key()
        == ProposalSettings(
            method="sliding_windows", window_sizes=(8, 16), aspect_ratios=(1.0,), stride=4, max_proposals=10
        ).key()
    )
    assert windows.key() != ProposalSettings().key()
    assert len(ProposalSettings(max_proposals=5).propose(_noisy_image())) <= 5
    with pytest.raises(ValueError, match="proposal method"):
        ProposalSettings(method="edge_boxes")
    with pytest.raises(ValueError, match="max_proposals"):
        ProposalSettings(max_proposals=0)
