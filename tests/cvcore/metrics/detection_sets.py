"""Seeded random detection sets and reference evaluations (pycocotools) for the metric tests."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import polars as pl
from hypothesis import strategies as st

from cvcore import schema


@dataclass(frozen=True)
class DetectionSet:
    images: pl.DataFrame  # image_id
    annotations: pl.DataFrame  # ANNOTATIONS schema
    predictions: pl.DataFrame  # DETECTIONS schema
    category_ids: list[int]  # the category universe, some without any ground truth


def make_detection_set(
    seed: int,
    *,
    n_images: int = 40,
    n_categories: int = 6,
    image_size: float = 400.0,
    crowd_p: float = 0.08,
    difficult_p: float = 0.1,
    score_decimals: int | None = 2,
) -> DetectionSet:
    """A random set with every awkward case the COCO protocol has.

    Crowd boxes, ``area`` != w*h, images without ground truth, images without detections, one
    image with > 100 detections in a category, tied scores (rounded), a category that never
    appears and one only predicted, boxes from ~3 px to ~300 px (all three size ranges).
    """
    rng = np.random.default_rng(seed)
    image_ids = np.sort(rng.choice(np.arange(1000, 1000 + 10 * n_images), n_images, replace=False))
    present = np.arange(n_categories - 2)  # the last two categories never have ground truth
    anns, dets = [], []
    no_gt = set(rng.choice(image_ids, max(1, n_images // 8), replace=False).tolist())
    no_dt = set(rng.choice(image_ids, max(1, n_images // 8), replace=False).tolist())
    crowded = int(rng.choice(image_ids))
    for img in image_ids.tolist():
        n_gt = 0 if img in no_gt else int(rng.integers(1, 9))
        for _ in range(n_gt):
            box = _random_box(rng, image_size)
            cat = int(rng.choice(present))
            w, h = box[2] - box[0], box[3] - box[1]
            area = float(w * h * rng.uniform(0.4, 1.1))  # a segmentation area, not w*h
            anns.append((img, cat, *box, area, bool(rng.random() < crowd_p), bool(rng.random() < difficult_p)))
            if img in no_dt:
                continue
            for _ in range(int(rng.integers(0, 4))):  # near-duplicates of varying quality
                jitter = rng.normal(0, 0.15 * max(w, h) * rng.uniform(0.1, 1.5), 4)
                x1, y1, x2, y2 = np.clip(box + jitter, 0, image_size)
                jb = np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
                dcat = cat if rng.random() < 0.85 else int(rng.integers(0, n_categories))
                dets.append((img, dcat, _score(rng, score_decimals), *jb))
        if img in no_dt:
            continue
        for _ in range(int(rng.integers(0, 6))):  # background false positives
            dets.append(
                (
                    img,
                    int(rng.integers(0, n_categories - 1)),
                    _score(rng, score_decimals),
                    *_random_box(rng, image_size),
                )
            )
        if img == crowded:  # more than 100 detections of one category on one image
            for _ in range(130):
                dets.append((img, 0, _score(rng, score_decimals), *_random_box(rng, image_size)))
    rng.shuffle(dets)
    annotations = pl.DataFrame(
        anns, schema=["image_id", "category_id", "x1", "y1", "x2", "y2", "area", "iscrowd", "difficult"], orient="row"
    ).with_row_index("ann_id", offset=1)
    predictions = pl.DataFrame(dets, schema=["image_id", "category_id", "score", "x1", "y1", "x2", "y2"], orient="row")
    return DetectionSet(
        images=pl.DataFrame({"image_id": image_ids}),
        annotations=schema.validate(annotations, "annotations"),
        predictions=schema.validate(predictions, "detections"),
        category_ids=list(range(n_categories)),
    )


def _random_box(rng: np.random.Generator, size: float) -> np.ndarray:
    w, h = np.exp(rng.uniform(np.log(3), np.log(min(300.0, 0.9 * size)), 2))
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return np.array([x, y, x + w, y + h])


def _score(rng: np.random.Generator, decimals: int | None) -> float:
    s = float(rng.random())
    return round(s, decimals) if decimals is not None else s


def pycocotools_eval(data: DetectionSet):
    """Run pycocotools' COCOeval on the set; returns the COCOeval after summarize()."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [{"id": int(i)} for i in data.images["image_id"]],
        "categories": [{"id": int(c)} for c in data.category_ids],
        "annotations": [
            {
                "id": int(r["ann_id"]),
                "image_id": int(r["image_id"]),
                "category_id": int(r["category_id"]),
                "bbox": [r["x1"], r["y1"], r["x2"] - r["x1"], r["y2"] - r["y1"]],  # exact float64 xywh
                "area": r["area"],
                "iscrowd": int(r["iscrowd"]),
            }
            for r in data.annotations.iter_rows(named=True)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {
                    "image_id": int(r["image_id"]),
                    "category_id": int(r["category_id"]),
                    "bbox": [r["x1"], r["y1"], r["x2"] - r["x1"], r["y2"] - r["y1"]],
                    "score": r["score"],
                }
                for r in data.predictions.iter_rows(named=True)
            ]
        )
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@st.composite
def grid_sets(draw) -> DetectionSet:
    """Tiny sets on an integer grid: exact IoU ties (0.5, 0.75 ...), equal scores, zero-width
    boxes, crowd and difficult flags, images and categories without boxes."""
    n_images = draw(st.integers(1, 3))
    coord = st.integers(0, 12).map(float)

    def box():
        x1, y1, w, h = draw(coord), draw(coord), draw(st.integers(0, 8)), draw(st.integers(0, 8))
        return (x1, y1, x1 + w, y1 + h)

    gt = [(i, draw(st.integers(0, 2)), *box(), float(draw(st.integers(0, 100))),
           draw(st.booleans()) and draw(st.booleans()), draw(st.booleans()) and draw(st.booleans()))
          for i in range(n_images) for _ in range(draw(st.integers(0, 4)))]  # fmt: skip
    dt = [(i, draw(st.integers(0, 2)), draw(st.sampled_from([0.2, 0.5, 0.9])), *box())
          for i in range(n_images) for _ in range(draw(st.integers(0, 6)))]  # fmt: skip
    ann = pl.DataFrame(
        gt, schema=["image_id", "category_id", "x1", "y1", "x2", "y2", "area", "iscrowd", "difficult"], orient="row"
    ).with_row_index("ann_id", offset=1)
    pred = pl.DataFrame(dt, schema=["image_id", "category_id", "score", "x1", "y1", "x2", "y2"], orient="row")
    return DetectionSet(
        images=pl.DataFrame({"image_id": list(range(n_images))}),
        annotations=schema.validate(ann, "annotations"),
        predictions=schema.validate(pred, "detections"),
        category_ids=[0, 1, 2],
    )
