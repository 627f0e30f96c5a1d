"""Per-band-group patch embedding with FlexiViT variable patch size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from terracube.model.nn.flexi import pi_resize_kernel
from terracube.model.nn.groups import encodable_groups, group_channels
from torch import Tensor, nn

BASE_PATCH_SIZE = 8


def masked_pixels(data: Tensor, valid: Tensor) -> Tensor:
    """(B*T, C, H, W) with invalid pixels zeroed, so nodata (even NaN) never leaks into a token."""
    b, t, c, h, w = data.shape
    return torch.where(valid[:, :, None], data, 0.0).reshape(b * t, c, h, w)


class FlexiPatchEmbed(nn.Module):
    """Conv patch embedding whose base 8 x 8 kernel is PI-resized to the batch's patch size."""

    def __init__(self, in_channels: int, dim: int, base_patch_size: int = BASE_PATCH_SIZE) -> None:
        super().__init__()
        self.base_patch_size = base_patch_size
        k = base_patch_size
        self.weight = nn.Parameter(torch.empty(dim, in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.weight, std=1.0 / math.sqrt(in_channels * k * k))

    def forward(self, data: Tensor, valid: Tensor, patch_size: int) -> Tensor:
        """(B, T, C, H, W) pixels + (B, T, H, W) validity -> (B, T, H/p, W/p, dim) tokens."""
        b, t = data.shape[:2]
        kernel = pi_resize_kernel(self.weight, patch_size)
        out = F.conv2d(masked_pixels(data, valid), kernel, self.bias, stride=patch_size)
        return out.reshape(b, t, *out.shape[1:]).permute(0, 1, 3, 4, 2)


class Tokenizer(nn.Module):
    """One patch embedding per encodable band group of the registry."""

    def __init__(self, dim: int, base_patch_size: int = BASE_PATCH_SIZE) -> None:
        super().__init__()
        self.embed = nn.ModuleDict(
            {
                g: FlexiPatchEmbed(group_channels(g), dim, base_patch_size)
                for g in encodable_groups()
            }
        )

    def forward(self, group: str, data: Tensor, valid: Tensor, patch_size: int) -> Tensor:
        if group not in self.embed:
            raise KeyError(f"band group {group!r} is not encodable (decode-only or unknown)")
        return self.embed[group](data, valid, patch_size)
