"""Evaluation metrics in plain numpy, defined to equal scikit-learn's on the same inputs.

Macro averages follow sklearn's default label set: the classes present in the
truth *or* the predictions (a class nobody predicts and nobody has does not
dilute the mean). Tests compare each function to sklearn directly.
"""

from __future__ import annotations

import numpy as np


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} must have the same shape")
    if t.size == 0:
        raise ValueError("no samples to score: y_true is empty")
    return t, p


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t, p = _check_pair(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; row = true class, column = predicted class."""
    t, p = _check_pair(y_true, y_pred)
    if t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes:
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}")
    counts = np.bincount(
        t.astype(np.int64) * n_classes + p.astype(np.int64), minlength=n_classes**2
    )
    return counts.reshape(n_classes, n_classes)


def _present(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.union1d(np.unique(t), np.unique(p)).astype(np.int64)


def _per_class_counts(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    labels = _present(t, p)
    tp = np.array([np.sum((t == c) & (p == c)) for c in labels], dtype=np.float64)
    fp = np.array([np.sum((t != c) & (p == c)) for c in labels], dtype=np.float64)
    fn = np.array([np.sum((t == c) & (p != c)) for c in labels], dtype=np.float64)
    return tp, fp, fn


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0 behaviour)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t, p = _check_pair(y_true, y_pred)
    tp, fp, fn = _per_class_counts(t.ravel(), p.ravel())
    return float(np.mean(_safe_ratio(2 * tp, 2 * tp + fp + fn)))


def mean_iou(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over classes of |truth & pred| / |truth | pred| (sklearn jaccard_score, macro)."""
    t, p = _check_pair(y_true, y_pred)
    tp, fp, fn = _per_class_counts(t.ravel(), p.ravel())
    return float(np.mean(_safe_ratio(tp, tp + fp + fn)))


def _check_multilabel(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _check_pair(y_true, y_pred)
    if t.ndim != 2:
        raise ValueError(f"multi-label targets must be (samples, labels), got shape {t.shape}")
    return t.astype(bool), p.astype(bool)


def multilabel_f1(y_true: np.ndarray, y_pred: np.ndarray, average: str) -> float:
    """F1 of (samples, labels) indicator arrays; average 'micro' or 'macro' (over all labels)."""
    t, p = _check_multilabel(y_true, y_pred)
    tp = (t & p).sum(0).astype(np.float64)
    fp = (~t & p).sum(0).astype(np.float64)
    fn = (t & ~p).sum(0).astype(np.float64)
    if average == "micro":
        return float(
            _safe_ratio(2 * tp.sum(keepdims=True), (2 * tp + fp + fn).sum(keepdims=True))[0]
        )
    if average == "macro":
        return float(np.mean(_safe_ratio(2 * tp, 2 * tp + fp + fn)))
    raise ValueError(f"average={average!r}; use 'micro' or 'macro'")


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one label (sklearn's step-wise definition, ties grouped)."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not t.any():
        raise ValueError("average precision is undefined for a label with no positive sample")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(t_sorted)[last].astype(np.float64)
    predicted = last + 1.0
    precision = tps / predicted
    recall = tps / t.sum()
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over labels with at least one positive (sklearn average='macro' skips none,
    so callers should pass only such labels; we skip the rest and say so in the docs)."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"y_true {t.shape} and scores {s.shape} must both be (samples, labels)")
    labels = [j for j in range(t.shape[1]) if t[:, j].any()]
    if not labels:
        raise ValueError("mAP is undefined: no label has a positive test sample")
    return float(np.mean([average_precision(t[:, j], s[:, j]) for j in labels]))
