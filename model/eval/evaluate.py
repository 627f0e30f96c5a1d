"""Evaluate a frozen encoder: embeddings -> kNN and linear probes -> results table.

Three feature sets are scored with the same probes on the same split, so any gain
is visible: the checkpoint's encoder, a randomly initialised encoder of the same
size (made exactly as pretraining makes its step-0 model: `torch.manual_seed(seed)`
then `LatentMIM(size)`, with the checkpoint's seed — so it *is* the run's starting
point), and raw pixels (per-band mean and std of the normalised valid pixels).

Encoders run frozen (eval mode, `torch.no_grad`). Classification uses the pooled
embedding; segmentation uses one embedding per patch (token grid cell): the mean
of its encoded tokens over band groups and timesteps, labelled with the majority
WorldCover class of the patch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from terracube.model.eval.datasets import read_bigearthnet, read_eurosat
from terracube.model.eval.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    mean_average_precision,
    mean_iou,
    multilabel_f1,
)
from terracube.model.eval.probes import KnnParams, LinearProbeParams, LogisticParams, ProbeResult
from terracube.model.eval.protocols import (
    GEOBENCH_KNN,
    GEOBENCH_LOGISTIC,
    OLMOEARTH_KNN,
    OLMOEARTH_LINEAR,
    PROTOCOL_OF_PROBE,
    ProbeSet,
    intervals,
    run_probes,
)
from terracube.model.eval.raster_labels import raster_task
from terracube.model.eval.report import write_report
from terracube.model.eval.tasks import (
    IGNORE,
    CropParams,
    EvalSet,
    split_by_key,
    token_labels,
    worldcover_task,
)
from terracube.model.nn.batch import Batch
from terracube.model.nn.groups import encodable_groups
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.train.checkpoint import load_checkpoint, trained_patch_size
from terracube.model.train.pretrain import CHECKPOINT_FORMAT

TASKS: tuple[str, ...] = (
    "worldcover-classification",
    "worldcover-segmentation",
    "raster-classification",
    "raster-segmentation",
    "eurosat",
    "bigearthnet",
)


@dataclass(frozen=True)
class EvalParams:
    size: str = "nano"
    """Model size of the random-init encoder when no checkpoint is given."""
    seed: int = 0
    """Split and probe seed; also the init seed when no checkpoint is given."""
    patch_size: int | None = None
    """None = the patch size the checkpoint was trained at (4 without a checkpoint)."""
    batch_size: int = 32
    test_fraction: float = 0.25
    crop: CropParams = field(default_factory=CropParams)
    knn: KnnParams = OLMOEARTH_KNN
    linear: LinearProbeParams = OLMOEARTH_LINEAR
    """The olmoearth protocol's probes (protocols.py)."""
    geobench: bool = True
    """Also the geobench protocol: kNN k=5 uniform votes, logistic regression C sweep."""
    knn5: KnnParams = GEOBENCH_KNN
    logistic: LogisticParams = GEOBENCH_LOGISTIC
    bootstrap: int = 1000
    """Resamples of the 95 % intervals (0: none)."""
    labels: str | None = None
    """raster-* tasks: the folder of label GeoTIFFs (raster_labels.py)."""
    max_train_tokens: int = 50_000
    """Segmentation: seeded subsample of the training tokens handed to the probes."""
    eurosat_month: int = 0
    device: str = "cpu"
    """cpu, cuda, or auto (CUDA when torch sees a device)."""

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={self.device!r} was asked for but torch sees no CUDA device"
            )
        return torch.device(self.device)


@dataclass(frozen=True)
class Encoders:
    """The encoder under test and its same-size, same-seed random initialisation."""

    trained: LatentMIM
    random_init: LatentMIM
    label: str
    trained_patch_size: int | None = None
    """What the checkpoint's run trained at (None: no checkpoint, or not recorded)."""


def init_model(size: str | LatentMIMConfig, seed: int) -> LatentMIM:
    """Exactly how pretraining builds its step-0 model, without touching the caller's RNG."""
    config = LatentMIMConfig(size=size) if isinstance(size, str) else size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentMIM(config)


