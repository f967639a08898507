"""cvcore.plots: every figure builds from the metric tables, labels what it should, writes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from detection_sets import make_detection_set  # noqa: E402

from cvcore import plots  # noqa: E402
from cvcore.metrics.classification import classification_report  # noqa: E402
from cvcore.metrics.detection import evaluate_detections  # noqa: E402
from cvcore.metrics.errors import detection_errors  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return make_detection_set(0, n_images=20)


@pytest.fixture(scope="module")
def report(data):
    return evaluate_detections(data.annotations, data.predictions, images=data.images)


def _texts(fig: Figure) -> list[str]:
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        out += [t.get_text() for t in legend.get_texts()] if legend else []
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.get_xticklabels()]
    return out


def _renders(fig: Figure) -> None:
    fig.canvas.draw()  # the Agg canvas renders without a display
    assert fig.canvas.buffer_rgba() is not None


def test_pr_curves_legend_has_ap_per_class(report):
    fig = plots.pr_curves(report.pr_curve, per_class=report.per_class)
    ap50 = report.per_class.filter(pl.col("n_gt") > 0).sort("category_id")
    legend = [t for t in _texts(fig) if "(AP " in t]
    assert len(legend) == ap50.height
    for row in ap50.iter_rows(named=True):
        assert f"{row['category_id']} (AP {row['ap_50']:.3f})" in legend
    _renders(fig)
    with pytest.raises(ValueError, match="no points at IoU 0.33"):
        plots.pr_curves(report.pr_curve, iou_threshold=0.33)


def test_names_come_from_a_name_column_or_class_names(report):
    named = report.pr_curve.with_columns(name=pl.format("cls-{}", pl.col("category_id")))
    assert any(t.startswith("cls-0 (AP") for t in _texts(plots.pr_curves(named)))
    fig = plots.f1_curves(report.f1_curve, class_names={0: "circle", 1: "square", 2: "tri", 3: "star"})
    assert any(t.startswith("circle (F1") for t in _texts(fig))
    _renders(fig)


def test_confusion_matrix_counts_and_normalised():
    rep = classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], num_classes=3)
    fig = plots.confusion_matrix(rep.confusion, class_names=["a", "b", "c"])
    assert len([ax for ax in fig.axes if ax.get_title().startswith("Confusion")]) == 2
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert cells[:3] == ["1", "1", "0"]  # first true row: counts
    normalised = [t.get_text() for ax in fig.axes if "normalised" in ax.get_title() for t in ax.texts]
    assert normalised[:3] == ["0.50", "0.50", "0.00"]
    long = pl.DataFrame({"true_id": [0, 0, 1], "pred_id": [0, 1, 1], "count": [3, 1, 2]})
    _renders(plots.confusion_matrix(long))


def test_size_bars_and_error_breakdown(data, report):
    fig = plots.size_ap_bars(report.summary, per_class=report.per_class)
    assert "AP by object size" in _texts(fig)
    _renders(fig)
    no_large = plots.size_ap_bars(report.summary | {"map_large": float("nan")})  # no large objects in the data
    labels = [t.get_text() for t in no_large.axes[0].texts]
    assert labels[2] == "no objects" and labels[0] == f"{report.summary['map_small']:.3f}"
    voc = evaluate_detections(data.annotations, data.predictions, images=data.images, protocol="voc07")
    with pytest.raises(ValueError, match="protocol='coco' only"):
        plots.size_ap_bars(voc.summary)
    errors = detection_errors(data.annotations, data.predictions, images=data.images)
    _renders(plots.error_breakdown(errors.summary))


def test_training_curves_groups_losses_lr_and_metrics():
    history = pl.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train/loss": [2.0, 1.5, 1.2],
            "val/loss": [2.1, 1.7, 1.6],
            "lr": [1e-3, 5e-4, 1e-4],
            "val/map_50": [0.1, 0.3, 0.4],
            "train/grad_norm": [12.0, 8.0, 5.0],
            "train/noobj": [0.5, 0.3, 0.2],
            "train/time_s": [10.0, 9.0, 9.5],
        }
    )
    fig = plots.training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "learning rate", "validation", "other"]
    assert [line.get_label() for line in fig.axes[2].get_lines()] == ["val/map_50"]  # not on the gradient norm's scale
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train/loss", "val/loss", "train/noobj"]  # a loss part
    assert [line.get_label() for line in fig.axes[3].get_lines()] == ["train/grad_norm"]
    assert "train/time_s" not in _texts(fig)
    _renders(fig)
    with pytest.raises(ValueError, match="'epoch'"):
        plots.training_curves(history.drop("epoch"))


def test_sample_images_with_boxes_and_labels(data):
    image_id = int(data.predictions["image_id"][0])
    images = {image_id: np.zeros((400, 400, 3), dtype=np.uint8), -1: torch.rand(3, 400, 400)}
    fig = plots.detection_samples(images, data.predictions, ground_truth=data.annotations, score_threshold=0.5)
    shown = data.predictions.filter((pl.col("image_id") == image_id) & (pl.col("score") >= 0.5))
    ax = fig.axes[0]
    assert len([t for t in ax.texts if t.get_text()]) == shown.height
    assert ax.get_title() == f"image {image_id}: {shown.height} boxes >= 0.5"
    _renders(fig)
    preds = pl.DataFrame({"image_id": [1, 2], "category_id": [0, 1], "score": [0.9, 0.6]})
    fig = plots.classification_samples({1: np.ones((8, 8)), 2: torch.rand(3, 8, 8)}, preds, labels={1: 0, 2: 0}, class_names=["cat", "dog"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["cat 0.90\ntrue: cat", "dog 0.60\ntrue: cat"]
    assert [ax.title.get_color() for ax in fig.axes] == ["green", "red"]


def test_nothing_to_draw_gives_a_figure_that_says_so(report):
    empty = plots.pr_curves(report.pr_curve.clear())
    assert "no class has ground truth" in empty.axes[0].texts[0].get_text()
    assert plots.f1_curves(report.f1_curve.clear()).axes[0].texts
    assert plots.detection_samples({}, report.f1_curve.clear()).axes[0].texts
    _renders(empty)


def test_plots_write_no_files(tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    plots.pr_curves(report.pr_curve)
    plots.f1_curves(report.f1_curve)
    assert list(tmp_path.iterdir()) == []
