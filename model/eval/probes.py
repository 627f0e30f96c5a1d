"""Probes on frozen embeddings: weighted kNN and a linear (logistic) probe.

kNN follows the DINO / InstDisc protocol: cosine similarity to every training
embedding, the k nearest vote with weight exp(sim / T), T = 0.07, and the class
with the largest summed weight wins (ties: the lowest class index). Multi-label
kNN scores each label by its weighted share of the neighbours' votes.

The linear probe is logistic regression trained in torch on standardised
features: zero-initialised weights (the loss is convex, so no random init is
needed and the result is deterministic), Adam, a learning-rate sweep, and early
stopping on a validation split carved from train by a seeded permutation. The
(learning rate, epoch) with the best validation score is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from terracube.model.eval.metrics import accuracy, multilabel_f1

KNN_K = 20
KNN_TEMPERATURE = 0.07


@dataclass(frozen=True)
class KnnParams:
    k: int = KNN_K
    temperature: float = KNN_TEMPERATURE
    chunk: int = 1024
    """Test rows scored at once, to bound the (chunk, n_train) similarity matrix."""
    weighting: Literal["exp", "uniform"] = "exp"
    """"exp": votes weighted exp(sim / T) (DINO, OlmoEarth); "uniform": one vote each."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.temperature <= 0 or self.chunk < 1:
            raise ValueError(f"KnnParams needs k >= 1, temperature > 0, chunk >= 1; got {self}")
        if self.weighting not in ("exp", "uniform"):
            raise ValueError(f"KnnParams.weighting={self.weighting!r}; use 'exp' or 'uniform'")


@dataclass(frozen=True)
class LinearProbeParams:
    learning_rates: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    max_epochs: int = 200
    patience: int | None = 20
    """Epochs without a validation improvement before a run stops (None: run them all and
    keep the best validation epoch, OlmoEarth's protocol)."""
    val_fraction: float = 0.2
    batch_size: int = 1024
    weight_decay: float = 1e-4
    optimizer: Literal["adam", "adamw"] = "adam"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError("learning_rates must be a non-empty tuple of positive values")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction}; it must lie in (0, 1)")
        if self.max_epochs < 1 or (self.patience or 1) < 1 or self.batch_size < 1:
            raise ValueError("max_epochs, patience and batch_size must be >= 1")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}; use 'adam' or 'adamw'")


