"""Shallow decoder: mask-token queries cross-attend to the encoded (visible) tokens."""

from __future__ import annotations

import torch
from terracube.model.nn.attention import CrossAttentionBlock
from terracube.model.nn.encoder import ModelSize
from torch import Tensor, nn


class Decoder(nn.Module):
    """Predicts a target-space vector for each decoded token from its encodings alone
    plus what the encoder saw; one linear head maps into the target space."""

    def __init__(self, size: ModelSize, target_dim: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(size.dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.context_proj = nn.Linear(size.dim, size.dim)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(size.dim, size.heads, size.mlp_ratio)
            for _ in range(size.decoder_depth)
        )
        self.norm = nn.LayerNorm(size.dim)
        self.head = nn.Linear(size.dim, target_dim)

    def forward(self, query_encodings: Tensor, context: Tensor, context_present: Tensor) -> Tensor:
        """(B, M, D) encodings of decoded tokens, (B, N, D) encoder outputs -> (B, M, target_dim)."""
        x = self.mask_token + query_encodings
        context = self.context_proj(context)
        for block in self.blocks:
            x = block(x, context, context_present)
        return self.head(self.norm(x))
