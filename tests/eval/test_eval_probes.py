"""Probes and metrics equal direct numpy / scikit-learn references on fixed embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    jaccard_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion
from terracube.model.eval.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    mean_average_precision,
    mean_iou,
    multilabel_f1,
)
from terracube.model.eval.probes import (
    KnnParams,
    LinearProbeParams,
    knn_classify,
    knn_multilabel,
    linear_probe,
    split_train_val,
)


def reference_knn(train_x, train_y, test_x, n_classes, k=20, t=0.07):
    """The DINO weighted vote written plainly, one test sample at a time."""
    preds = []
    for q in test_x:
        sims = []
        for j, x in enumerate(train_x):
            sims.append((float(q @ x / (np.linalg.norm(q) * np.linalg.norm(x))), j))
        sims.sort(key=lambda s: -s[0])  # Python's sort is stable: ties keep training order
        votes = [0.0] * n_classes
        for sim, j in sims[:k]:
            votes[int(train_y[j])] += np.exp(sim / t)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def test_knn_equals_plain_weighted_vote_reference() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    train_y = rng.integers(0, 4, 120)
    train_x = centres[train_y] + 1.5 * rng.normal(size=(120, 16))
    test_x = centres[rng.integers(0, 4, 50)] + 1.5 * rng.normal(size=(50, 16))
    got = knn_classify(train_x, train_y, test_x, 4, KnnParams(chunk=7))  # chunking must not matter
    want = reference_knn(train_x, train_y, test_x, 4)
    np.testing.assert_array_equal(got.predictions, want)
    # noisy clusters: the vote is not trivially unanimous, so weighting matters somewhere
    assert 0.3 < accuracy(want, reference_knn(train_x, train_y, test_x, 4, k=1)) < 1.0


def test_knn_temperature_weighting_changes_the_vote() -> None:
    # one very close neighbour of class 1 against three moderately close of class 0
    train_x = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.79, 0.61]])
    train_y = np.array([1, 0, 0, 0])
    test_x = np.array([[1.0, 0.01]])
    sharp = knn_classify(train_x, train_y, test_x, 2, KnnParams(k=4, temperature=0.07))
    flat = knn_classify(train_x, train_y, test_x, 2, KnnParams(k=4, temperature=100.0))
    assert sharp.predictions.tolist() == [1]  # exp(1/0.07) outweighs 3 * exp(0.8/0.07)
    assert flat.predictions.tolist() == [0]  # ~ majority vote
    np.testing.assert_allclose(sharp.scores.sum(1), 1.0)


def test_knn_multilabel_is_weighted_share_over_half() -> None:
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    result = knn_multilabel(train_x, train_y, np.array([[1.0, 0.05]]), KnnParams(k=2))
    sims = (
        np.array([1.0, 0.9 + 0.005])
        / np.linalg.norm([[1.0, 0.05]])
        / np.array([1, np.hypot(0.9, 0.1)])
    )
    w = np.exp(sims / 0.07)
    np.testing.assert_allclose(result.scores[0], [1.0, w[1] / w.sum()])
    assert result.predictions.tolist() == [[True, w[1] / w.sum() > 0.5]]


def test_linear_probe_matches_sklearn_logistic_regression_on_separable_data() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    y = rng.integers(0, 3, 300)
    x = centres[y] + 0.5 * rng.normal(size=(300, 3))  # clusters 5.7 apart: separable
    train_x, train_y, test_x, test_y = x[:200], y[:200], x[200:], y[200:]
    ours = linear_probe(train_x, train_y, test_x, 3, LinearProbeParams(max_epochs=100))
    sk = LogisticRegression(max_iter=1000).fit(train_x, train_y)
    ours_acc = accuracy_score(test_y, ours.predictions)
    sk_acc = accuracy_score(test_y, sk.predict(test_x))
    assert sk_acc == 1.0
    # tolerance: on separable data both solvers must separate; at most 1 of 100 may differ
    assert abs(ours_acc - sk_acc) <= 0.01 + 1e-9
    assert np.mean(ours.predictions == sk.predict(test_x)) >= 0.99
    assert ours.learning_rate in (1e-3, 1e-2, 1e-1)
    np.testing.assert_allclose(ours.scores.sum(1), 1.0, rtol=1e-5)


def test_linear_probe_is_deterministic_and_sweeps_learning_rates() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    x = np.c_[y * 2.0 + rng.normal(size=80), rng.normal(size=80)]
    params = LinearProbeParams(learning_rates=(1e-4, 1e-1), max_epochs=30, patience=5)
    a = linear_probe(x, y, x, 2, params)
    b = linear_probe(x, y, x, 2, params)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.learning_rate == 1e-1  # lr 1e-4 barely moves from zero in 30 epochs


def test_linear_probe_multilabel_matches_per_label_sklearn() -> None:
    rng = np.random.default_rng(5)
    y = rng.random((300, 3)) < 0.5
    x = y * 3.0 + rng.normal(size=(300, 3))  # per-label Bayes error ~6.7 %
    result = linear_probe(x[:200], y[:200], x[200:], 3, multilabel=True)
    assert result.predictions.dtype == bool and result.predictions.shape == (100, 3)
    sk = np.stack(
        [LogisticRegression().fit(x[:200], y[:200, j]).predict(x[200:]) for j in range(3)], 1
    )
    ours_f1 = multilabel_f1(y[200:], result.predictions, "micro")
    sk_f1 = multilabel_f1(y[200:], sk, "micro")
    assert sk_f1 > 0.85
    # tolerance: noisy labels, a different solver and early stopping; within 0.05 micro-F1
    assert abs(ours_f1 - sk_f1) <= 0.05


def test_validation_split_is_seeded_and_disjoint() -> None:
    fit, val = split_train_val(10, 0.2, seed=4)
    assert len(val) == 2 and len(fit) == 8
    assert set(fit) | set(val) == set(range(10)) and not set(fit) & set(val)
    np.testing.assert_array_equal(split_train_val(10, 0.2, seed=4)[1], val)
    with pytest.raises(ValueError, match=">= 2 training samples"):
        split_train_val(1, 0.2, seed=0)


def test_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 6, 400)
    pred = np.where(rng.random(400) < 0.6, truth, rng.integers(0, 6, 400))
    pred[pred == 5] = 4  # a class that is never predicted
    assert accuracy(truth, pred) == accuracy_score(truth, pred)
    assert macro_f1(truth, pred) == pytest.approx(f1_score(truth, pred, average="macro"), abs=1e-12)
    assert mean_iou(truth, pred) == pytest.approx(
        jaccard_score(truth, pred, average="macro"), abs=1e-12
    )
    np.testing.assert_array_equal(
        confusion_matrix(truth, pred, 6), sk_confusion(truth, pred, labels=range(6))
    )


def test_multilabel_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(8)
    truth = rng.random((60, 5)) < 0.4
    truth[:, 4] = False
    truth[0, 4] = True  # a rare label
    scores = truth * 0.3 + rng.random((60, 5)) * 0.7
    scores[:10, 0] = 0.5  # ties in the scores
    pred = scores > 0.5
    for average in ("micro", "macro"):
        want = f1_score(truth, pred, average=average, zero_division=0)
        assert multilabel_f1(truth, pred, average) == pytest.approx(want, abs=1e-12)
    assert mean_average_precision(truth, scores) == pytest.approx(
        average_precision_score(truth, scores, average="macro"), abs=1e-12
    )


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="same shape"):
        accuracy(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="equal dim"):
        knn_classify(np.zeros((3, 2)), np.zeros(3, dtype=int), np.zeros((1, 3)), 2)
    with pytest.raises(ValueError, match="temperature > 0"):
        KnnParams(temperature=0)
