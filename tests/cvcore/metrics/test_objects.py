"""Per-object scores (cvcore.metrics.objects): crowded grid cells, objects found by COCO's matching."""

from __future__ import annotations

import polars as pl

from cvcore.metrics.objects import crowded_objects, object_recall


def _ann(rows):
    return pl.DataFrame(
        rows, schema=["ann_id", "image_id", "category_id", "x1", "y1", "x2", "y2"], orient="row"
    ).with_columns(pl.col("category_id").cast(pl.Int32), area=pl.lit(1.0), iscrowd=pl.lit(False))


def _preds(rows):
    return pl.DataFrame(
        rows, schema=["image_id", "category_id", "score", "x1", "y1", "x2", "y2"], orient="row"
    ).with_columns(pl.col("category_id").cast(pl.Int32), pl.col("score").cast(pl.Float64))


def test_crowded_objects_share_a_grid_cell():
    images = pl.DataFrame({"image_id": [1, 2], "width": [70, 70], "height": [70, 70]})
    # 7x7 grid of 10 px cells: centres (5, 5) and (8, 8) share cell (0, 0); (25, 5) is alone
    anns = _ann(
        [
            (1, 1, 0, 0.0, 0.0, 10.0, 10.0),
            (2, 1, 1, 6.0, 6.0, 10.0, 10.0),
            (3, 1, 0, 20.0, 0.0, 30.0, 10.0),
            (4, 2, 0, 0.0, 0.0, 10.0, 10.0),
        ]
    )
    got = crowded_objects(anns, images, grid=7).sort("ann_id")
    assert got.get_column("crowded").to_list() == [True, True, False, False]


def test_object_recall_is_greedy_by_score_and_class_aware():
    anns = _ann(
        [
            (1, 1, 0, 0.0, 0.0, 10.0, 10.0),
            (2, 1, 0, 2.0, 0.0, 12.0, 10.0),
            (3, 1, 1, 50.0, 50.0, 60.0, 60.0),
            (4, 2, 0, 0.0, 0.0, 10.0, 10.0),
        ]
    )
    preds = _preds(
        [
            (1, 0, 0.9, 0.5, 0.0, 10.5, 10.0),  # IoU 0.90 with 1, 0.74 with 2: takes 1 (the higher IoU)
            (1, 0, 0.8, 0.5, 0.0, 10.5, 10.0),  # the same box again: 1 is taken, so it takes 2
            (1, 0, 0.7, 50.0, 50.0, 60.0, 60.0),  # right place, wrong class: finds nothing
            (2, 0, 0.5, 30.0, 30.0, 40.0, 40.0),  # misses
        ]
    )
    got = object_recall(anns, preds).sort("ann_id")
    assert got.get_column("found").to_list() == [True, True, False, False]
    one = object_recall(anns, preds.filter(pl.col("score") > 0.85)).sort("ann_id")
    assert one.get_column("found").to_list() == [True, False, False, False]
    assert object_recall(anns, preds.head(0)).get_column("found").sum() == 0


def test_object_recall_breaks_iou_ties_as_pycocotools():
    """A box with the same IoU (0.82) with objects 1 and 2: pycocotools' ``<`` test keeps the later
    object in input order, so the top detection takes 2, the next copy 1."""
    anns = _ann([(1, 1, 0, 0.0, 0.0, 10.0, 10.0), (2, 1, 0, 2.0, 0.0, 12.0, 10.0)])
    preds = _preds([(1, 0, 0.9, 1.0, 0.0, 11.0, 10.0), (1, 0, 0.8, 1.0, 0.0, 11.0, 10.0)])
    assert object_recall(anns, preds.head(1)).sort("ann_id").get_column("found").to_list() == [False, True]
    assert object_recall(anns, preds).sort("ann_id").get_column("found").to_list() == [True, True]


def test_object_recall_leaves_crowd_regions_out_and_agrees_with_coco_recall():
    from cvcore.metrics import evaluate_detections

    anns = _ann([(1, 1, 0, 0.0, 0.0, 10.0, 10.0), (2, 1, 0, 40.0, 40.0, 60.0, 60.0), (3, 2, 0, 0.0, 0.0, 10.0, 10.0)])
    anns = anns.with_columns(iscrowd=pl.col("ann_id") == 2, area=pl.lit(100.0))
    preds = _preds(
        [(1, 0, 0.9, 41.0, 41.0, 59.0, 59.0), (1, 0, 0.8, 0.0, 0.0, 10.0, 9.0), (2, 0, 0.7, 5.0, 5.0, 15.0, 15.0)]
    )
    got = object_recall(anns, preds).sort("ann_id")
    assert got.get_column("ann_id").to_list() == [1, 3] and got.get_column("found").to_list() == [True, False]
    # the found objects are COCO's true positives at IoU 0.5: recall@0.5 of its PR curve's last point
    curve = evaluate_detections(anns, preds, images=[1, 2]).pr_curve.filter(
        (pl.col("iou_threshold") == 0.5) & pl.col("precision").gt(0)
    )
    assert curve.get_column("recall").max() == got.get_column("found").mean()
