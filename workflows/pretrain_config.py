"""`terracube pretrain CONFIG`: the pretraining YAML, validated before any work starts.

Unknown keys are errors naming their key path (e.g. `optim.lr_max`); relative
paths resolve against the config file's folder; URLs (s3://...) stay as given.
`run_pretrain` accepts a path or an already-built `PretrainConfig`.

Run it on several processes with no change: `torchrun --nproc_per_node N -m
terracube.workflows.pretrain_config CONFIG` (or `torchrun ... $(which terracube)
pretrain CONFIG`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from terracube.model.nn.encoder import SIZES
from terracube.model.train.pretrain import PretrainSettings, train


class PretrainConfigError(ValueError):
    """A config problem, worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    store: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=8, gt=0)
    crop_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    patch_sizes: list[int] = Field(default_factory=lambda: [4, 8], min_length=1)
    token_budget: int = Field(default=4096, gt=0)
    shuffle_buffer: int = Field(default=64, gt=0)
    workers: int = Field(default=2, ge=0)


class OptimConfig(_Strict):
    lr: float = Field(default=1e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    accumulation: int = Field(default=1, gt=0)


class CheckpointConfig(_Strict):
    dir: Path = Path("checkpoints")
    interval: int = Field(default=500, gt=0)
    keep: int = Field(default=2, gt=0)


class PretrainConfig(_Strict):
    data: DataConfig
    model_size: Literal[tuple(SIZES)] = "nano"  # type: ignore[valid-type]
    steps: int = Field(default=1000, gt=0)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    out_dir: Path = Path("pretrain-out")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> PretrainConfig:
        if self.optim.warmup_steps > self.steps:
            raise ValueError(
                f"optim.warmup_steps={self.optim.warmup_steps} exceeds steps={self.steps}"
            )
        return self

    def settings(self) -> PretrainSettings:
        d, o = self.data, self.optim
        return PretrainSettings(
            store=d.store,
            storage_options=dict(d.storage_options),
            checkpoint_dir=self.checkpoint.dir,
            out_dir=self.out_dir,
            model_size=self.model_size,
            steps=self.steps,
            batch_size=d.batch_size,
            lr=o.lr,
            min_lr_ratio=o.min_lr_ratio,
            warmup_steps=o.warmup_steps,
            weight_decay=o.weight_decay,
            grad_clip=o.grad_clip,
            accumulation=o.accumulation,
            crop_sizes=tuple(d.crop_sizes),
            patch_sizes=tuple(d.patch_sizes),
            token_budget=d.token_budget,
            shuffle_buffer=d.shuffle_buffer,
            workers=d.workers,
            seed=self.seed,
            checkpoint_interval=self.checkpoint.interval,
            keep_checkpoints=self.checkpoint.keep,
            compile=self.compile,
            device=self.device,
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
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"store": _resolve(config.data.store, base)}),
            "checkpoint": config.checkpoint.model_copy(
                update={"dir": Path(_resolve(config.checkpoint.dir, base))}
            ),
            "out_dir": Path(_resolve(config.out_dir, base)),
        }
    )


def run_pretrain(
    config_path_or_model: str | os.PathLike[str] | PretrainConfig, stop_after: int | None = None
) -> Path:
    """`terracube pretrain CONFIG`: train or resume; returns the newest checkpoint path."""
    if isinstance(config_path_or_model, PretrainConfig):
        config = config_path_or_model
    else:
        config = load_pretrain_config(config_path_or_model)
    return train(config.settings(), stop_after=stop_after)


if __name__ == "__main__":  # torchrun -m terracube.workflows.pretrain_config CONFIG
    if len(sys.argv) != 2:
        sys.exit("usage: python -m terracube.workflows.pretrain_config CONFIG.yaml")
    print(run_pretrain(sys.argv[1]))
