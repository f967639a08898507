"""Mosaic: layout by hand, and properties (size, boxes on their source's pixels, labels with boxes)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors

from cvcore.augment.mosaic import MosaicDataset, make_mosaic, mosaic_active
from cvcore.augment.pipelines import build_transforms
from cvcore.config import AugmentConfig
from cvcore.data.torch_dataset import DetectionDataset

VALUES = (20, 70, 140, 230)  # tile k is painted VALUES[k] everywhere; the grey fill is 114


def tile(k: int, h: int, w: int, boxes: list[list[float]]):
    image = tv_tensors.Image(torch.full((3, h, w), VALUES[k], dtype=torch.uint8))
    bb = tv_tensors.BoundingBoxes(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
    )
    return image, {"boxes": bb, "labels": torch.full((len(boxes),), k, dtype=torch.int64)}


def test_layout_by_hand():
    # 64 px canvas, centre (40, 24), tiles of 32 x 32 at scale 0.5 (long side 32 px: no resize).
    tiles = [tile(k, 32, 32, [[2.0, 2.0, 30.0, 30.0], [0.0, 0.0, 4.0, 4.0]]) for k in range(4)]
    m = make_mosaic(tiles, centre=(40, 24), img_size=64, scales=[0.5] * 4, min_visible=0.0)
    img = m.image
    assert img.shape == (3, 64, 64) and m.centre == (40, 24) and m.boxes_in == 8
    # Tile 0 covers x 8..40, y 0..24 (its bottom-right corner at the centre; its top 8 rows cut).
    assert int(img[0, 10, 20]) == VALUES[0] and int(img[0, 10, 5]) == 114
    assert int(img[0, 10, 50]) == VALUES[1]  # tile 1: x 40..64 (its right 8 columns cut), y 0..24
    assert int(img[0, 40, 20]) == VALUES[2]  # tile 2: x 8..40, y 24..56
    assert int(img[0, 60, 50]) == 114 and int(img[0, 40, 50]) == VALUES[3]  # tile 3: x 40..64, y 24..56
    got = {(int(t), tuple(b)) for t, b in zip(m.tile, m.boxes.tolist())}
    assert (0, (10.0, 0.0, 38.0, 22.0)) in got  # [2,2,30,30] shifted by (8, -8), top cut at 0
    assert (1, (42.0, 0.0, 64.0, 22.0)) in got  # shifted by (40, -8), top cut at 0, right cut at 64
    assert (2, (10.0, 26.0, 38.0, 54.0)) in got  # shifted by (8, 24)
    assert (3, (42.0, 26.0, 64.0, 54.0)) in got  # shifted by (40, 24), right cut
    assert (2, (8.0, 24.0, 12.0, 28.0)) in got  # the small box of tile 2 is fully visible
    # The small boxes of tiles 0 and 1 fell in the cut-off rows (degenerate): dropped with their labels.
    assert len(m.boxes) == 6 and torch.equal(m.labels, m.tile)


@st.composite
def mosaics(draw):
    size = draw(st.sampled_from([48, 64, 96]))
    tiles = []
    for k in range(4):
        h, w = draw(st.integers(16, 80)), draw(st.integers(16, 80))
        boxes = []
        for _ in range(draw(st.integers(0, 4))):
            x1, y1 = draw(st.integers(0, w - 4)), draw(st.integers(0, h - 4))
            boxes.append([x1, y1, draw(st.integers(x1 + 2, w)), draw(st.integers(y1 + 2, h))])
        tiles.append(tile(k, h, w, boxes))
    centre = (draw(st.integers(size // 4, 3 * size // 4)), draw(st.integers(size // 4, 3 * size // 4)))
    scales = [draw(st.floats(0.3, 1.2)) for _ in range(4)]
    return tiles, centre, size, scales


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mosaics())
def test_every_surviving_box_lies_on_pixels_of_its_source_image(case):
    tiles, centre, size, scales = case
    m = make_mosaic(tiles, centre=centre, img_size=size, scales=scales, min_size=1.0, min_visible=0.0)
    assert m.image.shape == (3, size, size) and m.image.dtype == torch.uint8
    assert tuple(m.boxes.canvas_size) == (size, size)
    assert len(m.boxes) == len(m.labels) == len(m.tile)
    assert torch.equal(m.labels, m.tile)  # each tile's boxes carry its label: labels stayed with their boxes
    assert m.boxes_in == sum(len(t[1]["boxes"]) for t in tiles)
    for (x1, y1, x2, y2), k in zip(m.boxes.tolist(), m.tile.tolist()):
        assert 0 <= x1 and 0 <= y1 and x2 <= size and y2 <= size
        assert x2 - x1 >= 1 and y2 - y1 >= 1
        region = m.image[0, math.floor(y1) : math.ceil(y2), math.floor(x1) : math.ceil(x2)]
        assert region.numel() and bool((region == VALUES[k]).all()), (
            f"box {x1, y1, x2, y2} of tile {k} covers other pixels"
        )


def test_min_visible_drops_boxes_mostly_cut_away():
    # A 32 px tile at scale 0.5 (no resize) into the 16 x 16 top-left quadrant shows its
    # bottom-right 16 x 16 part: box [0, 0, 20, 20] keeps a 4 x 4 corner, 4 % of its area.
    tiles = [tile(0, 32, 32, [[0.0, 0.0, 20.0, 20.0], [16.0, 16.0, 32.0, 32.0]]), None, None, None]
    kept = make_mosaic(tiles, centre=(16, 16), img_size=64, scales=[0.5] * 4, min_visible=0.0)
    dropped = make_mosaic(tiles, centre=(16, 16), img_size=64, scales=[0.5] * 4, min_visible=0.1)
    assert kept.boxes.tolist() == [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 16.0, 16.0]]
    assert dropped.boxes.tolist() == [[0.0, 0.0, 16.0, 16.0]]
    assert int(kept.image[0, 40, 40]) == 114  # missing tiles leave grey


def test_centre_must_lie_inside():
    with pytest.raises(ValueError, match="centre"):
        make_mosaic([None] * 4, centre=(0, 10), img_size=32)


def test_mosaic_active_switches_off_for_the_last_epochs():
    assert [mosaic_active(e, epochs=5, close_mosaic=2) for e in range(5)] == [True, True, True, False, False]
    assert all(mosaic_active(e, epochs=5, close_mosaic=0) for e in range(5))


@pytest.fixture
def detection_train(shapes_detection):
    return DetectionDataset(
        shapes_detection, "train", build_transforms(AugmentConfig(), task="detection", img_size=64, train=True)
    )


def test_dataset_outputs_the_configured_size_and_is_a_function_of_seed_epoch_index(detection_train, shapes_detection):
    ds = MosaicDataset(detection_train, p=1.0, img_size=64, seed=5)
    built = []
    ds.on_mosaic = built.append
    image, target = ds[3]
    assert len(built) == 1 and image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert target["image_id"] == int(detection_train.image_ids[3])
    assert (target["boxes"] >= 0).all() and (target["boxes"] <= 64).all()
    again = MosaicDataset(detection_train, p=1.0, img_size=64, seed=5)[3]
    assert torch.equal(image, again[0]) and torch.equal(target["boxes"], again[1]["boxes"])
    ds.set_epoch(1)
    other = ds[3]
    assert not torch.equal(image, other[0])
    assert not torch.equal(image, MosaicDataset(detection_train, p=1.0, img_size=64, seed=6)[3][0])


def test_disabled_or_p0_gives_the_plain_sample(shapes_detection):
    raw = DetectionDataset(shapes_detection, "train")
    for ds in (MosaicDataset(raw, p=0.0, img_size=64, seed=0), MosaicDataset(raw, p=1.0, img_size=64, seed=0)):
        ds.enabled = ds.p == 0.0  # p=0 enabled, p=1 disabled: both must give the raw image
        image, target = ds[2]
        ref_image, ref_target = raw.raw(2)
        assert torch.equal(image, ref_image) and torch.equal(target["boxes"], ref_target["boxes"])


def test_mosaic_probability_is_respected(shapes_detection):
    ds = MosaicDataset(DetectionDataset(shapes_detection, "train"), p=0.5, img_size=64, seed=0)
    built = []
    ds.on_mosaic = built.append
    for i in range(len(ds)):
        ds[i]
    assert 0.2 * len(ds) <= len(built) <= 0.8 * len(ds)  # 24 draws at p=0.5 (seeded, so fixed)


def test_from_config_takes_the_mosaic_fields(shapes_detection):
    config = AugmentConfig(mosaic_p=0.25, mosaic_scale=(0.4, 0.6), min_box_size=3.0, seed=4)
    ds = MosaicDataset.from_config(DetectionDataset(shapes_detection, "train"), config, img_size=64)
    assert (ds.p, ds.scale, ds.min_size, ds.seed, ds.img_size) == (0.25, (0.4, 0.6), 3.0, 4, 64)
