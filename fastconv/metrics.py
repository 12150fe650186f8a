"""Classification metrics: accuracy, precision, recall, F1, the confusion matrix, and McNemar's
exact test for comparing two classifiers on the same examples.

Labels are integer class indices ``0 .. num_classes-1`` (int64 arrays of shape (N,)).
For two classes, "positive" is class 1 (``cat`` in catvnoncat, whose classes are
``["non-cat", "cat"]``); for more classes precision/recall/F1 are macro averages over the
classes that occur in the labels or the predictions.

Conventions (the same as scikit-learn's ``zero_division=0``): a ratio whose denominator
is zero (no predicted positives, no actual positives) is reported as 0.0, never NaN.

>>> import numpy as np
>>> confusion_matrix(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]))
array([[1, 1],
       [1, 1]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _as_labels(name: str, a: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.bool_) and not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: class indices must be >= 0, got {arr.min()}")
    return arr


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels("y_true", y_true)
    p = _as_labels("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return t, p


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts ``cm[i, j]`` = number of samples of true class ``i`` predicted as class ``j``.

    y_true, y_pred: int (N,). Returns int64 (num_classes, num_classes); ``num_classes``
    defaults to ``max(label) + 1`` (at least 2).
    """
    t, p = _pair(y_true, y_pred)
    seen = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if num_classes is None:
        num_classes = max(2, seen)
    elif seen > num_classes:
        raise ValueError(f"label {seen - 1} out of range for num_classes={num_classes}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose predicted class equals the true class (0.0 for N == 0)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else 0.0


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, F1), each float64 (C,), from a confusion matrix (C, C)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1


@dataclass(frozen=True)
class Report:
    """All metrics of one evaluation. ``confusion`` is int64 (C, C), rows = true class."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: np.ndarray
    classes: tuple[str, ...]
    average: str  # "binary" (positive class = 1) or "macro"

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "average": self.average,
            "classes": list(self.classes),
            "confusion_matrix": self.confusion.tolist(),
        }

    def format(self) -> str:
        """Human-readable block: ``accuracy: 0.920`` etc. and the labelled confusion matrix."""
        what = f"(positive class: {self.classes[1]})" if self.average == "binary" else "(macro average)"
        # 0/0 is reported as 0 (scikit-learn's zero_division default) and said so, not left to guess
        p_note = r_note = ""
        if self.average == "binary" and self.confusion[:, 1].sum() == 0:
            p_note = f" - undefined, no image was predicted {self.classes[1]} (0/0 shown as 0)"
        if self.average == "binary" and self.confusion[1].sum() == 0:
            r_note = f" - undefined, no {self.classes[1]} image in the data (0/0 shown as 0)"
        lines = [
            f"accuracy: {self.accuracy:.3f}",
            f"precision: {self.precision:.3f} {what}{p_note}",
            f"recall: {self.recall:.3f}{r_note}",
            f"f1: {self.f1:.3f}",
            f"samples: {int(self.confusion.sum())}",
            "",
            format_confusion(self.confusion, self.classes),
        ]
        return "\n".join(lines)


def format_confusion(cm: np.ndarray, classes: Sequence[str]) -> str:
    """The confusion matrix as a table: one row per true class, one column per predicted class."""
    cm = np.asarray(cm)
    names = [str(c) for c in classes]
    rowhead = max(len("true \\ predicted"), *(len(n) for n in names))
    width = max(6, *(len(n) for n in names), len(str(int(cm.max(initial=0)))))
    out = ["true \\ predicted".ljust(rowhead) + "".join(f"  {n:>{width}}" for n in names)]
    for name, row in zip(names, cm):
        out.append(name.ljust(rowhead) + "".join(f"  {int(v):>{width}}" for v in row))
    return "\n".join(out)


def _macro(scores: tuple[np.ndarray, ...], cm: np.ndarray) -> tuple[float, ...]:
    """Means over the classes that occur in the labels or the predictions (scikit-learn's label
    set): a class index that appears in neither has no score to average, wherever it sits."""
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return tuple(0.0 for _ in scores)
    return tuple(float(s[present].mean()) for s in scores)


def classification_report(y_true, y_pred, classes: Sequence[str] | None = None) -> Report:
    """Accuracy, precision, recall, F1 and confusion matrix of predictions.

    y_true, y_pred: int (N,) class indices. ``classes`` names the classes (index order);
    with two classes precision/recall/F1 are those of class 1, otherwise macro averages.
    """
    num = len(classes) if classes is not None else None
    cm = confusion_matrix(y_true, y_pred, num)
    if classes is None:
        classes = [str(i) for i in range(cm.shape[0])]
    precision, recall, f1 = per_class_scores(cm)
    if cm.shape[0] == 2:
        average, p, r, f = "binary", precision[1], recall[1], f1[1]
    else:
        average = "macro"
        p, r, f = _macro((precision, recall, f1), cm)
    total = cm.sum()
    acc = float(np.trace(cm) / total) if total else 0.0
    return Report(acc, float(p), float(r), float(f), cm, tuple(str(c) for c in classes), average)


def precision_recall_f1(y_true, y_pred, average: str = "binary") -> tuple[float, float, float]:
    """(precision, recall, F1): of class 1 when ``average="binary"``, else the macro average."""
    cm = confusion_matrix(y_true, y_pred)
    precision, recall, f1 = per_class_scores(cm)
    if average == "binary":
        if cm.shape[0] != 2:
            raise ValueError(f"average='binary' needs two classes, the labels have {cm.shape[0]}")
        return float(precision[1]), float(recall[1]), float(f1[1])
    if average == "macro":
        return _macro((precision, recall, f1), cm)  # type: ignore[return-value]
    raise ValueError(f"average: expected 'binary' or 'macro', got {average!r}")


def mcnemar(correct_a, correct_b) -> tuple[int, int, float]:
    """Paired comparison of two classifiers on the same examples: ``(a_only, b_only, p)``.

    ``correct_a``, ``correct_b``: bool arrays (N,), whether each classifier got example i right.
    ``a_only`` / ``b_only`` count the examples only A / only B got right (the discordant pairs;
    examples both got right or both got wrong say nothing about which is better). ``p`` is the
    exact two-sided McNemar p-value: the probability, if A and B were equally good, of a split
    of the ``a_only + b_only`` discordant pairs at least this uneven (binomial with p = 1/2;
    1.0 when there are none). Small samples need the exact test, not the chi-square form.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correct_a and correct_b: expected two 1-D arrays of one length, got {a.shape} and {b.shape}")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(b & ~a))
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return a_only, b_only, 1.0
    # P(X <= k) for X ~ Binomial(n, 1/2), in exact integers (Python's true division of two big
    # ints rounds once, so even n in the thousands neither overflows nor loses precision).
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return a_only, b_only, min(1.0, 2.0 * tail)
