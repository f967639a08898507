"""cvcore.plots: every figure builds from the metric tables, labels what it should, writes nothing."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

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


def _renders(fig: Figure, size_px: tuple[int, int]) -> None:
    """The figure saves as a PNG of its size (inches x 100 dpi) that is not one flat colour."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)  # the Agg canvas renders without a display
    png = Image.open(io.BytesIO(buffer.getvalue()))
    assert png.format == "PNG" and png.size == size_px
    assert len(png.convert("RGB").getcolors(maxcolors=1 << 24)) > 1, "something is drawn"


def _curves(ax) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (x, y) of every labelled line (matplotlib names unlabelled ones ``_child<N>``)."""
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def _bar_heights(ax) -> list[float]:
    return [bar.get_height() for bar in ax.patches if isinstance(bar, Rectangle)]


def test_pr_curves_legend_has_ap_per_class(report):
    fig = plots.pr_curves(report.pr_curve, per_class=report.per_class)
    ap50 = report.per_class.filter(pl.col("n_gt") > 0).sort("category_id")
    legend = [t for t in _texts(fig) if "(AP " in t]
    assert len(legend) == ap50.height
    for row in ap50.iter_rows(named=True):
        assert f"{row['category_id']} (AP {row['ap_50']:.3f})" in legend
    ax = fig.axes[0]
    assert ax.get_title() == "Precision-recall per class, IoU 0.50"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("recall", "precision (interpolated)")
    curves = _curves(ax)
    assert len(curves) == ap50.height  # one line per class with ground truth, legend first by AP
    assert list(curves) == [
        f"{r['category_id']} (AP {r['ap_50']:.3f})" for r in ap50.sort("ap_50", descending=True).iter_rows(named=True)
    ]
    for row in ap50.iter_rows(named=True):  # the line is the class's curve at IoU 0.5, by recall
        pts = report.pr_curve.filter(
            (pl.col("category_id") == row["category_id"]) & (pl.col("iou_threshold") == 0.5)
        ).sort("recall")
        assert curves[f"{row['category_id']} (AP {row['ap_50']:.3f})"] == (
            pts["recall"].to_list(),
            pts["precision"].to_list(),
        )
    _renders(fig, (700, 550))
    with pytest.raises(ValueError, match="no points at IoU 0.33"):
        plots.pr_curves(report.pr_curve, iou_threshold=0.33)


def test_names_come_from_a_name_column_or_class_names(report):
    named = report.pr_curve.with_columns(name=pl.format("cls-{}", pl.col("category_id")))
    assert any(t.startswith("cls-0 (AP") for t in _texts(plots.pr_curves(named)))
    fig = plots.f1_curves(report.f1_curve, class_names={0: "circle", 1: "square", 2: "tri", 3: "star"})
    assert any(t.startswith("circle (F1") for t in _texts(fig))
    ax = fig.axes[0]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "F1 vs score threshold",
        "score threshold",
        "F1 (IoU 0.5)",
    )
    curves = _curves(ax)
    names = {0: "circle", 1: "square", 2: "tri", 3: "star"}
    assert sorted(label.split(" (F1")[0] for label in curves) == sorted(
        names[c] for c in report.f1_curve["category_id"].unique()
    )
    markers = [line for line in ax.get_lines() if line.get_label().startswith("_")]
    assert len(markers) == len(curves)  # the best threshold of each class, one dot each
    for cid in report.f1_curve["category_id"].unique().to_list():
        pts = report.f1_curve.filter(pl.col("category_id") == cid).sort("score")
        best = pts.sort(["f1", "score"], descending=True).row(0, named=True)
        label = f"{names[cid]} (F1 {best['f1']:.2f} @ {best['score']:.2f})"
        assert curves[label] == (pts["score"].to_list(), pts["f1"].to_list())
        assert any(list(m.get_xdata()) == [best["score"]] and list(m.get_ydata()) == [best["f1"]] for m in markers)
    _renders(fig, (700, 550))


def test_confusion_matrix_counts_and_normalised():
    rep = classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], num_classes=3)
    fig = plots.confusion_matrix(rep.confusion, class_names=["a", "b", "c"])
    assert len([ax for ax in fig.axes if ax.get_title().startswith("Confusion")]) == 2
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert cells[:3] == ["1", "1", "0"]  # first true row: counts
    assert cells == ["1", "1", "0", "0", "1", "0", "1", "0", "2"]  # rows = truth, columns = prediction
    normalised = [t.get_text() for ax in fig.axes if "normalised" in ax.get_title() for t in ax.texts]
    assert normalised[:3] == ["0.50", "0.50", "0.00"]
    assert normalised == ["0.50", "0.50", "0.00", "0.00", "1.00", "0.00", "0.33", "0.00", "0.67"]
    counts, norm = (ax for ax in fig.axes if ax.get_title().startswith("Confusion"))
    np.testing.assert_array_equal(counts.images[0].get_array(), [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_allclose(norm.images[0].get_array(), [[0.5, 0.5, 0], [0, 1, 0], [1 / 3, 0, 2 / 3]])
    for ax in (counts, norm):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
        assert (
            [t.get_text() for t in ax.get_xticklabels()]
            == ["a", "b", "c"]
            == [t.get_text() for t in ax.get_yticklabels()]
        )
    _renders(fig, (1210, 605))  # (5 + 0.35 * 3) inches high, two square panels wide
    long = pl.DataFrame({"true_id": [0, 0, 1], "pred_id": [0, 1, 1], "count": [3, 1, 2]})
    from_long = plots.confusion_matrix(long)
    np.testing.assert_array_equal(from_long.axes[0].images[0].get_array(), [[3, 1], [0, 2]])
    assert [t.get_text() for t in from_long.axes[0].get_xticklabels()] == ["0", "1"]  # no names: the ids
    _renders(from_long, (1140, 570))


def test_size_bars_and_error_breakdown(data, report):
    fig = plots.size_ap_bars(report.summary, per_class=report.per_class)
    assert "AP by object size" in _texts(fig)
    overall, by_class = fig.axes
    assert [t.get_text() for t in overall.get_xticklabels()] == ["small", "medium", "large"]
    assert _bar_heights(overall) == [report.summary[f"map_{s}"] for s in ("small", "medium", "large")]
    assert [t.get_text() for t in overall.texts] == [
        f"{report.summary[f'map_{s}']:.3f}" for s in ("small", "medium", "large")
    ]
    scored = report.per_class.filter(pl.col("ap").is_not_null()).sort("ap", descending=True)  # classes 0-3 of 6
    assert [t.get_text() for t in by_class.get_xticklabels()] == [str(c) for c in scored["category_id"]]
    heights = _bar_heights(by_class)  # one group of bars per size, one bar per class in each
    assert heights == [v for s in ("small", "medium", "large") for v in scored[f"ap_{s}"].fill_null(0).to_list()]
    assert [t.get_text() for t in by_class.get_legend().get_texts()] == ["small", "medium", "large"]
    _renders(fig, (1100, 450))
    no_large = plots.size_ap_bars(report.summary | {"map_large": float("nan")})  # no large objects in the data
    labels = [t.get_text() for t in no_large.axes[0].texts]
    assert labels[2] == "no objects" and labels[0] == f"{report.summary['map_small']:.3f}"
    assert len(no_large.axes) == 1 and _bar_heights(no_large.axes[0])[2] == 0.0  # no bar, not a 0.000 score
    voc = evaluate_detections(data.annotations, data.predictions, images=data.images, protocol="voc07")
    with pytest.raises(ValueError, match="protocol='coco' only"):
        plots.size_ap_bars(voc.summary)
    errors = detection_errors(data.annotations, data.predictions, images=data.images)
    fig = plots.error_breakdown(errors.summary)
    dap, count = fig.axes
    assert (dap.get_title(), count.get_title()) == ("AP@0.5 gained if fixed (dAP)", "count")
    kinds = errors.summary["error"].to_list()
    assert kinds == ["classification", "localization", "both", "duplicate", "background", "missed"]
    for ax, column, fmt in ((dap, "dap", "{:.3f}"), (count, "count", "{:d}")):
        assert [t.get_text() for t in ax.get_yticklabels()] == kinds  # first on top (inverted axis)
        assert [bar.get_width() for bar in ax.patches] == errors.summary[column].to_list()
        assert [t.get_text() for t in ax.texts] == [fmt.format(v) for v in errors.summary[column].to_list()]
    _renders(fig, (1000, 400))


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
    assert [line.get_label() for line in fig.axes[0].get_lines()] == [
        "train/loss",
        "val/loss",
        "train/noobj",
    ]  # a loss part
    assert [line.get_label() for line in fig.axes[3].get_lines()] == ["train/grad_norm"]
    assert "train/time_s" not in _texts(fig)
    for ax in fig.axes:  # every line is its column against the epoch
        assert ax.get_xlabel() == "epoch"
        for label, (x, y) in _curves(ax).items():
            assert x == [1, 2, 3] and y == history[label].to_list()
    assert _curves(fig.axes[1]) == {"lr": ([1, 2, 3], [1e-3, 5e-4, 1e-4])}
    assert fig.axes[1].get_yscale() == "log" and fig.axes[0].get_yscale() == "linear"
    _renders(fig, (2000, 400))  # four 5 x 4 inch panels
    ends_at_zero = plots.training_curves(history.with_columns(lr=pl.Series([1e-3, 5e-4, 0.0])))
    assert ends_at_zero.axes[1].get_yscale() == "linear"  # a log axis cannot show 0
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
    truth = data.annotations.filter(pl.col("image_id") == image_id)
    dashed = [p for p in ax.patches if p.get_linestyle() == "--"]
    solid = [p for p in ax.patches if p.get_linestyle() != "--"]
    assert len(dashed) == truth.height and len(solid) == shown.height
    drawn = sorted((p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height()) for p in solid)
    np.testing.assert_allclose(drawn, sorted(shown.select("x1", "y1", "x2", "y2").rows()))
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        f"{c} {s:.2f}" for c, s in shown.select("category_id", "score").rows()
    )
    assert ax.images[0].get_array().shape == (400, 400, 3)
    assert fig.axes[1].get_title() == "image -1: 0 boxes >= 0.5" and not fig.axes[1].patches
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), images[-1].permute(1, 2, 0).numpy())  # CHW -> HWC
    _renders(fig, (640, 320))  # two 3.2-inch cells
    preds = pl.DataFrame({"image_id": [1, 2], "category_id": [0, 1], "score": [0.9, 0.6]})
    fig = plots.classification_samples(
        {1: np.ones((8, 8)), 2: torch.rand(3, 8, 8)}, preds, labels={1: 0, 2: 0}, class_names=["cat", "dog"]
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["cat 0.90\ntrue: cat", "dog 0.60\ntrue: cat"]
    assert [ax.title.get_color() for ax in fig.axes] == ["green", "red"]
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), np.ones((8, 8)))
    _renders(fig, (440, 220))  # two 2.2-inch cells


def test_nothing_to_draw_gives_a_figure_that_says_so(report):
    empty = plots.pr_curves(report.pr_curve.clear())
    assert "no class has ground truth" in empty.axes[0].texts[0].get_text()
    assert plots.f1_curves(report.f1_curve.clear()).axes[0].texts
    assert plots.detection_samples({}, report.f1_curve.clear()).axes[0].texts
    messages = {
        empty: ("Precision-recall per class", "no class has ground truth to score against"),
        plots.f1_curves(report.f1_curve.clear()): (
            "F1 vs score threshold",
            "no class has both ground truth and detections",
        ),
        plots.detection_samples({}, report.f1_curve.clear()): ("Predictions", "no images to draw"),
        plots.classification_samples({}, report.f1_curve.clear()): ("Predictions", "no images to draw"),
    }
    for fig, (title, text) in messages.items():
        assert len(fig.axes) == 1 and not fig.axes[0].lines and not fig.axes[0].patches
        assert (fig.axes[0].get_title(), [t.get_text() for t in fig.axes[0].texts]) == (title, [text])
    _renders(empty, (600, 250))


def test_plots_write_no_files(tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    plots.pr_curves(report.pr_curve)
    plots.f1_curves(report.f1_curve)
    assert list(tmp_path.iterdir()) == []
