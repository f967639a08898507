"""Statistics of an augmentation run: boxes kept/dropped per step, label distributions.

:class:`TracedPipeline` runs the steps of a pipeline exactly as ``v2.Compose`` does (same calls,
same random draws, so the same outputs) and counts, for every step, the images and boxes that go
in and come out, and the boxes the step *invalidated*: left degenerate (narrower or shorter than
``min_size``) or off the canvas, so that SanitizeBoundingBoxes removes them later. The sanitiser's
own row shows the removal (boxes_in - boxes_out). Mosaic and batch mixing add their own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cvcore.augment.pipelines import Step

STEP_SCHEMA = pl.Schema(
    {
        "step": pl.Int32,
        "transform": pl.String,
        "images": pl.Int64,  # images that went through the step
        "boxes_in": pl.Int64,  # null for classification
        "boxes_out": pl.Int64,
        "invalidated": pl.Int64,  # boxes this step made degenerate or pushed off the canvas
    }
)
LABEL_SCHEMA = pl.Schema(
    {
        "category_id": pl.Int32,
        "name": pl.String,
        "before": pl.Float64,  # boxes (detection) or images (classification) per class, unaugmented
        "after": pl.Float64,  # the same after augmentation (soft-label mass after CutMix/MixUp)
        "before_share": pl.Float64,
        "after_share": pl.Float64,
    }
)


@dataclass(frozen=True)
class AugmentStats:
    """What one augment stage did.

    ``steps``: STEP_SCHEMA rows (Mosaic, pipeline steps, CutMix/MixUp), summed over the samples;
    ``labels``: LABEL_SCHEMA rows, one per class; ``summary``: per-image figures (detection:
    ``boxes_per_image_before/after``, ``empty_images_before/after`` (fractions), ``mosaic_fraction``;
    classification: ``mixed_fraction``, ``mean_top_weight`` (the largest weight of each soft label:
    CutMix/MixUp move class mass between images but keep the per-class totals of a batch, so this
    is where mixing shows)); ``snapshot``: the materialised snapshot folder.
    """

    task: str
    split: str
    n_samples: int
    steps: pl.DataFrame
    labels: pl.DataFrame
    pipeline: list[dict[str, Any]]
    preview_path: Path
    summary: dict[str, float] = field(default_factory=dict)
    snapshot: Path | None = None
    n_materialized: int = 0


class TracedPipeline:
    """A drop-in for ``v2.Compose(steps)`` that counts images and boxes per step."""

    def __init__(self, steps: Sequence[Step], *, min_size: float = 1.0):
        self.steps = list(steps)
        self.min_size = float(min_size)
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=self.min_size, labels_getter=lambda inputs: inputs[1]["idx"])
        self._counts = np.zeros((len(self.steps), 4), dtype=np.int64)  # images, boxes_in, boxes_out, invalidated
        self._has_boxes = False

    def __call__(self, *inputs: Any) -> Any:
        needs_unpacking = len(inputs) > 1  # exactly v2.Compose's convention
        for i, step in enumerate(self.steps):
            before = self._invalid_mask(inputs)
            outputs = step.transform(*inputs)
            inputs = outputs if needs_unpacking else (outputs,)
            after = self._invalid_mask(inputs)
            self._counts[i, 0] += 1
            if before is not None and after is not None:
                self._has_boxes = True
                self._counts[i, 1] += len(before)
                self._counts[i, 2] += len(after)
                if len(before) == len(after):  # same boxes, in order: which ones this step broke
                    self._counts[i, 3] += int((after & ~before).sum())
        return outputs

    def table(self, *, first_step: int = 0) -> pl.DataFrame:
        """The counts as STEP_SCHEMA rows, steps numbered from ``first_step``."""
        rows = [
            {
                "step": first_step + i,
                "transform": s.name,
                "images": int(c[0]),
                "boxes_in": int(c[1]) if self._has_boxes else None,
                "boxes_out": int(c[2]) if self._has_boxes else None,
                "invalidated": int(c[3]) if self._has_boxes else None,
            }
            for i, (s, c) in enumerate(zip(self.steps, self._counts))
        ]
        return pl.DataFrame(rows, schema=STEP_SCHEMA)

    def _invalid_mask(self, inputs: tuple) -> torch.Tensor | None:
        """bool[N]: boxes SanitizeBoundingBoxes would drop (after clamping), or None without boxes."""
        target = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], dict) else None
        boxes = target.get("boxes") if target else None
        if not isinstance(boxes, tv_tensors.BoundingBoxes):
            return None
        idx = torch.arange(len(boxes))
        _, kept = self._sanitize(F.clamp_bounding_boxes(boxes), {"idx": idx})
        invalid = torch.ones(len(boxes), dtype=torch.bool)
        invalid[kept["idx"]] = False
        return invalid


def step_row(
    step: int, name: str, *, images: int, boxes_in: int | None, boxes_out: int | None, invalidated: int | None
) -> pl.DataFrame:
    """One STEP_SCHEMA row (for the Mosaic and batch-mixing rows)."""
    return pl.DataFrame(
        [
            {
                "step": step,
                "transform": name,
                "images": images,
                "boxes_in": boxes_in,
                "boxes_out": boxes_out,
                "invalidated": invalidated,
            }
        ],
        schema=STEP_SCHEMA,
    )


def label_distribution(before: np.ndarray, after: np.ndarray, *, class_names: Sequence[str]) -> pl.DataFrame:
    """LABEL_SCHEMA rows from per-class totals ``before``/``after`` (float[K] each)."""
    k = len(class_names)
    if before.shape != (k,) or after.shape != (k,):
        raise ValueError(f"expected per-class totals of length {k}, got {before.shape} and {after.shape}")
    frame = pl.DataFrame(
        {
            "category_id": np.arange(k, dtype=np.int32),
            "name": list(class_names),
            "before": before.astype(np.float64),
            "after": after.astype(np.float64),
        }
    )
    return frame.with_columns(
        before_share=pl.col("before") / pl.col("before").sum().clip(lower_bound=1e-12),
        after_share=pl.col("after") / pl.col("after").sum().clip(lower_bound=1e-12),
    ).cast(dict(LABEL_SCHEMA))


def class_counts(labels: Sequence[torch.Tensor], *, num_classes: int) -> np.ndarray:
    """float64[K]: how often each class occurs in the concatenated int64 label tensors."""
    flat = (
        torch.cat([torch.as_tensor(lab, dtype=torch.int64).reshape(-1) for lab in labels])
        if labels
        else torch.zeros(0, dtype=torch.int64)
    )
    return torch.bincount(flat, minlength=num_classes).double().numpy()
