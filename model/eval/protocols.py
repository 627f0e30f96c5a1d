"""The two probe protocols every evaluation reports, and the intervals beside them.

- **olmoearth** (the paper's): kNN with k = 20, cosine similarity, votes weighted
  exp(sim / 0.07); a linear probe trained with AdamW for 50 epochs at each learning rate
  of a sweep, the best validation epoch of the best rate scored on test. Rows `knn`,
  `linear`.
- **geobench** (torchgeo / GEO-Bench style): kNN with k = 5, cosine, one vote per
  neighbour; scikit-learn logistic regression with a sweep over C chosen on validation.
  Rows `knn5`, `logreg` (single-label tasks; multi-label tasks get the olmoearth rows).

Every single-label row carries a 95 % bootstrap interval per metric, and the checkpoint's
difference to random init and to raw pixels is reported per probe with its paired
interval (uncertainty.py). A difference counts only when its interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from terracube.model.eval.probes import (
    KnnParams,
    LinearProbeParams,
    LogisticParams,
    ProbeResult,
    knn_classify,
    knn_multilabel,
    linear_probe,
    logistic_probe,
)
from terracube.model.eval.uncertainty import bootstrap_interval, paired_difference

OLMOEARTH_KNN = KnnParams(k=20, temperature=0.07)
OLMOEARTH_LINEAR = LinearProbeParams(
    learning_rates=(1e-4, 1e-3, 1e-2, 1e-1),
    max_epochs=50,
    patience=None,
    optimizer="adamw",
    weight_decay=0.01,
)
GEOBENCH_KNN = KnnParams(k=5, weighting="uniform")
GEOBENCH_LOGISTIC = LogisticParams()
PROTOCOL_OF_PROBE = {
    "knn": "olmoearth",
    "linear": "olmoearth",
    "knn5": "geobench",
    "logreg": "geobench",
}
COMPARED = ("random-init", "raw-pixels")
"""What the checkpoint's features are compared with, per probe."""


@dataclass(frozen=True)
class ProbeSet:
    knn: KnnParams = OLMOEARTH_KNN
    linear: LinearProbeParams = OLMOEARTH_LINEAR
    geobench: bool = True
    knn5: KnnParams = GEOBENCH_KNN
    logistic: LogisticParams = GEOBENCH_LOGISTIC


def run_probes(
    kind: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    probes: ProbeSet,
) -> dict[str, ProbeResult]:
    """Every probe of the protocols on one feature set, by row name."""
    if kind == "multilabel":
        return {
            "knn": knn_multilabel(train_x, train_y, test_x, probes.knn),
            "linear": linear_probe(
                train_x, train_y, test_x, n_classes, probes.linear, multilabel=True
            ),
        }
    out = {
        "knn": knn_classify(train_x, train_y, test_x, n_classes, probes.knn),
        "linear": linear_probe(train_x, train_y, test_x, n_classes, probes.linear),
    }
    if probes.geobench:
        out["knn5"] = knn_classify(train_x, train_y, test_x, n_classes, probes.knn5)
        out["logreg"] = logistic_probe(train_x, train_y, test_x, n_classes, probes.logistic)
    return out


def metric_names(kind: str) -> tuple[str, ...]:
    return ("accuracy", "mIoU") if kind == "segmentation" else ("accuracy", "macro_f1")


def intervals(
    kind: str,
    truth: np.ndarray,
    predictions: dict[tuple[str, str], np.ndarray],
    n_classes: int,
    seed: int,
    resamples: int = 1000,
) -> tuple[dict[tuple[str, str], dict[str, list[float]]], list[dict[str, Any]]]:
    """Per (features, probe): metric -> [value, low, high]; and the checkpoint's paired
    differences to each of COMPARED, per probe and metric, with a verdict."""
    if kind == "multilabel":
        return {}, []
    per_row = {
        key: {
            m: bootstrap_interval(truth, pred, n_classes, m, resamples, seed).as_list()
            for m in metric_names(kind)
        }
        for key, pred in predictions.items()
    }
    differences = []
    for (features, probe), pred in predictions.items():
        if features != "checkpoint":
            continue
        for other in COMPARED:
            if (other, probe) not in predictions:
                continue
            for m in metric_names(kind):
                d = paired_difference(
                    truth, pred, predictions[(other, probe)], n_classes, m, resamples, seed
                )
                differences.append(
                    {
                        "probe": probe,
                        "protocol": PROTOCOL_OF_PROBE[probe],
                        "minus": other,
                        "metric": m,
                        "value": d.value,
                        "low": d.low,
                        "high": d.high,
                        "verdict": verdict(d.low, d.high),
                    }
                )
    return per_row, differences


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not resolved"
