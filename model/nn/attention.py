"""Pre-LN transformer blocks on SDPA with key-padding masks for ragged token counts."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def attention_mask(key_valid: Tensor) -> Tensor:
    """(B, 1, 1, N) bool mask for SDPA (True = attend).

    A row with no valid key (a sample with nothing to attend to) attends to all of
    them instead of producing NaN; callers ignore those outputs.
    """
    key_valid = key_valid | ~key_valid.any(dim=1, keepdim=True)
    return key_valid[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_valid: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        m = context.shape[1]
        q = self.q(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).reshape(b, m, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(key_valid))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SelfAttentionBlock(nn.Module):
    """Pre-LN ViT block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), key_valid)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Pre-LN block whose queries attend only to a (normalised) context."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor, context_valid: Tensor) -> Tensor:
        x = x + self.attn(self.norm_q(x), context_valid, self.norm_context(context))
        return x + self.mlp(self.norm2(x))
