"""Bootstrap intervals against a direct computation, and the probes of the geobench protocol."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from terracube.model.eval.metrics import accuracy, macro_f1, mean_iou
from terracube.model.eval.probes import KnnParams, LogisticParams, knn_classify, logistic_probe
from terracube.model.eval.protocols import verdict
from terracube.model.eval.uncertainty import (
    bootstrap_interval,
    paired_difference,
    resample_indices,
)

DIRECT = {"accuracy": accuracy, "macro_f1": macro_f1, "mIoU": mean_iou}


def _labels(n: int, k: int, hit: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < hit, truth, rng.integers(0, k, n))
    return truth, pred


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "mIoU"])
def test_interval_equals_a_loop_over_the_same_resamples(metric: str) -> None:
    truth, pred = _labels(300, 4, 0.6, seed=1)
    got = bootstrap_interval(truth, pred, 4, metric, resamples=200, seed=3)
    index = resample_indices(len(truth), 200, seed=3)
    values = [DIRECT[metric](truth[i], pred[i]) for i in index]
    low, high = np.percentile(values, [2.5, 97.5])
    assert got.value == pytest.approx(DIRECT[metric](truth, pred), abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_paired_difference_equals_a_loop_and_is_narrower_than_unpaired() -> None:
    truth, a = _labels(2000, 3, 0.75, seed=2)
    b = a.copy()
    flip = np.random.default_rng(5).random(len(b)) < 0.05  # b = a with 5 % of rows re-drawn
    b[flip] = np.random.default_rng(6).integers(0, 3, flip.sum())
    got = paired_difference(truth, a, b, 3, "accuracy", resamples=300, seed=0)
    index = resample_indices(len(truth), 300, seed=0)
    diffs = [accuracy(truth[i], a[i]) - accuracy(truth[i], b[i]) for i in index]
    assert got.value == pytest.approx(accuracy(truth, a) - accuracy(truth, b))
    assert got.low == pytest.approx(np.percentile(diffs, 2.5))
    assert got.high == pytest.approx(np.percentile(diffs, 97.5))
    # unpaired, the two accuracies' widths would add in quadrature; pairing removes the
    # noise the two share (the same test rows)
    wa, wb = (
        (i.high - i.low)
        for i in (
            bootstrap_interval(truth, p, 3, "accuracy", 300, seed=s) for p, s in ((a, 0), (b, 1))
        )
    )
    assert got.high - got.low < 0.5 * np.hypot(wa, wb)


def test_accuracy_interval_matches_the_binomial_width() -> None:
    truth, pred = _labels(4000, 2, 0.4, seed=4)
    got = bootstrap_interval(truth, pred, 2, "accuracy", resamples=2000, seed=1)
    p = accuracy(truth, pred)
    half = 1.96 * np.sqrt(p * (1 - p) / len(truth))  # ~0.015: a 0.05 difference is resolved
    assert (got.high - got.low) / 2 == pytest.approx(half, rel=0.1)
    assert got.low < p < got.high


def test_seeds_are_resampled_too() -> None:
    """Two seeds with different accuracy: the interval widens to cover both."""
    truth, good = _labels(1000, 2, 0.9, seed=7)
    _, poor = _labels(1000, 2, 0.5, seed=8)
    poor = np.where(np.random.default_rng(9).random(1000) < 0.5, truth, 1 - truth)
    both = bootstrap_interval(truth, np.stack([good, poor]), 2, "accuracy", 500, seed=0)
    one = bootstrap_interval(truth, good, 2, "accuracy", 500, seed=0)
    assert both.value == pytest.approx((accuracy(truth, good) + accuracy(truth, poor)) / 2)
    assert both.high - both.low > 3 * (one.high - one.low)


def test_verdict_follows_the_interval() -> None:
    assert verdict(0.01, 0.05) == "better"
    assert verdict(-0.05, -0.01) == "worse"
    assert verdict(-0.01, 0.05) == "not resolved"


def test_uniform_knn_is_a_plain_majority_vote() -> None:
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(60, 5)), rng.normal(size=(20, 5))
    train_y = rng.integers(0, 3, 60)
    got = knn_classify(train_x, train_y, test_x, 3, KnnParams(k=5, weighting="uniform"))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = unit(test_x) @ unit(train_x).T
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    votes = np.stack([np.bincount(train_y[n], minlength=3) for n in nearest])
    np.testing.assert_array_equal(got.predictions, votes.argmax(1))


def test_logistic_probe_picks_c_on_validation_and_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    test = rng.normal(size=(50, 6))
    params = LogisticParams(cs=(0.001, 1.0), val_fraction=0.25, seed=0)
    got = logistic_probe(x, y, test, 3, params)
    assert got.c == 1.0  # 0.001 under-fits
    order = np.random.default_rng(0).permutation(200)
    fit = np.sort(order[50:])
    mean, std = x[fit].mean(0), x[fit].std(0)
    model = LogisticRegression(C=1.0, max_iter=1000).fit((x[fit] - mean) / std, y[fit])
    np.testing.assert_array_equal(got.predictions, model.predict((test - mean) / std))
