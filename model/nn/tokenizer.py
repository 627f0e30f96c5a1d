"""Per-band-group patch embedding with FlexiViT variable patch size.

Two ways to tokenize at a patch size p other than the base 8 (`PatchResize`):
- "image_bicubic" (default, the reference's): resize the image so each p x p patch
  becomes 8 x 8 (`F.interpolate`, bicubic, antialias, as allenai/olmoearth_pretrain
  nn/flexi_patch_embed.py does) and apply the base kernel. Neighbouring patches leak a
  little into each other through the bicubic support.
- "pi_kernel": PI-resize the kernel to p x p (FlexiViT, `flexi.py`): a token sees only its
  own pixels and costs p*p, not 64, multiply-adds per channel.
Weights start as PyTorch's Conv2d default (uniform +-1/sqrt(fan_in), bias included), as
the reference's Conv2d patch embedding does; the frozen target is a copy of them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from terracube.model.nn.flexi import pi_resize_kernel
from terracube.model.nn.groups import group_channels
from torch import Tensor, nn

BASE_PATCH_SIZE = 8

PatchResize = Literal["image_bicubic", "pi_kernel"]
PATCH_RESIZES: tuple[str, ...] = ("image_bicubic", "pi_kernel")


def masked_pixels(data: Tensor, valid: Tensor) -> Tensor:
    """(B*T, C, H, W) with invalid pixels zeroed, so nodata (even NaN) never leaks into a token."""
    b, t, c, h, w = data.shape
    return torch.where(valid[:, :, None], data, 0.0).reshape(b * t, c, h, w)


class FlexiPatchEmbed(nn.Module):
    """Conv patch embedding at the base size, applied at any patch size 1..8."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        base_patch_size: int = BASE_PATCH_SIZE,
        resize: PatchResize = "image_bicubic",
    ) -> None:
        super().__init__()
        if resize not in PATCH_RESIZES:
            raise ValueError(f"patch_resize={resize!r}; choose one of {PATCH_RESIZES}")
        self.base_patch_size = base_patch_size
        self.resize = resize
        k = base_patch_size
        self.weight = nn.Parameter(torch.empty(dim, in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(dim))
        bound = 1.0 / math.sqrt(in_channels * k * k)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, data: Tensor, valid: Tensor, patch_size: int) -> Tensor:
        """(B, T, C, H, W) pixels + (B, T, H, W) validity -> (B, T, H/p, W/p, dim) tokens."""
        return patch_embed(data, valid, self.weight, self.bias, patch_size, self.resize)


def patch_embed(
    data: Tensor,
    valid: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    patch_size: int,
    resize: PatchResize,
) -> Tensor:
    """(B, T, C, H, W) -> (B, T, H/p, W/p, out) with a base-size kernel (out, C, k, k)."""
    b, t = data.shape[:2]
    pixels = masked_pixels(data, valid)
    k = weight.shape[-1]
    if patch_size == k:
        out = F.conv2d(pixels, weight, bias, stride=k)
    elif resize == "pi_kernel":
        out = F.conv2d(pixels, pi_resize_kernel(weight, patch_size), bias, stride=patch_size)
    else:
        h, w = pixels.shape[-2:]
        size = (h // patch_size * k, w // patch_size * k)
        resized = F.interpolate(pixels, size=size, mode="bicubic", antialias=True)
        out = F.conv2d(resized, weight, bias, stride=k)
    return out.reshape(b, t, *out.shape[1:]).permute(0, 1, 3, 4, 2)


class Tokenizer(nn.Module):
    """One patch embedding per band group in `groups`."""

    def __init__(
        self,
        dim: int,
        groups: tuple[str, ...],
        base_patch_size: int = BASE_PATCH_SIZE,
        resize: PatchResize = "image_bicubic",
    ) -> None:
        super().__init__()
        self.embed = nn.ModuleDict(
            {g: FlexiPatchEmbed(group_channels(g), dim, base_patch_size, resize) for g in groups}
        )

    def forward(self, group: str, data: Tensor, valid: Tensor, patch_size: int) -> Tensor:
        if group not in self.embed:
            raise KeyError(f"band group {group!r} is not encodable (decode-only or unknown)")
        return self.embed[group](data, valid, patch_size)