@dataclass(frozen=True)
class ProbeResult:
    predictions: np.ndarray
    """(n_test,) class index, or (n_test, labels) bool for multi-label."""
    scores: np.ndarray
    """(n_test, classes) class probabilities / vote shares."""
    learning_rate: float | None = None
    epochs: int | None = None
    val_score: float | None = None
    c: float | None = None
    """Logistic regression: the chosen inverse regularisation."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _check_features(train_x: np.ndarray, test_x: np.ndarray, n_labels: int) -> None:
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"features must be (samples, dim) with equal dim; got train {train_x.shape}, "
            f"test {test_x.shape}"
        )
    if train_x.shape[0] != n_labels:
        raise ValueError(f"{train_x.shape[0]} training rows but {n_labels} labels")
    if train_x.shape[0] == 0:
        raise ValueError("no training samples: the probe needs at least one")


def knn_votes(
    train_x: np.ndarray, train_targets: np.ndarray, test_x: np.ndarray, params: KnnParams
) -> np.ndarray:
    """(n_test, C) summed exp(sim / T) weights of the k nearest neighbours per column of
    `train_targets` ((n_train, C) indicator: one-hot classes or multi-hot labels)."""
    _check_features(train_x, test_x, train_targets.shape[0])
    train_unit, test_unit = _unit_rows(train_x), _unit_rows(test_x)
    k = min(params.k, train_unit.shape[0])
    targets = np.asarray(train_targets, dtype=np.float64)
    votes = np.zeros((test_unit.shape[0], targets.shape[1]))
    for start in range(0, test_unit.shape[0], params.chunk):
        sim = test_unit[start : start + params.chunk] @ train_unit.T
        # stable sort on -sim: equal similarities keep training order (the reference does too)
        nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        if params.weighting == "uniform":
            weights = np.ones(nearest.shape)
        else:
            weights = np.exp(np.take_along_axis(sim, nearest, axis=1) / params.temperature)
        votes[start : start + params.chunk] = np.einsum("nk,nkc->nc", weights, targets[nearest])
    return votes


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    params: KnnParams | None = None,
) -> ProbeResult:
    params = params or KnnParams()
    onehot = np.eye(n_classes)[np.asarray(train_y, dtype=np.int64)]
    votes = knn_votes(train_x, onehot, test_x, params)
    shares = votes / votes.sum(1, keepdims=True)
    return ProbeResult(predictions=votes.argmax(1), scores=shares)


def knn_multilabel(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, params: KnnParams | None = None
) -> ProbeResult:
    """A label is predicted when it holds more than half of the weighted neighbour vote."""
    params = params or KnnParams()
    votes = knn_votes(train_x, np.asarray(train_y, dtype=bool), test_x, params)
    total = knn_votes(train_x, np.ones((train_x.shape[0], 1)), test_x, params)
    shares = votes / total
    return ProbeResult(predictions=shares > 0.5, scores=shares)


# --------------------------------------------------------------------------- linear probe


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded permutation of 0..n-1 cut into (train, val); val has >= 1 row, train >= 1."""
    if n < 2:
        raise ValueError(
            f"the linear probe needs >= 2 training samples to carve a validation split, got {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mean = train.mean(0, keepdims=True)
    std = train.std(0, keepdims=True)
    std = np.where(std > 1e-12, std, 1.0)
    return [torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in (train, *others)]


def _fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    score_val: Callable[[torch.Tensor], float],
    multilabel: bool,
    n_out: int,
    lr: float,
    params: LinearProbeParams,
) -> tuple[float, int, torch.nn.Linear]:
    """One learning rate: train until validation stops improving; return the best state."""
    torch.manual_seed(params.seed)  # mini-batch order only; weights start at zero
    layer = torch.nn.Linear(x.shape[1], n_out)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    kind = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    optimiser = kind(layer.parameters(), lr=lr, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    best = (-np.inf, 0, {k: v.clone() for k, v in layer.state_dict().items()})
    since_best = 0
    for epoch in range(1, params.max_epochs + 1):
        for idx in torch.randperm(x.shape[0], generator=generator).split(params.batch_size):
            logits = layer(x[idx])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, y[idx].float())
            else:
                loss = F.cross_entropy(logits, y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            score = score_val(layer(val_x))
        if score > best[0]:
            best = (score, epoch, {k: v.clone() for k, v in layer.state_dict().items()})
            since_best = 0
        else:
            since_best += 1
            if params.patience is not None and since_best >= params.patience:
                break
    layer.load_state_dict(best[2])
    return float(best[0]), best[1], layer


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    params: LinearProbeParams | None = None,
    multilabel: bool = False,
) -> ProbeResult:
    """Logistic regression (softmax, or per-label sigmoid when `multilabel`) with an lr sweep.

    Validation score: accuracy (single label) or micro-F1 (multi-label)."""
    params = params or LinearProbeParams()
    _check_features(np.asarray(train_x), np.asarray(test_x), len(train_y))
    train_y = np.asarray(train_y)
    fit_idx, val_idx = split_train_val(len(train_y), params.val_fraction, params.seed)
    x, val_x, test = _standardise(
        np.asarray(train_x, dtype=np.float64)[fit_idx],
        np.asarray(train_x, dtype=np.float64)[val_idx],
        np.asarray(test_x, dtype=np.float64),
    )
    if multilabel:
        y = torch.from_numpy(train_y[fit_idx].astype(bool))
        val_truth = train_y[val_idx].astype(bool)

        def score_val(logits: torch.Tensor) -> float:
            return multilabel_f1(val_truth, (logits > 0).numpy(), "micro")

    else:
        y = torch.from_numpy(train_y[fit_idx].astype(np.int64))
        val_truth = train_y[val_idx].astype(np.int64)

        def score_val(logits: torch.Tensor) -> float:
            return accuracy(val_truth, logits.argmax(1).numpy())

    runs = [
        (*_fit_logistic(x, y, val_x, score_val, multilabel, n_classes, lr, params), lr)
        for lr in params.learning_rates
    ]
    # best validation score; ties go to the earlier (smaller) learning rate
    val_score, epochs, layer, lr = max(runs, key=lambda r: r[0])
    with torch.no_grad():
        logits = layer(test)
    if multilabel:
        probs = torch.sigmoid(logits).numpy()
        return ProbeResult(probs > 0.5, probs, lr, epochs, val_score)
    probs = torch.softmax(logits, 1).numpy()
    return ProbeResult(probs.argmax(1), probs, lr, epochs, val_score)


# --------------------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class LogisticParams:
    """scikit-learn's L2 logistic regression with a sweep over C (inverse regularisation),
    C chosen on a validation split of train (the torchgeo / GEO-Bench style linear probe)."""

    cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    val_fraction: float = 0.2
    max_iter: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.cs or min(self.cs) <= 0:
            raise ValueError("cs must be a non-empty tuple of positive values")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction}; it must lie in (0, 1)")


def logistic_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    params: LogisticParams | None = None,
) -> ProbeResult:
    """Single-label logistic regression (lbfgs, multinomial) on standardised features; the C
    with the best validation accuracy is kept (ties: the smaller C)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    params = params or LogisticParams()
    _check_features(np.asarray(train_x), np.asarray(test_x), len(train_y))
    train_y = np.asarray(train_y, dtype=np.int64)
    fit_idx, val_idx = split_train_val(len(train_y), params.val_fraction, params.seed)
    x, val_x, test = (
        t.numpy().astype(np.float64)
        for t in _standardise(
            np.asarray(train_x, dtype=np.float64)[fit_idx],
            np.asarray(train_x, dtype=np.float64)[val_idx],
            np.asarray(test_x, dtype=np.float64),
        )
    )
    only = np.unique(train_y[fit_idx])
    if len(only) < 2:  # one class to learn from: the probe can only predict it
        probs = np.zeros((test.shape[0], n_classes))
        probs[:, only[0]] = 1.0
        val = accuracy(train_y[val_idx], np.full(len(val_idx), only[0]))
        return ProbeResult(probs.argmax(1), probs, None, None, val, c=None)
    best: tuple[float, float, LogisticRegression] | None = None
    for c in sorted(params.cs):
        model = LogisticRegression(C=c, max_iter=params.max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, train_y[fit_idx])
        val = accuracy(train_y[val_idx], model.predict(val_x))
        if best is None or val > best[0]:
            best = (val, c, model)
    assert best is not None
    val_score, c, model = best
    probs = np.zeros((test.shape[0], n_classes))
    probs[:, model.classes_] = model.predict_proba(test)
    return ProbeResult(probs.argmax(1), probs, None, None, val_score, c=c)
