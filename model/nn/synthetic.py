"""Contract-shaped random batches for benchmarks and smoke tests (no corpus needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from terracube.catalog.registry import band_group
from terracube.model.nn.batch import Batch
from terracube.model.nn.groups import all_groups, group_channels, modality_of_group


def synthetic_batch(
    batch_size: int = 2,
    timesteps: int = 3,
    size: int = 16,
    patch_size: int = 4,
    groups: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    valid_fraction: float = 1.0,
) -> Batch:
    """A batch with N(0, 1) pixels for measured groups, one-hot classes for one-hot groups
    and Bernoulli(valid_fraction) pixel validity."""
    generator = generator or torch.Generator().manual_seed(0)
    data, valid = {}, {}
    for name in groups if groups is not None else all_groups():
        t = timesteps if band_group(name).temporal else 1
        c = group_channels(name)
        if modality_of_group(name).classes and c == len(modality_of_group(name).classes):
            labels = torch.randint(c, (batch_size, t, size, size), generator=generator)
            x = F.one_hot(labels, c).permute(0, 1, 4, 2, 3).float()
        else:
            x = torch.randn(batch_size, t, c, size, size, generator=generator)
        data[name] = x
        valid[name] = torch.rand(batch_size, t, size, size, generator=generator) < valid_fraction
    months = torch.randint(12, (batch_size, timesteps), generator=generator)
    return Batch(data=data, valid=valid, months=months, patch_size=patch_size)
