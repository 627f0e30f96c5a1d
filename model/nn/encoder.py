"""ViT encoder over ragged token sets, with a registry of model sizes.

The sizes are OlmoEarth v1's (allenai/olmoearth_pretrain internal/utils.py: nano, tiny,
base and large with a 4-block decoder of the encoder's width and heads); the encoder
blocks of nano/tiny/base hold 793,344 / 5,338,752 / 85,056,000 parameters there and here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from terracube.model.nn.attention import SelfAttentionBlock
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelSize:
    """Width, depth and heads of the encoder; depth of the (shallow) decoder."""

    name: str
    dim: int
    depth: int
    heads: int
    decoder_depth: int
    mlp_ratio: float = 4.0


SIZES: dict[str, ModelSize] = {
    s.name: s
    for s in (
        ModelSize("nano", dim=128, depth=4, heads=8, decoder_depth=4),
        ModelSize("tiny", dim=192, depth=12, heads=3, decoder_depth=4),
        ModelSize("base", dim=768, depth=12, heads=12, decoder_depth=4),
        ModelSize("large", dim=1024, depth=24, heads=16, decoder_depth=4),
    )
}


def model_size(name: str) -> ModelSize:
    try:
        return SIZES[name]
    except KeyError:
        raise KeyError(f"unknown model size {name!r}; choose one of: {', '.join(SIZES)}") from None


def masked_mean(tokens: Tensor, present: Tensor) -> Tensor:
    """(B, D) mean over present tokens; zeros for a sample with none."""
    weights = present.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Encoder(nn.Module):
    """Pre-LN ViT: (B, N, D) padded tokens + (B, N) presence -> normalised (B, N, D)."""

    def __init__(self, size: ModelSize, drop_path: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(size.dim, size.heads, size.mlp_ratio, drop_path)
            for _ in range(size.depth)
        )
        self.norm = nn.LayerNorm(size.dim)

    def forward(self, tokens: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Return per-token outputs and the pooled embedding (mean over present tokens)."""
        x = tokens
        for block in self.blocks:
            x = block(x, present)
        x = self.norm(x)
        return x, masked_mean(x, present)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def init_weights(module: nn.Module) -> None:
    """The reference's init (after the official JAX ViT): xavier-uniform linears, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
