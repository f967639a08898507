"""Classification metrics from the confusion matrix (REQUIREMENTS.md item 9), as scikit-learn computes them.

accuracy = (TP + TN) / all, precision = TP / (TP + FP), recall = TP / (TP + FN),
F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall, in scikit-learn's form).
Every class ``0..K-1`` is reported, like scikit-learn with ``labels=range(K)`` and
``zero_division=0``: a ratio whose denominator is zero is 0, and instead of a warning the case is
listed in ``ClassificationReport.undefined``. On imbalanced data accuracy alone misleads (a
classifier that never predicts a rare class can score 99 %): read ``per_class``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

ArrayLike = np.ndarray | pl.Series | list


@dataclass(frozen=True)
class Averages:
    """Precision, recall and F1 averaged over classes."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ClassificationReport:
    """What :func:`classification_report` measures.

    - ``confusion``: int64 [K, K], rows = true class, columns = predicted class (read-only).
    - ``per_class``: category_id, precision, recall, f1, support (true count), predicted (count).
    - ``macro`` (unweighted mean over the K classes), ``micro`` (from pooled counts; equals
      accuracy for single-label data), ``weighted`` (mean weighted by support).
    - ``undefined``: category_id, metric: the zero-division cases that were set to 0
      (precision of a class never predicted, recall of a class absent from the truth, F1 of a
      class absent from both).
    """

    confusion: np.ndarray
    accuracy: float
    per_class: pl.DataFrame
    macro: Averages
    micro: Averages
    weighted: Averages
    undefined: pl.DataFrame
    num_samples: int


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, *, num_classes: int) -> ClassificationReport:
    """Confusion matrix, accuracy, per-class and averaged precision/recall/F1.

    ``y_true``, ``y_pred``: int [N] class indices in ``0..num_classes-1`` (arrays, lists or
    polars Series). Raises ValueError naming the input and the first bad position.
    """
    t = check_labels(y_true, "y_true", num_classes)
    p = check_labels(y_pred, "y_pred", num_classes)
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("classification_report needs at least one sample")
    confusion = confusion_matrix(t, p, num_classes=num_classes)
    return report_from_confusion(confusion)


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, *, num_classes: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """int64 [K, K] counts (rows = truth); ``weights`` int [N] counts each sample that many times."""
    flat = np.bincount(y_true * num_classes + y_pred, weights=weights, minlength=num_classes * num_classes)
    return flat.astype(np.int64).reshape(num_classes, num_classes)


def report_from_confusion(confusion: np.ndarray) -> ClassificationReport:
    """The report of a [K, K] confusion matrix (rows = truth)."""
    confusion = np.array(confusion, dtype=np.int64)
    confusion.flags.writeable = False
    K = confusion.shape[0]
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    f1 = _divide(2.0 * tp, support + predicted)  # scikit-learn: (1 + β²) tp / (β² support + predicted)
    total = int(support.sum())
    ids = np.arange(K, dtype=np.int32)
    undefined = pl.DataFrame(
        {
            "category_id": np.concatenate([ids[predicted == 0], ids[support == 0], ids[(support + predicted) == 0]]),
            "metric": ["precision"] * int((predicted == 0).sum())
            + ["recall"] * int((support == 0).sum())
            + ["f1"] * int(((support + predicted) == 0).sum()),
        },
        schema={"category_id": pl.Int32, "metric": pl.String},
    ).sort("category_id", maintain_order=True)
    return ClassificationReport(
        confusion=confusion,
        accuracy=float(tp.sum() / total) if total else 0.0,
        per_class=pl.DataFrame(
            {
                "category_id": ids,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": support,
                "predicted": predicted,
            }
        ),
        macro=Averages(float(precision.mean()), float(recall.mean()), float(f1.mean())),
        micro=_micro(tp.sum(), predicted.sum(), support.sum()),
        weighted=_weighted(precision, recall, f1, support),
        undefined=undefined,
        num_samples=total,
    )


def macro_f1(confusion: np.ndarray) -> float:
    """Macro-averaged F1 of a [K, K] (or [B, K, K] batch of) confusion matrices."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    denom = confusion.sum(axis=-1) + confusion.sum(axis=-2)
    return _divide(2.0 * tp, denom).mean(axis=-1)


def top_k_accuracy(y_true: ArrayLike, scores: np.ndarray, *, k: int) -> float:
    """Share of samples whose true class is among the ``k`` highest ``scores[N, K]``.

    Ties are broken like scikit-learn's ``top_k_accuracy_score`` (a stable sort, so among equal
    scores the higher class index ranks first).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected shape [N, K], got {scores.shape}")
    t = check_labels(y_true, "y_true", scores.shape[1])
    if t.size != scores.shape[0]:
        raise ValueError(f"y_true has {t.size} labels but scores has {scores.shape[0]} rows")
    if not 1 <= k:
        raise ValueError(f"k must be >= 1, got {k}")
    top = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :k]
    return float((top == t[:, None]).any(axis=1).mean())


def check_labels(values: ArrayLike, name: str, num_classes: int) -> np.ndarray:
    """``values`` as int64 [N] class indices in ``0..num_classes-1``; ValueError naming ``name`` otherwise."""
    arr = values.to_numpy() if isinstance(values, pl.Series) else np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        raise ValueError(
            f"{name}: {bad.size} label(s) outside 0..{num_classes - 1}; first at position {bad[0]}: {arr[bad[0]]}"
        )
    return arr


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    den = np.asarray(den, dtype=np.float64)
    return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def _micro(tp: float, predicted: int, support: int) -> Averages:
    p = float(_divide(np.array([tp]), np.array([predicted]))[0])
    r = float(_divide(np.array([tp]), np.array([support]))[0])
    f = float(_divide(np.array([2.0 * tp]), np.array([support + predicted]))[0])
    return Averages(p, r, f)


def _weighted(precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, support: np.ndarray) -> Averages:
    if support.sum() == 0:
        return Averages(0.0, 0.0, 0.0)
    return Averages(*(float(np.average(v, weights=support)) for v in (precision, recall, f1)))
