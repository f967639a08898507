"""Bootstrap intervals and paired comparisons (detection mAP and classification macro-F1)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from detection_sets import make_detection_set
from sklearn.metrics import f1_score

from cvcore.metrics._inputs import load_detection_inputs
from cvcore.metrics._protocols import class_ap, match, mean_ap
from cvcore.metrics.bootstrap import (
    bootstrap_macro_f1,
    bootstrap_map,
    compare_classifications,
    compare_detections,
    image_weights,
)
from cvcore.metrics.detection import evaluate_detections
from cvcore.metrics.errors import detection_errors


def test_image_weights_are_seeded_resamples():
    w = image_weights(50, n_boot=8, seed=3)
    assert w.shape == (8, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, image_weights(50, n_boot=8, seed=3))
    assert not np.array_equal(w, image_weights(50, n_boot=8, seed=4))


@pytest.mark.parametrize("protocol", ["coco", "voc07", "voc12"])
def test_weighted_replicate_equals_evaluating_the_duplicated_images(protocol):
    """Weights are a shortcut for copying images: same mAP as the explicitly resampled set."""
    data = make_detection_set(8, n_images=20, score_decimals=None)
    inputs = load_detection_inputs(data.annotations, data.predictions, images=data.images)
    matches = match(inputs, protocol)
    for w in image_weights(inputs.num_images, n_boot=3, seed=0):
        fast = mean_ap(class_ap(inputs, matches, protocol, image_weights=w))
        copies = pl.DataFrame({"image_id": np.repeat(inputs.image_ids, w)}).with_columns(
            new=pl.col("image_id") * 1000 + pl.int_range(pl.len()).over("image_id")
        )
        ann = data.annotations.join(copies, on="image_id").with_columns(image_id="new").drop("new")
        pred = data.predictions.join(copies, on="image_id").with_columns(image_id="new").drop("new")
        slow = evaluate_detections(ann, pred, images=copies.select(image_id="new"), protocol=protocol)
        assert fast == pytest.approx(slow.summary["map" if protocol == "coco" else "map_50"], abs=1e-12)


def test_bootstrap_map_interval_contains_the_report_and_is_reproducible():
    data = make_detection_set(9)
    args = (data.annotations, data.predictions)
    b = bootstrap_map(*args, images=data.images, n_boot=30, seed=1)
    report = evaluate_detections(*args, images=data.images)
    assert b.metric == "map" and b.estimate == pytest.approx(report.summary["map"], abs=1e-12)
    assert b.low < b.estimate < b.high and b.samples.len() == 30
    again = bootstrap_map(*args, images=data.images, n_boot=30, seed=1)
    assert (again.low, again.high) == (b.low, b.high) and again.samples.equals(b.samples)
    assert bootstrap_map(*args, images=data.images, n_boot=30, seed=2).samples.to_list() != b.samples.to_list()
    voc = bootstrap_map(*args, images=data.images, protocol="voc12", n_boot=10)
    assert voc.metric == "map_50"


def test_compare_detections_finds_a_real_improvement_and_no_difference_with_itself():
    data = make_detection_set(12, n_images=60)
    base = data.predictions
    same = compare_detections(data.annotations, base, base, images=data.images, n_boot=30)
    assert same.difference == 0.0 and same.low == 0.0 and same.high == 0.0 and not same.candidate_is_better
    # the candidate drops the baseline's background false positives (no overlap with any box)
    report = evaluate_detections(data.annotations, base, images=data.images)
    errors = detection_errors(data.annotations, base, images=data.images)
    background = errors.false_positives.filter(pl.col("error") == "background")["row"]
    better = base.with_row_index("row").filter(~pl.col("row").is_in(background.implode())).drop("row")
    cmp = compare_detections(data.annotations, base, better, images=data.images, n_boot=30, seed=5)
    assert cmp.baseline == pytest.approx(report.summary["map"], abs=1e-12)
    assert cmp.difference > 0 and cmp.candidate_is_better and cmp.p_improvement > 0.9
    assert cmp.low <= cmp.difference <= cmp.high
    worse = compare_detections(data.annotations, better, base, images=data.images, n_boot=30, seed=5)
    assert worse.difference == pytest.approx(-cmp.difference) and not worse.candidate_is_better


def test_classification_bootstrap_and_paired_comparison():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    good = np.where(rng.random(400) < 0.8, y, rng.integers(0, 4, 400))
    poor = np.where(rng.random(400) < 0.5, y, rng.integers(0, 4, 400))
    b = bootstrap_macro_f1(y, good, num_classes=4, n_boot=100, seed=0)
    assert b.estimate == pytest.approx(f1_score(y, good, average="macro", labels=range(4), zero_division=0))
    assert b.low < b.estimate < b.high
    cmp = compare_classifications(y, poor, good, num_classes=4, n_boot=100, seed=0)
    assert cmp.candidate_is_better and cmp.low > 0 and cmp.metric == "macro_f1"
    assert cmp.difference == pytest.approx(b.estimate - f1_score(y, poor, average="macro", zero_division=0))
    tie = compare_classifications(y, good, good, num_classes=4, n_boot=20)
    assert tie.difference == 0.0 and not tie.candidate_is_better
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_macro_f1(y, good, num_classes=4, confidence=1.5)
