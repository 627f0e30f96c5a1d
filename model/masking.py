"""Modality-aware masking, run on CPU in DataLoader workers.

Per sample and view: pick 2..all present encodable groups to encode and 1..all
present groups to decode (maps are decode-only by the registry's `encodable`).
A group both encoded and decoded has its valid tokens split 50/50 (the encoder
gets the odd one: ceil); an encode-only group is fully encoded and a decode-only
choice fully decoded. Invalid tokens are never encoded nor decoded. A sample with
no encodable group present gets no tokens at all (nothing to predict from).

Vectorised over the batch and the groups with a seeded torch.Generator: one sort per
view splits every group's tokens (this runs once per batch in every worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from terracube.model.groups import encodable_groups
from torch import Tensor

MIN_ENCODED_GROUPS = 2


@dataclass
class ViewMasks:
    """One masked view: per group bool (B, T, H/p, W/p); `encode` and `decode` are disjoint."""

    encode: dict[str, Tensor]
    decode: dict[str, Tensor]


def _ranks(scores: Tensor) -> Tensor:
    """Rank (0 = smallest) of each entry along the last dim of a CPU tensor: one numpy sort
    (about 3x torch's on rows of a few thousand) and a scatter."""
    values = scores.numpy()
    order = np.argsort(values, axis=-1)
    ranks = np.empty_like(order)
    positions = np.broadcast_to(np.arange(values.shape[-1]), order.shape)
    np.put_along_axis(ranks, order, positions, axis=-1)
    return torch.from_numpy(ranks)


def _choose_subset(candidates: Tensor, minimum: int, generator: torch.Generator) -> Tensor:
    """(B, G) bool: per row a uniformly random subset of the candidates whose size is
    uniform in [min(minimum, n), n] for n candidates in that row."""
    b, g = candidates.shape
    n = candidates.sum(dim=1)
    low = n.clamp(max=minimum)
    u = torch.rand(b, generator=generator)
    k = low + (u * (n - low + 1).float()).long().clamp(max=(n - low).clamp(min=0))
    scores = torch.rand(b, g, generator=generator).masked_fill(~candidates, 2.0)
    return (_ranks(scores) < k[:, None]) & candidates


def _split_tokens(
    valid: Tensor, segments: Tensor, starts: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Split each row's valid tokens of every group randomly: ceil(n/2) encoded, floor(n/2)
    decoded per group. `valid` is (B, N) over all groups side by side; `segments` (N,) the
    group of each column, `starts` (G,) each group's first column. Scores of group i lie in
    [3i, 3i + 2] (2 = invalid), so one sort of the row orders it group by group and a
    column's rank within its group is its row rank minus its group's start."""
    b, n = valid.shape
    # float64: float32's 24 bits tie often among thousands of tokens, and the order of ties
    # may differ between sort implementations (CPU dispatch); 53 bits practically never tie
    scores = torch.rand(b, n, generator=generator, dtype=torch.float64).masked_fill(~valid, 2.0)
    ranks = _ranks(scores + 3.0 * segments) - starts[segments]
    counts = torch.zeros(b, len(starts), dtype=torch.int64).index_add_(1, segments, valid.long())
    n_encode = (counts - counts // 2)[:, segments]
    encode = valid & (ranks < n_encode)
    return encode, valid & ~encode


def sample_view_masks(token_valid: dict[str, Tensor], generator: torch.Generator) -> ViewMasks:
    """Masks for one view from per-group token validity (B, T, h, w) (see module doc)."""
    groups = list(token_valid)
    if not groups:
        raise ValueError("token_valid is empty; masking needs at least one band group")
    flat = [token_valid[g].reshape(token_valid[g].shape[0], -1).cpu() for g in groups]
    sizes = [v.shape[1] for v in flat]
    valid = torch.cat(flat, dim=1)  # (B, N): every group's tokens side by side
    segments = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(sizes))
    starts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    present = torch.stack([v.any(dim=1) for v in flat], dim=1)  # (B, G)
    encodable = torch.tensor([g in encodable_groups() for g in groups])
    encoded = _choose_subset(present & encodable, MIN_ENCODED_GROUPS, generator)
    has_context = encoded.any(dim=1, keepdim=True)
    decoded = _choose_subset(present & has_context, 1, generator)
    split_enc, split_dec = _split_tokens(valid, segments, starts, generator)
    enc_cols, dec_cols = encoded[:, segments], decoded[:, segments]
    both = enc_cols & dec_cols
    enc = torch.where(both, split_enc, valid & enc_cols)
    dec = torch.where(both, split_dec, valid & dec_cols)
    encode: dict[str, Tensor] = {}
    decode: dict[str, Tensor] = {}
    for g, a, size in zip(groups, starts.tolist(), sizes, strict=True):
        shape = token_valid[g].shape
        encode[g] = enc[:, a : a + size].reshape(shape)
        decode[g] = dec[:, a : a + size].reshape(shape)
    return ViewMasks(encode=encode, decode=decode)


class TokenValidity(Protocol):
    """What masking reads of a batch: `Batch` and the loader's `RawBatch` both provide it."""

    @property
    def groups(self) -> tuple[str, ...]: ...

    def token_valid(self, group: str) -> Tensor: ...


def mask_batch(
    batch: TokenValidity, generator: torch.Generator, num_views: int = 2
) -> list[ViewMasks]:
    """`num_views` independent masked views of a batch (two for the contrastive loss)."""
    if num_views < 1:
        raise ValueError(f"num_views={num_views}; need at least one view")
    token_valid = {g: batch.token_valid(g) for g in batch.groups}
    return [sample_view_masks(token_valid, generator) for _ in range(num_views)]
