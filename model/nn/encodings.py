"""Token encodings: where, when and what each token is.

Layout of the `dim` channels of the fixed part: [time index | month | row | column],
a quarter each, sin-cos. The learned band-group embedding spans all `dim` channels
and is added on top. Static groups (maps) get no time or month part.
"""

from __future__ import annotations

import math

import torch
from terracube.catalog.bands import BASE_RESOLUTION_M
from terracube.model.nn.groups import all_groups
from torch import Tensor, nn

MONTH_HARMONICS = 6
"""Distinct cyclic frequencies of a 12-month cycle; higher ones alias."""


def sincos(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer sin-cos features (..., dim) of real-valued positions (...)."""
    if dim % 2:
        raise ValueError(f"sin-cos dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=positions.device, dtype=torch.float32)
        / half
    )
    angles = positions.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def month_sincos(months: Tensor, dim: int) -> Tensor:
    """Cyclic features (..., dim) of months 0..11 so December sits next to January."""
    half = dim // 2
    harmonics = 1 + torch.arange(half, device=months.device) % MONTH_HARMONICS
    angles = (2 * math.pi / 12) * months.float()[..., None] * harmonics
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def ground_positions(n: int, patch_size: int, gsd: float, device: torch.device) -> Tensor:
    """Patch-centre offsets in units of the base 10 m pixel, so a place keeps its encoding
    whatever the patch size or gsd (ground distance, not token index)."""
    spacing = patch_size * gsd / BASE_RESOLUTION_M
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * spacing


class TokenEncodings(nn.Module):
    """Band-group embedding plus time, month and 2-D ground-position sin-cos."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"encoding dim must be a multiple of 8, got {dim}")
        self.dim = dim
        self.group_embedding = nn.Embedding(len(all_groups()), dim)
        nn.init.normal_(self.group_embedding.weight, std=0.02)

    def forward(
        self,
        group_id: int,
        months: Tensor | None,
        grid: tuple[int, int],
        patch_size: int,
        gsd: float,
    ) -> Tensor:
        """(B or 1, T, h, w, dim) encodings of one group; `months` (B, T) or None if static."""
        q = self.dim // 4
        h, w = grid
        device = self.group_embedding.weight.device
        rows = sincos(ground_positions(h, patch_size, gsd, device), q)  # (h, q)
        cols = sincos(ground_positions(w, patch_size, gsd, device), q)  # (w, q)
        space = torch.cat(
            [rows[:, None, :].expand(h, w, q), cols[None, :, :].expand(h, w, q)], dim=-1
        )  # (h, w, 2q)
        if months is None:
            when = torch.zeros(1, 1, 2 * q, device=device)
        else:
            t = months.shape[1]
            time = sincos(torch.arange(t, device=device), q)[None].expand(months.shape[0], t, q)
            when = torch.cat([time, month_sincos(months, q)], dim=-1)  # (B, T, 2q)
        fixed = torch.cat(
            [
                when[:, :, None, None, :].expand(-1, -1, h, w, -1),
                space[None, None].expand(when.shape[0], when.shape[1], -1, -1, -1),
            ],
            dim=-1,
        )
        return fixed + self.group_embedding.weight[group_id]