def checkpoint_model_config(settings: dict[str, Any]) -> LatentMIMConfig:
    """The model a checkpoint's recorded settings describe (its size and recipe options)."""
    recorded = settings.get("model")
    if isinstance(recorded, dict):
        return LatentMIMConfig(**recorded)
    return LatentMIMConfig(size=str(settings.get("model_size", "nano")))


def load_encoders(checkpoint: Path | None, params: EvalParams) -> Encoders:
    """Encoder from a pretraining checkpoint (weights_only load) or a random init, plus the
    random-init baseline of the same size and seed; both frozen on `params.device`."""
    if checkpoint is None:
        trained = init_model(params.size, params.seed)
        random_init = init_model(params.size, params.seed)
        label = f"random-init {params.size} (no checkpoint)"
        patch = None
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist; pass a step_*.pt file")
        state = load_checkpoint(path, CHECKPOINT_FORMAT)
        settings = state.get("settings", {})
        config, seed = checkpoint_model_config(settings), int(settings.get("seed", 0))
        trained = init_model(config, seed)
        trained.load_state_dict(state["model"])
        random_init = init_model(config, seed)
        label = f"{path.name} (step {state.get('step')})"
        patch = trained_patch_size(settings)
    for model in (trained, random_init):
        model.eval().requires_grad_(False).to(params.torch_device())
    return Encoders(trained, random_init, label, patch)


# --------------------------------------------------------------------------- features


def _encoder_groups(batch: Batch) -> list[str]:
    return [g for g in batch.groups if g in encodable_groups()]


