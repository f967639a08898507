"""Figures for reports: PR curves, F1 vs threshold, confusion matrix, AP by object size, training
curves, error breakdown, predictions drawn on images, and a bake-off's accuracy and speed.

Every function takes the *tables* the metrics produce (polars frames, so the tasks layer can
draw from Parquet without passing reports around) and returns a matplotlib ``Figure``; nothing
is shown or written (the caller saves or logs it). Figures are built without pyplot on an Agg
canvas, so no display is needed and the process-wide backend (a notebook's, say) is untouched. A ``name`` column in a frame (added by the tasks layer) labels classes; otherwise
``class_names`` does, else the category id.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import polars as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from cvcore.metrics.tradeoff import best_tradeoff

ClassNames = Mapping[int, str] | Sequence[str] | None

__all__ = [
    "bakeoff",
    "classification_samples",
    "confusion_matrix",
    "detection_samples",
    "error_breakdown",
    "f1_curves",
    "pr_curves",
    "size_ap_bars",
    "training_curves",
]


def pr_curves(
    pr_curve: pl.DataFrame,
    *,
    per_class: pl.DataFrame | None = None,
    iou_threshold: float = 0.5,
    class_names: ClassNames = None,
    max_classes: int = 20,
) -> Figure:
    """Interpolated precision vs recall per class at ``iou_threshold``, AP in the legend.

    ``pr_curve``: DetectionReport.pr_curve. The legend's AP is ``per_class.ap`` for VOC reports
    (no ``ap_50`` column), else the mean precision over the curve's 101 recall points, which is
    COCO's AP at that IoU. With more than ``max_classes`` classes, the best and worst are drawn.
    """
    if pr_curve.is_empty():
        return _message("Precision-recall per class", "no class has ground truth to score against")
    curve = pr_curve.filter((pl.col("iou_threshold") - iou_threshold).abs() < 1e-9)
    if curve.is_empty():
        raise ValueError(
            f"pr_curve has no points at IoU {iou_threshold}; it has {pr_curve['iou_threshold'].unique().to_list()}"
        )
    ap = curve.group_by("category_id").agg(pl.col("precision").mean().alias("ap"))
    if per_class is not None and "ap_50" not in per_class.columns and "ap" in per_class.columns:
        ap = per_class.select("category_id", "ap").filter(pl.col("ap").is_not_null())
    ap = _pick(ap.sort("ap", descending=True), "ap", max_classes)
    names = _names(pr_curve, class_names)
    fig = _figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for cid, value in ap.iter_rows():
        pts = curve.filter(pl.col("category_id") == cid).sort("recall")
        ax.plot(pts["recall"], pts["precision"], drawstyle="steps-post", label=f"{names(cid)} (AP {value:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision (interpolated)",
           title=f"Precision-recall per class, IoU {iou_threshold:.2f}")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return fig


def f1_curves(f1_curve: pl.DataFrame, *, class_names: ClassNames = None, max_classes: int = 20) -> Figure:
    """F1 vs score threshold per class (DetectionReport.f1_curve), the best threshold marked."""
    if f1_curve.is_empty():
        return _message("F1 vs score threshold", "no class has both ground truth and detections")
    best = (
        f1_curve.sort(["category_id", "f1", "score"], descending=[False, True, True])
        .group_by("category_id", maintain_order=True)
        .first()
        .sort("f1", descending=True)
    )
    best = _pick(best, "f1", max_classes)
    names = _names(f1_curve, class_names)
    fig = _figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for row in best.iter_rows(named=True):
        pts = f1_curve.filter(pl.col("category_id") == row["category_id"]).sort("score")
        (line,) = ax.plot(
            pts["score"], pts["f1"], label=f"{names(row['category_id'])} (F1 {row['f1']:.2f} @ {row['score']:.2f})"
        )
        ax.plot([row["score"]], [row["f1"]], "o", color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1 (IoU 0.5)", title="F1 vs score threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def confusion_matrix(confusion: np.ndarray | pl.DataFrame, *, class_names: ClassNames = None) -> Figure:
    """Confusion matrix heatmaps: counts, and normalised by row (each true class sums to 1).

    ``confusion``: int [K, K] (rows = truth), or a long frame true_id, pred_id, count.
    """
    matrix = _matrix(confusion)
    K = matrix.shape[0]
    names = _names(None, class_names)
    labels = [names(k) for k in range(K)]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = min(5 + 0.35 * K, 14)
    fig = _figure(figsize=(2 * side, side), layout="constrained")
    for i, (values, title, fmt) in enumerate(
        ((matrix, "counts", "d"), (normalised, "normalised by true class", ".2f"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ticks = np.arange(K)
        ax.set_xticks(ticks, labels, rotation=90 if K > 6 else 0, fontsize="small")
        ax.set_yticks(ticks, labels, fontsize="small")
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({title})")
        if K <= 20:  # numbers stay readable
            top = values.max() if values.size else 0
            for r in range(K):
                for c in range(K):
                    ax.text(c, r, format(values[r, c], fmt), ha="center", va="center", fontsize="x-small",
                            color="white" if top and values[r, c] > top / 2 else "black")  # fmt: skip
    return fig


def size_ap_bars(
    summary: Mapping[str, float],
    *,
    per_class: pl.DataFrame | None = None,
    class_names: ClassNames = None,
    max_classes: int = 20,
) -> Figure:
    """AP by object size (COCO small < 32², medium, large > 96² px of area): overall, and per class.

    ``summary``: DetectionReport.summary (map_small, map_medium, map_large); ``per_class``
    adds grouped bars from its ap_small / ap_medium / ap_large columns.
    """
    sizes = ("small", "medium", "large")
    missing = [s for s in sizes if f"map_{s}" not in summary]
    if missing:
        raise ValueError(f"summary has no per-size AP ({missing}); per-size AP exists for protocol='coco' only")
    with_classes = per_class is not None and all(f"ap_{s}" in per_class.columns for s in sizes)
    fig = _figure(figsize=(11 if with_classes else 5, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 2 if with_classes else 1, 1)
    raw = [float(summary[f"map_{s}"]) for s in sizes]
    # No ground truth of a size gives NaN (pycocotools' -1): no bar and say so, never a 0.000 bar.
    present = [not (math.isnan(v) or v < 0) for v in raw]
    bars = ax.bar(sizes, [v if ok else 0.0 for v, ok in zip(raw, present)], color=["#4c72b0", "#55a868", "#c44e52"])
    ax.bar_label(bars, labels=[f"{v:.3f}" if ok else "no objects" for v, ok in zip(raw, present)])
    ax.set(ylim=(0, 1), ylabel="AP @[.50:.95]", title="AP by object size")
    if with_classes:
        ax2 = fig.add_subplot(1, 2, 2)
        table = _pick(per_class.filter(pl.col("ap").is_not_null()).sort("ap", descending=True), "ap", max_classes)
        names = _names(per_class, class_names)
        x = np.arange(table.height)
        for i, s in enumerate(sizes):
            ax2.bar(x + (i - 1) * 0.27, table[f"ap_{s}"].fill_null(0).to_numpy(), width=0.27, label=s)
        ax2.set_xticks(x, [names(c) for c in table["category_id"]], rotation=60, ha="right", fontsize="small")
        ax2.set(ylim=(0, 1), title="per class (no bar: no object of that size)")
        ax2.legend(fontsize="small")
    return fig


def error_breakdown(summary: pl.DataFrame) -> Figure:
    """ErrorBreakdown.summary as two bar charts: AP@0.5 gained by fixing each error type, and counts."""
    fig = _figure(figsize=(10, 4), layout="constrained")
    for i, (column, title) in enumerate((("dap", "AP@0.5 gained if fixed (dAP)"), ("count", "count"))):
        ax = fig.add_subplot(1, 2, i + 1)
        bars = ax.barh(summary["error"].to_list(), summary[column].to_numpy(), color="#4c72b0")
        ax.bar_label(bars, fmt="%.3f" if column == "dap" else "%d", fontsize="small")
        ax.invert_yaxis()
        ax.set(title=title)
    return fig


def training_curves(history: pl.DataFrame) -> Figure:
    """Per-epoch metrics (a frame with ``epoch`` and numeric columns): losses, learning rate, the rest.

    Columns whose name contains ``loss`` (and the ``train/*`` loss parts) share the first panel, ``lr`` gets its own (log scale
    when every value is positive), ``val/*`` metrics the next, other numbers (e.g.
    ``train/grad_norm``) the last; timing/throughput columns are left out.
    """
    if "epoch" not in history.columns or history.is_empty():
        raise ValueError(f"history needs an 'epoch' column and at least one row; it has {history.columns}")
    numeric = [c for c, t in history.schema.items() if c != "epoch" and t.is_numeric()]
    skip = ("time", "per_s", "images")
    # Loss terms: any "...loss..." column, and the training loss's parts (YOLOv1's train/coord,
    # train/noobj, ...); the gradient norm is not one.
    losses = [
        c
        for c in numeric
        if ("loss" in c or c.startswith("train/")) and "grad_norm" not in c and not any(s in c for s in skip)
    ]
    lr = [c for c in numeric if c == "lr" or c.endswith("/lr")]
    rest = [c for c in numeric if c not in losses and c not in lr and not any(s in c for s in skip)]
    # Validation scores live in [0, 1]; anything else (gradient norm, counts) gets its own panel
    # so its scale does not flatten the accuracy/mAP curves.
    scores = [c for c in rest if c.startswith("val/")]
    other = [c for c in rest if c not in scores]
    titled = ((losses, "loss"), (lr, "learning rate"), (scores, "validation"), (other, "other"))
    panels = [(cols, title) for cols, title in titled if cols]
    if not panels:
        raise ValueError(f"history has no numeric metric columns besides 'epoch': {history.columns}")
    fig = _figure(figsize=(5 * len(panels), 4), layout="constrained")
    epoch = history["epoch"].to_numpy()
    for i, (cols, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for c in cols:
            ax.plot(epoch, history[c].to_numpy(), marker="o", markersize=3, label=c)
        if title == "learning rate" and all((history[c].drop_nans() > 0).all() for c in cols):
            # A cosine schedule ends at 0, which a log axis cannot show: stay linear then.
            ax.set_yscale("log")
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def bakeoff(table: pl.DataFrame, *, title: str = "") -> Figure:
    """Two panels of a bake-off table (one row per ``model``): accuracy by model (``map_50``,
    ``map``, ``map_small``, ``map_medium``, ``recall_crowded``, ``recall_isolated``; NaN drawn as
    no bar), and mAP@0.5 against inference cost (``infer_cpu_ms_per_image``, CPU milliseconds per
    image, log scale), the best trade-off (:func:`cvcore.metrics.tradeoff.best_tradeoff`) circled.
    12 x 4.5 inches.
    """
    fig = _figure(figsize=(12, 4.5), layout="constrained")
    bars, speed = fig.subplots(1, 2, width_ratios=(3, 2))
    columns = ["map_50", "map", "map_small", "map_medium", "recall_crowded", "recall_isolated"]
    labels = ["mAP@0.5", "mAP", "AP small", "AP medium", "recall crowded", "recall isolated"]
    names = table.get_column("model").to_list()
    width = 0.8 / len(columns)
    x = np.arange(len(names))
    for i, (col, label) in enumerate(zip(columns, labels)):
        values = np.nan_to_num(table.get_column(col).to_numpy().astype(float), nan=0.0)
        bars.bar(x + (i - (len(columns) - 1) / 2) * width, values, width, label=label)
    bars.set_xticks(x, names)
    bars.set_ylim(0, 1.2)  # headroom: the legend sits above the bars
    bars.set_yticks(np.linspace(0, 1, 6))
    bars.set_ylabel("score")
    bars.legend(fontsize=8, ncols=3, loc="upper center")
    bars.set_title("accuracy (one protocol)")
    cost, m50 = table.get_column("infer_cpu_ms_per_image").to_numpy(), table.get_column("map_50").to_numpy()
    speed.scatter(cost, m50)
    for name, a, b in zip(names, cost, m50):
        speed.annotate(name, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=9)
    pick = best_tradeoff(table)
    if pick is not None and pick in names:
        i = names.index(pick)
        speed.scatter(
            [cost[i]], [m50[i]], s=160, facecolors="none", edgecolors="tab:red", label=f"best trade-off: {pick}"
        )
        speed.legend(fontsize=8, loc="lower right")
    speed.set_xscale("log")
    speed.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: no crowded minor ticks
    speed.set_xlabel("inference CPU ms / image (log; left is faster)")
    speed.set_ylabel("mAP@0.5")
    speed.set_ylim(0, 1)
    speed.set_title("accuracy vs speed")
    if title:
        fig.suptitle(title)
    return fig


def detection_samples(
    images: Mapping[int, np.ndarray | torch.Tensor],
    predictions: pl.DataFrame,
    *,
    ground_truth: pl.DataFrame | None = None,
    class_names: ClassNames = None,
    score_threshold: float = 0.3,
    ncols: int = 4,
) -> Figure:
    """Images with predicted boxes (class name and score) and, optionally, ground truth (dashed).

    ``images``: image_id -> pixels (HWC uint8 / float array, or a CHW tensor); ``predictions``
    in the DETECTIONS schema, ``ground_truth`` in the ANNOTATIONS schema (xyxy pixels of the
    images as given). Predictions under ``score_threshold`` are not drawn.
    """
    if not images:
        return _message("Predictions", "no images to draw")
    names = _names(predictions, class_names)
    fig, axes = _grid(len(images), ncols)
    colours = matplotlib.colormaps["tab10"]
    for ax, (image_id, pixels) in zip(axes, images.items()):
        ax.imshow(_hwc(pixels))
        if ground_truth is not None:
            for r in ground_truth.filter(pl.col("image_id") == image_id).iter_rows(named=True):
                ax.add_patch(Rectangle((r["x1"], r["y1"]), r["x2"] - r["x1"], r["y2"] - r["y1"], fill=False,
                                       linestyle="--", linewidth=1, edgecolor="white"))  # fmt: skip
        shown = predictions.filter((pl.col("image_id") == image_id) & (pl.col("score") >= score_threshold))
        for r in shown.sort("score").iter_rows(named=True):
            colour = colours(int(r["category_id"]) % 10)
            ax.add_patch(
                Rectangle(
                    (r["x1"], r["y1"]),
                    r["x2"] - r["x1"],
                    r["y2"] - r["y1"],
                    fill=False,
                    linewidth=1.5,
                    edgecolor=colour,
                )
            )
            ax.text(r["x1"], r["y1"], f"{names(r['category_id'])} {r['score']:.2f}", fontsize="x-small", color="white",
                    va="bottom", bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})  # fmt: skip
        ax.set_title(f"image {image_id}: {shown.height} boxes >= {score_threshold:g}", fontsize="small")
    return fig


def classification_samples(
    images: Mapping[int, np.ndarray | torch.Tensor],
    predictions: pl.DataFrame,
    *,
    labels: Mapping[int, int] | None = None,
    class_names: ClassNames = None,
    ncols: int = 6,
) -> Figure:
    """Images titled with the predicted class and score (and the true class: green if right, red if not).

    ``predictions``: image_id, category_id, score (the CLASSIFICATIONS schema); ``labels``:
    image_id -> true class.
    """
    if not images:
        return _message("Predictions", "no images to draw")
    names = _names(predictions, class_names)
    by_image = {r["image_id"]: r for r in predictions.iter_rows(named=True)}
    fig, axes = _grid(len(images), ncols, size=2.2)
    for ax, (image_id, pixels) in zip(axes, images.items()):
        ax.imshow(_hwc(pixels))
        row = by_image.get(image_id)
        title, colour = "no prediction", "black"
        if row is not None:
            title = f"{names(row['category_id'])} {row['score']:.2f}"
            if labels is not None and image_id in labels:
                right = labels[image_id] == row["category_id"]
                title += f"\ntrue: {names(labels[image_id])}"
                colour = "green" if right else "red"
        ax.set_title(title, fontsize="small", color=colour)
    return fig


# ----------------------------------------------------------------------------- helpers


def _figure(**kwargs) -> Figure:
    """A Figure on its own Agg canvas (no pyplot state, no GUI)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _names(frame: pl.DataFrame | None, class_names: ClassNames):
    """category id -> label: the frame's ``name`` column, else ``class_names``, else the id."""
    lookup: dict[int, str] = {}
    if frame is not None and "name" in frame.columns and "category_id" in frame.columns:
        lookup = dict(frame.select("category_id", "name").unique().iter_rows())
    elif isinstance(class_names, Mapping):
        lookup = {int(k): str(v) for k, v in class_names.items()}
    elif class_names is not None:
        lookup = dict(enumerate(class_names))
    return lambda cid: str(lookup.get(int(cid), cid))


def _pick(frame: pl.DataFrame, column: str, n: int) -> pl.DataFrame:
    """All rows if at most ``n``, else the best n/2 and worst n/2 by ``column`` (frame sorted desc)."""
    if frame.height <= n:
        return frame
    return pl.concat([frame.head(n - n // 2), frame.tail(n // 2)])


def _matrix(confusion: np.ndarray | pl.DataFrame) -> np.ndarray:
    if isinstance(confusion, pl.DataFrame):
        K = int(max(confusion["true_id"].max(), confusion["pred_id"].max())) + 1
        out = np.zeros((K, K), dtype=np.int64)
        out[confusion["true_id"].to_numpy(), confusion["pred_id"].to_numpy()] = confusion["count"].to_numpy()
        return out
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion: expected a square [K, K] matrix, got shape {matrix.shape}")
    return matrix


def _message(title: str, text: str) -> Figure:
    """A placeholder figure saying why there is nothing to draw (an empty split must not fail a report)."""
    fig = _figure(figsize=(6, 2.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    return fig


def _grid(n: int, ncols: int, size: float = 3.2) -> tuple[Figure, list]:
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    for ax in axes:
        ax.set_axis_off()
    return fig, axes


def _hwc(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """HWC array for imshow from a CHW tensor (uint8 or float in [0, 1]) or an HWC / HW array."""
    if isinstance(pixels, torch.Tensor):
        arr = pixels.detach().cpu()
        arr = (arr.permute(1, 2, 0) if arr.ndim == 3 else arr).numpy()
    else:
        arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype.kind == "f":
        arr = np.clip(arr, 0.0, 1.0)
    return arr
