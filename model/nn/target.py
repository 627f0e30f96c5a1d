"""Latent MIM Lite targets: a frozen, random, per-band-group linear patch projection.

The weights are buffers, not parameters: `model.parameters()` (what an optimizer
sees) never contains them, they never get a gradient, and they still travel with
`.to(device)` and the state dict so a resumed run predicts the same targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from terracube.model.nn.flexi import pi_resize_kernel
from terracube.model.nn.groups import all_groups, group_channels
from terracube.model.nn.tokenizer import BASE_PATCH_SIZE, masked_pixels
from torch import Tensor, nn


class FrozenTargetProjection(nn.Module):
    """C*p*p -> target_dim linear map per band group, PI-resized like the tokenizer."""

    def __init__(
        self, target_dim: int, seed: int = 0, base_patch_size: int = BASE_PATCH_SIZE
    ) -> None:
        super().__init__()
        self.target_dim = target_dim
        generator = torch.Generator().manual_seed(seed)
        k = base_patch_size
        for g in all_groups():
            c = group_channels(g)
            w = torch.randn(target_dim, c, k, k, generator=generator) / math.sqrt(c * k * k)
            self.register_buffer(self._key(g), w, persistent=True)

    @staticmethod
    def _key(group: str) -> str:
        return f"weight_{group}"

    def weight(self, group: str) -> Tensor:
        return getattr(self, self._key(group))

    @torch.no_grad()
    def forward(self, group: str, data: Tensor, valid: Tensor, patch_size: int) -> Tensor:
        """(B, T, C, H, W) -> (B, T, H/p, W/p, target_dim) float32 targets, no autograd."""
        b, t = data.shape[:2]
        with torch.autocast(data.device.type, enabled=False):
            kernel = pi_resize_kernel(self.weight(group).float(), patch_size)
            out = F.conv2d(masked_pixels(data.float(), valid), kernel, stride=patch_size)
        return out.reshape(b, t, *out.shape[1:]).permute(0, 1, 3, 4, 2)