def encoder_features(
    model: LatentMIM, batch: Batch, per_token: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (B, D) or per-patch (B, h, w, D) embeddings, and which patches had an encoded token."""
    with torch.no_grad():
        pooled, tokens = model.encode(batch)
    if not per_token:
        present = torch.stack(
            [batch.token_valid(g).flatten(1).any(1) for g in _encoder_groups(batch)]
        ).any(0)
        return pooled, present
    total = count = None
    for g in _encoder_groups(batch):
        encoded = batch.token_valid(g).to(tokens[g].dtype)  # (B, T, h, w)
        part = (tokens[g] * encoded[..., None]).sum(1)
        part_count = encoded.sum(1)
        total = part if total is None else total + part
        count = part_count if count is None else count + part_count
    assert total is not None and count is not None
    return total / count.clamp(min=1)[..., None], count > 0


def raw_pixel_features(batch: Batch, per_token: bool) -> torch.Tensor:
    """Per-band mean and std of valid normalised pixels over time and the crop (or patch)."""
    parts = []
    p = batch.patch_size
    for g in _encoder_groups(batch):
        x, v = batch.data[g], batch.valid[g].to(batch.data[g].dtype)  # (B,T,C,H,W), (B,T,H,W)
        b, t, c, h, w = x.shape
        if per_token:
            x = x.reshape(b, t, c, h // p, p, w // p, p).permute(0, 3, 5, 2, 1, 4, 6)
            v = v.reshape(b, t, 1, h // p, p, w // p, p).permute(0, 3, 5, 2, 1, 4, 6)
            x, v = x.reshape(b, h // p, w // p, c, -1), v.reshape(b, h // p, w // p, 1, -1)
        else:
            x, v = x.permute(0, 2, 1, 3, 4).reshape(b, c, -1), v.reshape(b, 1, -1)
        n = v.sum(-1).clamp(min=1)
        mean = (x * v).sum(-1) / n
        std = (((x - mean[..., None]) ** 2 * v).sum(-1) / n).sqrt()
        parts += [mean, std]
    return torch.cat(parts, dim=-1)


Progress = Callable[[str, int, int], None]
"""(stage, done, total): called as features are extracted and probes fitted."""


def feature_set(
    eval_set: EvalSet,
    model: LatentMIM | None,
    params: EvalParams,
    per_token: bool,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every sample from one frozen encoder (None: raw pixels), and the mask
    of rows/patches that had an encoded token."""
    if params.patch_size is None:
        raise ValueError("feature_set needs EvalParams.patch_size (evaluate() sets it)")
    normalizers = eval_set.normalizers()
    out, masks = [], []
    for start in range(0, len(eval_set), params.batch_size):
        index = np.arange(start, min(start + params.batch_size, len(eval_set)))
        batch = eval_set.batch(index, params.patch_size, normalizers).to(params.torch_device())
        if model is None:
            features = raw_pixel_features(batch, per_token)
            present = torch.ones(features.shape[:-1], dtype=torch.bool)
        else:
            features, present = encoder_features(model, batch, per_token)
        out.append(features.float().cpu().numpy())
        masks.append(present.cpu().numpy())
        if progress is not None:
            progress("features", int(index[-1]) + 1, len(eval_set))
    return np.concatenate(out).astype(np.float64), np.concatenate(masks)


def extract_features(
    eval_set: EvalSet,
    encoders: Encoders,
    params: EvalParams,
    per_token: bool,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of every sample for each feature set, and the mask of usable rows/patches
    (where the encoder under test had an encoded token)."""
    trained, usable = feature_set(eval_set, encoders.trained, params, per_token, progress)
    random_init, _ = feature_set(eval_set, encoders.random_init, params, per_token)
    raw, _ = feature_set(eval_set, None, params, per_token)
    return {"checkpoint": trained, "random-init": random_init, "raw-pixels": raw}, usable


# --------------------------------------------------------------------------- scoring


def score(kind: str, truth: np.ndarray, result: ProbeResult, n_classes: int) -> dict[str, Any]:
    """Metrics of one probe's test predictions (+ the confusion matrix where defined)."""
    if kind == "multilabel":
        return {
            "micro_f1": multilabel_f1(truth, result.predictions, "micro"),
            "macro_f1": multilabel_f1(truth, result.predictions, "macro"),
            "mAP": mean_average_precision(truth, result.scores),
        }
    metrics: dict[str, Any] = {"accuracy": accuracy(truth, result.predictions)}
    if kind == "segmentation":
        metrics["mIoU"] = mean_iou(truth, result.predictions)
    else:
        metrics["macro_f1"] = macro_f1(truth, result.predictions)
    metrics["confusion"] = confusion_matrix(truth, result.predictions, n_classes).tolist()
    return metrics


def _rows_of(
    features: np.ndarray,
    rows: np.ndarray,
    per_token: bool,
    usable: np.ndarray,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten (rows, h, w, D) to the usable labelled patches; pass pooled rows through."""
    if not per_token:
        return features[rows], labels[rows]
    keep = usable[rows] & (labels[rows] != IGNORE)
    return features[rows][keep], labels[rows][keep]


def load_task(
    task: str,
    data: str | os.PathLike[str],
    params: EvalParams,
    groups: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> EvalSet:
    """The labelled set of `task`: corpus crops (WorldCover tasks) or a dataset folder."""
    if task in ("worldcover-classification", "worldcover-segmentation"):
        kind: Literal["classification", "segmentation"] = (
            "classification" if task.endswith("classification") else "segmentation"
        )
        return worldcover_task(data, kind, params.crop, groups, storage_options)
    if task in ("raster-classification", "raster-segmentation"):
        if params.labels is None:
            raise ValueError(
                f"task {task!r} reads its labels from rasters; pass --labels DIR (a folder of "
                "label GeoTIFFs, one per UTM zone, 10 m)"
            )
        raster_kind: Literal["classification", "segmentation"] = (
            "classification" if task.endswith("classification") else "segmentation"
        )
        return raster_task(data, params.labels, raster_kind, params.crop, groups, storage_options)
    if task == "eurosat":
        return read_eurosat(Path(data), month=params.eurosat_month)
    if task == "bigearthnet":
        return read_bigearthnet(Path(data))
    raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def evaluate(
    checkpoint: Path | None,
    task: str,
    data: str | os.PathLike[str],
    out_dir: Path,
    params: EvalParams | None = None,
    groups: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Probe the frozen encoder on `task` (data = corpus store or dataset folder); write
    results.json, results.md and confusion_matrix.png to `out_dir` and return the results.

    `groups` restricts the encoder input of corpus tasks (default: every encodable group);
    `storage_options` open a remote corpus (fsspec); `progress` hears of each batch of
    features and each feature set probed."""
    params = params or EvalParams()
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    eval_set = load_task(task, data, params, groups, storage_options)
    encoders = load_encoders(checkpoint, params)
    if params.patch_size is None:  # the checkpoint's own (4 only for a random init)
        params = replace(params, patch_size=encoders.trained_patch_size or 4)
    patch = params.patch_size
    assert patch is not None
    per_token = eval_set.kind == "segmentation"
    features, usable = extract_features(eval_set, encoders, params, per_token, progress)
    labels = (
        token_labels(eval_set.labels, patch, len(eval_set.class_names))
        if per_token
        else eval_set.labels
    )
    train_rows, test_rows = split_by_key(eval_set.split_keys, params.test_fraction, params.seed)
    n_classes = len(eval_set.class_names)
    rows: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    predictions: dict[tuple[str, str], np.ndarray] = {}
    test_truth = np.zeros(0, dtype=np.int64)
    probes = ProbeSet(params.knn, params.linear, params.geobench, params.knn5, params.logistic)
    for done, (name, feats) in enumerate(features.items()):
        if progress is not None:
            progress("probes", done, len(features))
        train_x, train_y = _rows_of(feats, train_rows, per_token, usable, labels)
        test_x, test_y = _rows_of(feats, test_rows, per_token, usable, labels)
        if per_token and len(train_y) > params.max_train_tokens:
            pick = np.sort(
                np.random.default_rng(params.seed).choice(
                    len(train_y), params.max_train_tokens, replace=False
                )
            )
            train_x, train_y = train_x[pick], train_y[pick]
        sizes = {"train": len(train_y), "test": len(test_y)}
        test_truth = test_y
        for probe, result in run_probes(
            eval_set.kind, train_x, train_y, test_x, n_classes, probes
        ).items():
            row: dict[str, Any] = {
                "features": name,
                "probe": probe,
                "protocol": PROTOCOL_OF_PROBE[probe],
            }
            row.update(score(eval_set.kind, test_y, result, n_classes))
            if result.learning_rate is not None:
                row["learning_rate"], row["epochs"] = result.learning_rate, result.epochs
            if result.c is not None:
                row["C"] = result.c
            rows.append(row)
            predictions[(name, probe)] = np.asarray(result.predictions)
    if progress is not None:
        progress("probes", len(features), len(features))
    differences: list[dict[str, Any]] = []
    if params.bootstrap > 0:
        per_row, differences = intervals(
            eval_set.kind, test_truth, predictions, n_classes, params.seed, params.bootstrap
        )
        for row in rows:
            if (row["features"], row["probe"]) in per_row:
                row["ci"] = per_row[(row["features"], row["probe"])]
    results: dict[str, Any] = {
        "task": task,
        "kind": eval_set.kind,
        "data": os.fspath(data),
        "encoder": encoders.label,
        "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "classes": list(eval_set.class_names),
        "n_train": sizes["train"],
        "n_test": sizes["test"],
        "unit": "patch" if per_token else "sample",
        "split": {
            "by": "tile" if task.startswith(("worldcover", "raster")) else "sample",
            "seed": params.seed,
            "test_fraction": params.test_fraction,
            "train_samples": len(np.unique(eval_set.split_keys[train_rows])),
            "test_samples": len(np.unique(eval_set.split_keys[test_rows])),
        },
        "knn": {"k": params.knn.k, "temperature": params.knn.temperature, "similarity": "cosine"},
        "linear": {
            "learning_rates": list(params.linear.learning_rates),
            "max_epochs": params.linear.max_epochs,
            "patience": params.linear.patience,
            "optimizer": params.linear.optimizer,
            "weight_decay": params.linear.weight_decay,
            "val_fraction": params.linear.val_fraction,
        },
        "geobench": {
            "knn_k": params.knn5.k,
            "knn_votes": params.knn5.weighting,
            "logistic_C": list(params.logistic.cs),
        }
        if params.geobench
        else None,
        "bootstrap": {
            "resamples": params.bootstrap,
            "level": 0.95,
            "over": "test " + ("patches" if per_token else "samples"),
        },
        "patch_size": patch,
        "rows": rows,
        "differences": differences,
    }
    write_report(results, Path(out_dir))
    return results
