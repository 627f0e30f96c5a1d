"""Latent MIM Lite targets: a frozen linear patch embedding per band group.

Two constructions (`TargetKind`):
- "patch_embed_copy" (default, OlmoEarth v1): a copy of the online patch embeddings as
  they were at initialisation, bias included, for every band group; maps (never encoded)
  get patch embeddings initialised the same way. The reference's target encoder is a
  deep copy of the online encoder with EMA decay 1.0 and token exit 0 for every
  modality, so its targets are exactly these initial patch embeddings.
- "random_projection": an independent Gaussian projection (std 1/sqrt(fan_in)), no
  bias, seeded by `target_seed`; its width may differ from the encoder's.

The weights are buffers, not parameters: `model.parameters()` (what an optimizer sees)
never contains them, they never get a gradient, and they still travel with `.to(device)`
and the state dict, so a resumed run predicts the same targets.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from terracube.model.nn.groups import all_groups, group_channels
from terracube.model.nn.losses import float32_region
from terracube.model.nn.tokenizer import FlexiPatchEmbed, PatchResize, Tokenizer, patch_embed
from torch import Tensor, nn

TargetKind = Literal["patch_embed_copy", "random_projection", "ema_encoder", "pixels"]
TARGET_KINDS: tuple[str, ...] = ("patch_embed_copy", "random_projection", "ema_encoder", "pixels")
"""The last two are ablation arms, built in objectives.py."""


class FrozenTarget(nn.Module):
    """Per band group: a frozen (out, C, k, k) kernel and optional bias, as buffers."""

    def __init__(
        self, kernels: dict[str, tuple[Tensor, Tensor | None]], resize: PatchResize
    ) -> None:
        super().__init__()
        self.resize = resize
        self.groups = tuple(kernels)
        self.target_dim = next(iter(kernels.values()))[0].shape[0]
        for g, (weight, bias) in kernels.items():
            self.register_buffer(f"weight_{g}", weight.detach().clone(), persistent=True)
            if bias is not None:
                self.register_buffer(f"bias_{g}", bias.detach().clone(), persistent=True)

    @classmethod
    def copy_of(cls, tokenizer: Tokenizer, resize: PatchResize) -> FrozenTarget:
        """Targets from the tokenizer's current (initial) weights, one per group it holds."""
        kernels: dict[str, tuple[Tensor, Tensor | None]] = {}
        for g, embed in tokenizer.embed.items():
            assert isinstance(embed, FlexiPatchEmbed)
            kernels[g] = (embed.weight, embed.bias)
        return cls(kernels, resize)

    @classmethod
    def random(
        cls, target_dim: int, seed: int, base_patch_size: int, resize: PatchResize
    ) -> FrozenTarget:
        generator = torch.Generator().manual_seed(seed)
        k = base_patch_size
        kernels: dict[str, tuple[Tensor, Tensor | None]] = {}
        for g in all_groups():
            c = group_channels(g)
            w = torch.randn(target_dim, c, k, k, generator=generator) / math.sqrt(c * k * k)
            kernels[g] = (w, None)
        return cls(kernels, resize)

    def weight(self, group: str) -> Tensor:
        weight: Tensor = getattr(self, f"weight_{group}")
        return weight

    def bias(self, group: str) -> Tensor | None:
        bias: Tensor | None = getattr(self, f"bias_{group}", None)
        return bias

    @torch.no_grad()
    def forward(self, group: str, data: Tensor, valid: Tensor, patch_size: int) -> Tensor:
        """(B, T, C, H, W) -> (B, T, H/p, W/p, target_dim) float32 targets, no autograd."""
        with float32_region(data.device.type):
            bias = self.bias(group)
            return patch_embed(
                data.float(),
                valid,
                self.weight(group).float(),
                None if bias is None else bias.float(),
                patch_size,
                self.resize,
            )
