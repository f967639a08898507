"""Per-object scores: which ground-truth objects a detector found, and which objects are crowded.

:func:`evaluate_detections` reports recall per class and area; a bake-off also splits recall by
object (objects that share a grid cell with another object, YOLOv1's "several objects per cell"
weakness, against the others). Both functions return one row per non-crowd object, keyed by
``ann_id``, so the two join. Recall reads COCO's own matching (``cvcore.metrics._matching``), the
matches behind mAP@0.5, not a second matcher.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cvcore.metrics._inputs import Frame, load_detection_inputs
from cvcore.metrics._matching import match_coco


def object_recall(annotations: Frame, predictions: Frame) -> pl.DataFrame:
    """``ann_id, found``: whether each non-crowd object is matched by a detection at IoU 0.5.

    The matches are COCO's (pycocotools' greedy matching, area range "all", the 100 best
    detections per image and category, the lowest IoU threshold 0.5): detections in score
    order each take the free object of their class and image with the highest IoU >= 0.5,
    ties going to the later object in input order as in pycocotools. The found objects are
    exactly the true positives behind COCO's mAP@0.5. ``annotations`` and ``predictions`` are
    in the cvcore.schema ANNOTATIONS / DETECTIONS layouts (xyxy pixels); detections on images
    without annotations cannot find anything and are left out. Rows follow ``annotations``.
    """
    ann = annotations.collect() if isinstance(annotations, pl.LazyFrame) else annotations
    if "iscrowd" not in ann.columns:
        ann = ann.with_columns(iscrowd=pl.lit(False))
    image_ids = ann.get_column("image_id").unique()
    inputs = load_detection_inputs(ann, predictions, images=image_ids)  # every annotation: gt index g is row g
    matches = match_coco(inputs)
    taken = matches.gt_first[matches.gt_first >= 0]  # the object each detection took at bit 0 (area all, IoU 0.5)
    found = np.zeros(ann.height, dtype=bool)
    found[taken] = True
    return (
        ann.select("ann_id", "iscrowd").with_columns(found=pl.Series(found)).filter(~pl.col("iscrowd")).drop("iscrowd")
    )


def crowded_objects(annotations: pl.DataFrame, images: pl.DataFrame, *, grid: int = 7) -> pl.DataFrame:
    """``ann_id, crowded``: whether an object's box centre falls in a cell of the image's
    ``grid`` x ``grid`` partition that holds another object's centre (crowd regions excluded).

    ``images`` has ``image_id, width, height`` (pixels); boxes are xyxy pixels.
    """
    cells = (
        annotations.filter(~pl.col("iscrowd"))
        .join(images.select("image_id", "width", "height"), on="image_id")
        .with_columns(
            cx=(((pl.col("x1") + pl.col("x2")) / 2 / pl.col("width") * grid).floor().clip(0, grid - 1)),
            cy=(((pl.col("y1") + pl.col("y2")) / 2 / pl.col("height") * grid).floor().clip(0, grid - 1)),
        )
    )
    return cells.select("ann_id", crowded=pl.len().over("image_id", "cx", "cy") > 1)
