"""classification_report against scikit-learn, hand cases, and the rare-positive lesson."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from cvcore.metrics.classification import classification_report, top_k_accuracy


@pytest.mark.parametrize("seed", range(4))
def test_equals_scikit_learn_on_random_data_with_absent_classes(seed):
    rng = np.random.default_rng(seed)
    K = 7
    y_true = rng.choice([0, 1, 2, 4], 300, p=[0.6, 0.2, 0.15, 0.05])  # 3, 5, 6 never true
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.choice([0, 1, 3, 4], 300))  # 2, 5, 6 never predicted
    rep = classification_report(y_true, y_pred, num_classes=K)
    labels = list(range(K))
    np.testing.assert_array_equal(rep.confusion, confusion_matrix(y_true, y_pred, labels=labels))
    assert rep.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-15)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(rep.per_class["precision"].to_numpy(), p, rtol=0, atol=1e-15)
    np.testing.assert_allclose(rep.per_class["recall"].to_numpy(), r, rtol=0, atol=1e-15)
    np.testing.assert_allclose(rep.per_class["f1"].to_numpy(), f, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(rep.per_class["support"].to_numpy(), s)
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        got = getattr(rep, average)
        assert (got.precision, got.recall, got.f1) == pytest.approx((p, r, f), abs=1e-15), average


def test_zero_division_cases_are_listed_not_warned():
    rep = classification_report([0, 0, 1], [0, 0, 0], num_classes=3)
    undefined = set(rep.undefined.iter_rows())
    assert undefined == {(1, "precision"), (2, "precision"), (2, "recall"), (2, "f1")}
    row = rep.per_class.row(1, named=True)
    assert (row["precision"], row["recall"], row["f1"], row["support"], row["predicted"]) == (0.0, 0.0, 0.0, 1, 0)
    assert not np.isnan(rep.per_class.select(pl.exclude("category_id")).to_numpy()).any()


def test_hand_computed_binary_case():
    """TP=2, FN=1, FP=1, TN=4 for class 1."""
    y_true = [1, 1, 1, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 0, 0, 0, 0]
    rep = classification_report(y_true, y_pred, num_classes=2)
    assert rep.confusion.tolist() == [[4, 1], [1, 2]]
    assert rep.accuracy == pytest.approx(6 / 8)  # (TP + TN) / all
    positive = rep.per_class.row(1, named=True)
    assert positive["precision"] == pytest.approx(2 / 3)  # TP / (TP + FP)
    assert positive["recall"] == pytest.approx(2 / 3)  # TP / (TP + FN)
    assert positive["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        rep.confusion[0, 0] = 9  # the report is frozen, its matrix too


def test_rare_positive_accuracy_misleads():
    """1 % defects and a model that never flags one: 99 % accuracy, and recall/F1 of the defect class 0."""
    y_true = np.r_[np.ones(10, dtype=int), np.zeros(990, dtype=int)]
    never = np.zeros(1000, dtype=int)
    rep = classification_report(y_true, never, num_classes=2)
    assert rep.accuracy == pytest.approx(0.99)
    defect = rep.per_class.row(1, named=True)
    assert defect["recall"] == 0.0 and defect["f1"] == 0.0 and defect["precision"] == 0.0
    assert (1, "precision") in set(rep.undefined.iter_rows())
    assert rep.macro.f1 < 0.5  # the macro average tells the truth accuracy hides
    # a model that finds 8 of the 10 defects with 20 false alarms has *lower* accuracy
    finder = never.copy()
    finder[:8] = 1
    finder[10:30] = 1
    better = classification_report(y_true, finder, num_classes=2)
    assert better.accuracy < rep.accuracy
    assert better.per_class.row(1, named=True)["recall"] == pytest.approx(0.8)
    assert better.macro.f1 > rep.macro.f1


def test_inputs_may_be_series_and_errors_name_the_problem():
    rep = classification_report(pl.Series([0, 1, 2]), pl.Series([0, 1, 1]), num_classes=3)
    assert rep.num_samples == 3
    with pytest.raises(ValueError, match=r"y_pred: 1 label\(s\) outside 0..2; first at position 1: 5"):
        classification_report([0, 1], [0, 5], num_classes=3)
    with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 1"):
        classification_report([0, 1], [0], num_classes=3)
    with pytest.raises(ValueError, match="integer class indices"):
        classification_report([0.5, 1.0], [0, 1], num_classes=3)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_accuracy_equals_scikit_learn(k):
    rng = np.random.default_rng(k)
    scores = rng.random((200, 6))
    scores[:20, :3] = 0.5  # ties
    y = rng.integers(0, 6, 200)
    assert top_k_accuracy(y, scores, k=k) == pytest.approx(top_k_accuracy_score(y, scores, k=k, labels=range(6)))


def test_top_k_hand_case():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert top_k_accuracy([2, 1], scores, k=1) == 0.0
    assert top_k_accuracy([2, 1], scores, k=2) == 1.0
