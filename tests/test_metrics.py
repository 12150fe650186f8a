"""Metrics against confusion matrices and scores computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import metrics

# Binary case worked out by hand: TP = 3 (0, 2, 7), FN = 1 (1), FP = 1 (4), TN = 3 (3, 5, 6).
BIN_TRUE = [1, 1, 1, 0, 0, 0, 0, 1]
BIN_PRED = [1, 0, 1, 0, 1, 0, 0, 1]

# Three classes: true 0 -> {0, 1}; true 1 -> {1, 1}; true 2 -> {0, 2}.
MC_TRUE = [0, 0, 1, 1, 2, 2]
MC_PRED = [0, 1, 1, 1, 0, 2]


def test_binary_confusion_matrix_by_hand():
    cm = metrics.confusion_matrix(BIN_TRUE, BIN_PRED)
    np.testing.assert_array_equal(cm, [[3, 1], [1, 3]])
    assert cm.dtype == np.int64


def test_binary_scores_by_hand():
    assert metrics.accuracy(BIN_TRUE, BIN_PRED) == pytest.approx(6 / 8)
    p, r, f = metrics.precision_recall_f1(BIN_TRUE, BIN_PRED)
    assert (p, r, f) == pytest.approx((3 / 4, 3 / 4, 3 / 4))


def test_binary_asymmetric_scores():
    # TP = 2, FP = 2, FN = 1, TN = 1: precision 1/2, recall 2/3, F1 = 2*(1/2)(2/3)/(7/6) = 4/7.
    t = [1, 1, 1, 0, 0, 0]
    y = [1, 1, 0, 1, 1, 0]
    np.testing.assert_array_equal(metrics.confusion_matrix(t, y), [[1, 2], [1, 2]])
    rep = metrics.classification_report(t, y, ["non-cat", "cat"])
    assert rep.average == "binary"
    assert (rep.precision, rep.recall, rep.f1) == pytest.approx((1 / 2, 2 / 3, 4 / 7))
    assert rep.accuracy == pytest.approx(3 / 6)


def test_multiclass_confusion_and_macro_scores_by_hand():
    cm = metrics.confusion_matrix(MC_TRUE, MC_PRED)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # per class precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 1/2, 4/5, 2/3
    p, r, f = metrics.precision_recall_f1(MC_TRUE, MC_PRED, average="macro")
    assert p == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert r == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert f == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    rep = metrics.classification_report(MC_TRUE, MC_PRED, ["a", "b", "c"])
    assert rep.average == "macro"
    assert rep.accuracy == pytest.approx(4 / 6)


def test_zero_division_is_zero_not_nan():
    # The model never predicts the positive class: precision/recall/F1 of class 1 are 0, not NaN.
    p, r, f = metrics.precision_recall_f1([1, 1, 0], [0, 0, 0])
    assert (p, r, f) == (0.0, 0.0, 0.0)


def test_format_says_when_a_score_is_undefined():
    never_cat = metrics.classification_report([1, 1, 0], [0, 0, 0], ["non-cat", "cat"]).format()
    assert "precision: 0.000 (positive class: cat) - undefined, no image was predicted cat" in never_cat
    assert "recall: 0.000\n" in never_cat  # two cats, none found: 0/2 is a real zero
    no_cats = metrics.classification_report([0, 0], [0, 1], ["non-cat", "cat"]).format()
    assert "recall: 0.000 - undefined, no cat image in the data" in no_cats
    assert "undefined" not in metrics.classification_report(BIN_TRUE, BIN_PRED, ["non-cat", "cat"]).format()


def test_macro_average_skips_classes_absent_from_labels_and_predictions():
    """scikit-learn's rule: a class that occurs nowhere has no score, wherever its index is."""
    assert metrics.precision_recall_f1([0, 0, 2], [0, 0, 2], "macro") == (1.0, 1.0, 1.0)
    assert metrics.precision_recall_f1([0, 0, 1], [0, 0, 1], "macro") == (1.0, 1.0, 1.0)
    rep = metrics.classification_report([0, 2, 2], [0, 2, 0], ["a", "b", "c"])  # "b" nowhere
    assert rep.precision == pytest.approx((0.5 + 1.0) / 2) and rep.recall == pytest.approx((1.0 + 0.5) / 2)


def test_num_classes_pads_unseen_classes():
    cm = metrics.confusion_matrix([0, 0], [0, 0], num_classes=3)
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="out of range"):
        metrics.confusion_matrix([0, 3], [0, 0], num_classes=2)


@pytest.mark.parametrize(
    ("t", "p", "match"),
    [
        ([0, 1], [0], "differ in length"),
        ([[0, 1]], [[0, 1]], "1-d"),
        ([0, -1], [0, 0], ">= 0"),
        ([0.5], [0], "integer"),
    ],
)
def test_bad_labels_are_rejected(t, p, match):
    with pytest.raises(ValueError, match=match):
        metrics.confusion_matrix(t, p)


def test_format_labels_rows_and_columns():
    rep = metrics.classification_report(BIN_TRUE, BIN_PRED, ["non-cat", "cat"])
    text = rep.format()
    assert "accuracy: 0.750" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("true \\ predicted"))
    assert header.split()[-2:] == ["non-cat", "cat"]
    row_cat = next(line for line in lines if line.startswith("cat "))
    assert row_cat.split()[1:] == ["1", "3"]
    assert rep.to_dict()["confusion_matrix"] == [[3, 1], [1, 3]]


@pytest.mark.parametrize(("a_only", "b_only", "both", "neither"), [(0, 0, 5, 2), (3, 1, 10, 0), (0, 10, 0, 0),
                                                                    (16, 10, 788, 22), (7, 7, 1, 1), (40, 200, 3, 3)])
def test_mcnemar_matches_an_exact_binomial_test(a_only, b_only, both, neither):
    from scipy import stats  # the oracle (SciPy is installed with scikit-image; the kernels use its BLAS)
    a = np.array([1] * a_only + [0] * b_only + [1] * both + [0] * neither, dtype=bool)
    b = np.array([0] * a_only + [1] * b_only + [1] * both + [0] * neither, dtype=bool)
    perm = np.random.default_rng(0).permutation(len(a))
    got = metrics.mcnemar(a[perm], b[perm])
    assert got[:2] == (a_only, b_only)
    n = a_only + b_only
    expected = stats.binomtest(min(a_only, b_only), n, 0.5).pvalue if n else 1.0
    assert got[2] == pytest.approx(expected, rel=1e-9)
    assert metrics.mcnemar(b, a)[2] == pytest.approx(got[2])


def test_mcnemar_rejects_unpaired_input():
    with pytest.raises(ValueError, match="one length"):
        metrics.mcnemar(np.ones(3, bool), np.ones(4, bool))
