"""`terracube pretrain CONFIG`: the pretraining YAML, validated before any work starts.

Unknown keys are errors naming their key path (e.g. `optim.lr_max`); relative
paths resolve against the config file's folder; URLs (s3://...) stay as given.
`run_pretrain` accepts a path or an already-built `PretrainConfig`.

Run it on several processes with no change: `torchrun --nproc_per_node N -m
terracube.workflows.pretrain_config CONFIG` (or `torchrun ... $(which terracube)
pretrain CONFIG`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from terracube.model.data.plan import LoaderParams
from terracube.model.nn.encoder import SIZES
from terracube.model.nn.losses import CONTRASTIVE_DIRECTIONS, NEGATIVE_SCOPES, PATCH_REDUCTIONS
from terracube.model.nn.olmoearth import LatentMIMConfig
from terracube.model.nn.target import TARGET_KINDS
from terracube.model.nn.tokenizer import PATCH_RESIZES
from terracube.model.train.masking import MASKING_STRATEGIES, MaskingParams
from terracube.model.train.pretrain import PretrainSettings, train
from terracube.model.train.schedule import OptimParams


class PretrainConfigError(ValueError):
    """A config problem, worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_LOADER = LoaderParams()
_OPTIM = OptimParams()
_MASKING = MaskingParams()
_MODEL = LatentMIMConfig()
_RUN = PretrainSettings(store="", checkpoint_dir=Path(), out_dir=Path())
"""The defaults, read from the dataclasses that define them (model/data/plan.py,
model/train/schedule.py, model/train/pretrain.py); this file adds only bounds and the
YAML's section names. `tests/model/test_pretrain.py` checks that every field is here."""

RUN_SET_LOADER_FIELDS = frozenset({"seed", "drop_last", "equalize", "num_views", "masking"})
"""LoaderParams fields not in the `data:` section: the run sets them (seed from the top
level), and `masking` has a section of its own."""


class DataConfig(_Strict):
    store: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=_LOADER.batch_size, gt=0)
    crop_sizes: tuple[int, ...] = Field(default=_LOADER.crop_sizes, min_length=1)
    patch_sizes: tuple[int, ...] = Field(default=_LOADER.patch_sizes, min_length=1)
    token_budget: int = Field(default=_LOADER.token_budget, gt=0)
    shuffle_buffer: int = Field(default=_LOADER.shuffle_buffer, gt=0)
    workers: int = Field(default=_RUN.workers, ge=0)
    max_decode_error_share: float = Field(default=_RUN.max_decode_error_share, ge=0, le=1)

    def loader(self) -> LoaderParams:
        loader_keys = {f.name for f in dataclasses.fields(LoaderParams)}
        return LoaderParams(**{k: v for k, v in self.model_dump().items() if k in loader_keys})


class OptimConfig(_Strict):
    lr: float = Field(default=_OPTIM.lr, gt=0)
    min_lr_ratio: float = Field(default=_OPTIM.min_lr_ratio, ge=0, le=1)
    warmup_steps: int | None = Field(default=_OPTIM.warmup_steps, ge=0)
    warmup_fraction: float = Field(default=_OPTIM.warmup_fraction, ge=0, le=1)
    weight_decay: float = Field(default=_OPTIM.weight_decay, ge=0)
    decay_on: Literal["all", "matrices"] = _OPTIM.decay_on
    beta1: float = Field(default=_OPTIM.beta1, ge=0, lt=1)
    beta2: float = Field(default=_OPTIM.beta2, ge=0, lt=1)
    grad_clip: float = Field(default=_OPTIM.grad_clip, gt=0)
    accumulation: int = Field(default=_OPTIM.accumulation, gt=0)


class MaskingConfig(_Strict):
    strategy: Literal[tuple(MASKING_STRATEGIES)] = _MASKING.strategy  # type: ignore[valid-type]
    encode_ratio: float = Field(default=_MASKING.encode_ratio, gt=0, lt=1)
    decode_ratio: float = Field(default=_MASKING.decode_ratio, gt=0, lt=1)
    min_encoded_groups: int = Field(default=_MASKING.min_encoded_groups, ge=1)


class ModelConfig(_Strict):
    """The recipe options of `LatentMIMConfig` (its size is the top-level `model_size`)."""

    decoder_depth: int | None = Field(default=_MODEL.decoder_depth, ge=1)
    drop_path: float = Field(default=_MODEL.drop_path, ge=0, lt=1)
    target: Literal[tuple(TARGET_KINDS)] = _MODEL.target  # type: ignore[valid-type]
    target_dim: int | None = Field(default=_MODEL.target_dim, gt=0)
    target_seed: int = _MODEL.target_seed
    ema_momentum: float = Field(default=_MODEL.ema_momentum, gt=0, lt=1)
    patch_resize: Literal[tuple(PATCH_RESIZES)] = _MODEL.patch_resize  # type: ignore[valid-type]
    negatives: Literal[tuple(NEGATIVE_SCOPES)] = _MODEL.negatives  # type: ignore[valid-type]
    patch_reduction: Literal[tuple(PATCH_REDUCTIONS)] = _MODEL.patch_reduction  # type: ignore[valid-type]
    temperature: float = Field(default=_MODEL.temperature, gt=0)
    contrastive_weight: float = Field(default=_MODEL.contrastive_weight, ge=0)
    contrastive_temperature: float = Field(default=_MODEL.contrastive_temperature, gt=0)
    contrastive_direction: Literal[tuple(CONTRASTIVE_DIRECTIONS)] = _MODEL.contrastive_direction  # type: ignore[valid-type]
    contrastive_projection: bool = _MODEL.contrastive_projection
    base_patch_size: int = Field(default=_MODEL.base_patch_size, ge=1, le=8)


