"""Optimizer settings and the learning-rate schedule: linear warmup, then cosine decay.

The defaults are OlmoEarth v1's (scripts/official/v1/script.py with olmo-core's AdamW):
lr 1e-4, betas (0.9, 0.999), weight decay 0.02 on every parameter, warmup 8000 of
667,200 steps (2224 steps of 512 samples x 300 epochs) then cosine to 0.1 x lr. A run
here is far shorter, so the warmup is the same share of the run (1.2 %) unless
`warmup_steps` fixes it. (The released nano used lr 1e-3 and weight decay 0.002;
docs/model.md lists the per-size values.)

A frozen dataclass rather than a lambda so that `LambdaLR.state_dict()` holds only
primitives (its fields) and a checkpoint loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

REFERENCE_WARMUP_STEPS = 8000
REFERENCE_TOTAL_STEPS = 667_200


@dataclass(frozen=True)
class OptimParams:
    """The optimizer's settings and their defaults: the one definition the YAML
    `optim:` section (workflows/pretrain_config.py) and `PretrainSettings` read."""

    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    warmup_steps: int | None = None
    """None = warmup_fraction of the run's steps."""
    warmup_fraction: float = REFERENCE_WARMUP_STEPS / REFERENCE_TOTAL_STEPS
    weight_decay: float = 0.02
    decay_on: Literal["all", "matrices"] = "all"
    """"all" (the reference's) or "matrices": none on biases, norms and embeddings' vectors."""
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    accumulation: int = 1
    """Micro-batches per optimizer step."""

    def warmup_for(self, steps: int) -> int:
        """Warmup steps of a run of `steps` optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(steps, round(self.warmup_fraction * steps))


@dataclass(frozen=True)
class WarmupCosine:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = OptimParams.min_lr_ratio

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps}; it must be >= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must lie in 0..steps={self.total_steps}"
            )
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_ratio} must lie in [0, 1]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * cosine


def warmup_cosine(optimizer: Optimizer, schedule: WarmupCosine) -> LambdaLR:
    return LambdaLR(optimizer, schedule)
