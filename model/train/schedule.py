"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

A frozen dataclass rather than a lambda so that `LambdaLR.state_dict()` holds only
primitives (its fields) and a checkpoint loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class OptimParams:
    """The optimizer's settings and their defaults: the one definition the YAML
    `optim:` section (workflows/pretrain_config.py) and `PretrainSettings` read."""

    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    accumulation: int = 1
    """Micro-batches per optimizer step."""


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
