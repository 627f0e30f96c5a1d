"""Shallow decoder: mask-token queries cross-attend to the encoded (visible) tokens.

The reference's `Predictor` (allenai/olmoearth_pretrain nn/flexi_vit.py): the encoder
output is normalised and projected once; the decoder's own encodings (its own channel
embedding plus the shared time, month and space quarters) are added to the context and
to the queries, which start from one learned mask token (zero at init); cross-attention
blocks only (queries never attend to each other); a LayerNorm and a linear head map
each query to the target space. Nano at depth 4: 826,752 parameters plus 32 per band
group of channel embedding.
"""

from __future__ import annotations

import torch
from terracube.model.nn.attention import CrossAttentionBlock
from terracube.model.nn.encoder import ModelSize
from terracube.model.nn.encodings import ChannelEmbedding
from torch import Tensor, nn


class Decoder(nn.Module):
    """Predicts a target-space vector for each decoded token from its encodings alone
    plus what the encoder saw."""

    def __init__(self, size: ModelSize, target_dim: int, depth: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(size.dim))
        self.channel_embedding = ChannelEmbedding(size.dim)
        self.input_norm = nn.LayerNorm(size.dim)
        self.context_proj = nn.Linear(size.dim, size.dim)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(size.dim, size.heads, size.mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(size.dim)
        self.head = nn.Linear(size.dim, target_dim)

    def forward(
        self,
        query_fixed: Tensor,
        query_groups: Tensor,
        context: Tensor,
        context_fixed: Tensor,
        context_groups: Tensor,
        context_present: Tensor,
    ) -> Tensor:
        """Queries: (B, M, D) fixed encodings and (B, M) group ids of the decoded tokens;
        context: (B, N, D) encoder outputs with their fixed encodings, group ids and
        presence. Returns (B, M, target_dim)."""
        x = self.mask_token + query_fixed + self.channel_embedding(query_groups)
        context = (
            self.context_proj(self.input_norm(context))
            + context_fixed
            + self.channel_embedding(context_groups)
        )
        for block in self.blocks:
            x = block(x, context, context_present)
        return self.head(self.norm(x))
