"""Pre-LN transformer blocks on SDPA with key-padding masks for ragged token counts.

As in the reference (allenai/olmoearth_pretrain nn/attention.py): stochastic depth
(`DropPath`, per sample, on both residual branches) and cross-attention blocks whose
context is used as given (the decoder normalises and projects it once, before the blocks).
"""

from __future__ import annotations

import torch
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
        if x.device.type == "cpu" and front_packed(key_valid):
            out = per_sample_attention(q, k, v, key_valid.sum(1).tolist(), context is x)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(key_valid))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def front_packed(valid: Tensor) -> bool:
    """Whether each row's True entries come first (as `pack` lays tokens out)."""
    counts = valid.sum(1)
    return torch.equal(valid, torch.arange(valid.shape[1])[None, :] < counts[:, None])


def per_sample_attention(
    q: Tensor, k: Tensor, v: Tensor, key_lengths: list[int], self_attention: bool
) -> Tensor:
    """SDPA sample by sample over each sample's own keys (and, in self-attention, its own
    queries), zeros in the padding rows. On the CPU, where kernels run one after another
    anyway, this skips the padding's work: masked batched SDPA computes every padded
    key, and a batch's encoded token counts vary ~2.5x under modality-aware masking, so
    the largest sample sets everyone's cost (attention is ~75 % of a p=4 step here)."""
    n = q.shape[2]
    outs = []
    for i, nk in enumerate(key_lengths):
        nq = nk if self_attention else n
        if nk == 0:
            outs.append(q.new_zeros(1, *q.shape[1:]))
            continue
        o = F.scaled_dot_product_attention(
            q[i : i + 1, :, :nq], k[i : i + 1, :, :nk], v[i : i + 1, :, :nk]
        )
        outs.append(F.pad(o, (0, 0, 0, n - nq)))
    return torch.cat(outs)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random `rate` of the
    samples and scale the others by 1 / (1 - rate); the identity in eval."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path={rate}; it must lie in [0, 1)")
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * (torch.rand(shape, dtype=x.dtype, device=x.device) < keep).to(x.dtype) / keep


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SelfAttentionBlock(nn.Module):
    """Pre-LN ViT block with stochastic depth."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_valid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttentionBlock(nn.Module):
    """Pre-LN block whose queries attend only to the context (taken as given)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor, context_valid: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), context_valid, context)
        return x + self.mlp(self.norm2(x))