class CheckpointConfig(_Strict):
    dir: Path = Path("checkpoints")
    interval: int = Field(default=_RUN.checkpoint_interval, gt=0)
    keep: int = Field(default=_RUN.keep_checkpoints, gt=0)


class PretrainConfig(_Strict):
    data: DataConfig
    model_size: Literal[tuple(SIZES)] = _RUN.model.size  # type: ignore[valid-type]
    model: ModelConfig = Field(default_factory=ModelConfig)
    steps: int = Field(default=_RUN.steps, gt=0)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    out_dir: Path = Path("pretrain-out")
    seed: int = _RUN.seed
    device: Literal["auto", "cpu", "cuda"] = _RUN.device  # type: ignore[assignment]
    compile: bool = _RUN.compile

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> PretrainConfig:
        if self.optim.warmup_steps is not None and self.optim.warmup_steps > self.steps:
            raise ValueError(
                f"optim.warmup_steps={self.optim.warmup_steps} exceeds steps={self.steps}"
            )
        return self

    def settings(self) -> PretrainSettings:
        try:
            loader = self.data.loader()
        except ValueError as exc:  # the loader's own checks (crop alignment, patch sizes)
            raise PretrainConfigError(f"data: {exc}") from None
        try:
            masking = MaskingParams(**self.masking.model_dump())
        except ValueError as exc:
            raise PretrainConfigError(f"masking: {exc}") from None
        try:
            model = LatentMIMConfig(size=self.model_size, **self.model.model_dump())
        except ValueError as exc:
            raise PretrainConfigError(f"model: {exc}") from None
        return PretrainSettings(
            store=self.data.store,
            storage_options=dict(self.data.storage_options),
            checkpoint_dir=self.checkpoint.dir,
            out_dir=self.out_dir,
            loader=dataclasses.replace(loader, masking=masking),
            optim=OptimParams(**self.optim.model_dump()),
            model=model,
            steps=self.steps,
            workers=self.data.workers,
            seed=self.seed,
            checkpoint_interval=self.checkpoint.interval,
            keep_checkpoints=self.checkpoint.keep,
            compile=self.compile,
            device=self.device,
            max_decode_error_share=self.data.max_decode_error_share,
        )


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (check its spelling and section)")
        else:
            lines.append(f"{path}: {err['msg']}")
    return f"{source}: invalid pretrain config:\n  " + "\n  ".join(lines)


def _resolve(value: str | Path, base: Path) -> str:
    text = os.fspath(value)
    if urlparse(text).scheme not in ("", "file") or Path(text).is_absolute():
        return text
    return str((base / text).resolve())


def load_pretrain_config(path: str | os.PathLike[str]) -> PretrainConfig:
    """Parse and validate a YAML file; errors name the file and each offending key path."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise PretrainConfigError(f"config file {source} does not exist") from None
    except yaml.YAMLError as exc:
        raise PretrainConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PretrainConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        config = PretrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise PretrainConfigError(_describe(exc, str(source))) from None
    base = source.resolve().parent
    resolved = config.model_copy(
        update={
            "data": config.data.model_copy(update={"store": _resolve(config.data.store, base)}),
            "checkpoint": config.checkpoint.model_copy(
                update={"dir": Path(_resolve(config.checkpoint.dir, base))}
            ),
            "out_dir": Path(_resolve(config.out_dir, base)),
        }
    )
    try:
        resolved.settings()  # the loader's own checks (crop alignment, patch sizes), now
    except PretrainConfigError as exc:
        raise PretrainConfigError(f"{source}: invalid pretrain config:\n  {exc}") from None
    return resolved


def run_pretrain(
    config_path_or_model: str | os.PathLike[str] | PretrainConfig,
    stop_after: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """`terracube pretrain CONFIG`: train or resume; returns the newest checkpoint path."""
    if isinstance(config_path_or_model, PretrainConfig):
        config = config_path_or_model
    else:
        config = load_pretrain_config(config_path_or_model)
    return train(config.settings(), stop_after=stop_after, on_step=on_step)


if __name__ == "__main__":  # torchrun -m terracube.workflows.pretrain_config CONFIG
    if len(sys.argv) != 2:
        sys.exit("usage: python -m terracube.workflows.pretrain_config CONFIG.yaml")
    print(run_pretrain(sys.argv[1]))
