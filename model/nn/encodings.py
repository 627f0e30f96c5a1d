"""Token encodings: what, when and where each token is, laid out as OlmoEarth v1 does.

The `dim` channels are four quarters: [channel | time index | month | space].
- channel: a learned embedding per band group (the reference's modality x band set),
  initialised to zero, in the first quarter only. The encoder and the decoder each own
  one (`ChannelEmbedding`); the other three quarters are fixed and shared.
- time index: sin-cos of the timestep index 0..T-1.
- month: one cyclic frequency (period 12 months), sin in the first half of the quarter,
  cos in the second, so December sits next to January.
- space: 2-D sin-cos of the token's ground position, columns in the first half and rows
  in the second; a position is the token index times patch_size * gsd / 10 m, so one
  place keeps its encoding whatever the patch size or gsd.
Static groups (maps) get zeros in the time and month quarters.

The 1-D sin-cos follows the reference's frequencies exactly, including their spacing:
frequency k of a d-wide encoding is 10000^(-k / (2 d)), k < d/2 (allenai/
olmoearth_pretrain nn/encodings.py, `get_1d_sincos_pos_encoding`), so the slowest
frequency of a 32-wide quarter is about 10000^-0.23, not 10000^-1.
"""

from __future__ import annotations

import math

import torch
from terracube.catalog.bands import BASE_RESOLUTION_M
from terracube.model.nn.groups import all_groups
from torch import Tensor, nn


def sincos(positions: Tensor, dim: int) -> Tensor:
    """(..., dim) sin-cos features of real-valued positions (...), reference frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos dim must be even, got {dim}")
    k = torch.arange(dim // 2, device=positions.device, dtype=torch.float32)
    freqs = 1.0 / 10_000.0 ** (k / dim / 2.0)
    angles = positions.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def month_sincos(months: Tensor, dim: int) -> Tensor:
    """(..., dim) cyclic features of months 0..11: one frequency, sin half then cos half."""
    half = dim // 2
    angles = (2 * math.pi / 12) * months.float()[..., None].expand(*months.shape, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def ground_positions(n: int, patch_size: int, gsd: float, device: torch.device) -> Tensor:
    """Token offsets 0, 1, ... times the token's ground size in base (10 m) pixels."""
    spacing = patch_size * gsd / BASE_RESOLUTION_M
    return torch.arange(n, device=device, dtype=torch.float32) * spacing


def fixed_encodings(
    dim: int,
    months: Tensor | None,
    grid: tuple[int, int],
    patch_size: int,
    gsd: float,
    device: torch.device,
) -> Tensor:
    """(B or 1, T, h, w, dim) time, month and space quarters; the channel quarter is zero.
    `months` (B, T), or None for a static group."""
    if dim % 8:
        raise ValueError(f"encoding dim must be a multiple of 8, got {dim}")
    q = dim // 4
    h, w = grid
    cols = sincos(ground_positions(w, patch_size, gsd, device), q // 2)  # (w, q/2)
    rows = sincos(ground_positions(h, patch_size, gsd, device), q // 2)  # (h, q/2)
    space = torch.cat(
        [cols[None, :, :].expand(h, w, q // 2), rows[:, None, :].expand(h, w, q // 2)], dim=-1
    )  # (h, w, q)
    if months is None:
        when = torch.zeros(1, 1, 2 * q, device=device)
    else:
        t = months.shape[1]
        time = sincos(torch.arange(t, device=device), q)[None].expand(months.shape[0], t, q)
        when = torch.cat([time, month_sincos(months, q)], dim=-1)  # (B, T, 2q)
    channel = torch.zeros(*when.shape[:2], h, w, q, device=device)
    return torch.cat(
        [
            channel,
            when[:, :, None, None, :].expand(-1, -1, h, w, -1),
            space[None, None].expand(when.shape[0], when.shape[1], -1, -1, -1),
        ],
        dim=-1,
    )


class ChannelEmbedding(nn.Module):
    """Learned per-band-group vectors in the first quarter of `dim`, zero at init."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.zeros(len(all_groups()), dim // 4))

    def forward(self, group_ids: Tensor) -> Tensor:
        """(...) group ids -> (..., dim), zero outside the first quarter."""
        quarter = self.weight[group_ids]
        return torch.nn.functional.pad(quarter, (0, self.dim - quarter.shape[-1]))
