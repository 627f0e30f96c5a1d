"""Modality-aware masking, run on CPU in DataLoader workers.

Per sample and view: pick 2..all present encodable groups to encode and 1..all
present groups to decode (maps are decode-only by the registry's `encodable`).
A group both encoded and decoded has its valid tokens split 50/50 (the encoder
gets the odd one: ceil); an encode-only group is fully encoded and a decode-only
choice fully decoded. Invalid tokens are never encoded nor decoded. A sample with
no encodable group present gets no tokens at all (nothing to predict from).

Vectorised over the batch with a seeded torch.Generator; the only Python loop is
over band groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from terracube.model.groups import encodable_groups
from torch import Tensor

MIN_ENCODED_GROUPS = 2


@dataclass
class ViewMasks:
    """One masked view: per group bool (B, T, H/p, W/p); `encode` and `decode` are disjoint."""

    encode: dict[str, Tensor]
    decode: dict[str, Tensor]


def _random_ranks(scores: Tensor) -> Tensor:
    """Rank (0 = smallest) of each entry along the last dim."""
    return scores.argsort(dim=-1).argsort(dim=-1)


def _choose_subset(candidates: Tensor, minimum: int, generator: torch.Generator) -> Tensor:
    """(B, G) bool: per row a uniformly random subset of the candidates whose size is
    uniform in [min(minimum, n), n] for n candidates in that row."""
    b, g = candidates.shape
    n = candidates.sum(dim=1)
    low = n.clamp(max=minimum)
    u = torch.rand(b, generator=generator)
    k = low + (u * (n - low + 1).float()).long().clamp(max=(n - low).clamp(min=0))
    scores = torch.rand(b, g, generator=generator).masked_fill(~candidates, 2.0)
    return (_random_ranks(scores) < k[:, None]) & candidates


def _split_tokens(valid: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split each row's valid tokens randomly: ceil(n/2) encoded, floor(n/2) decoded."""
    b, n = valid.shape
    scores = torch.rand(b, n, generator=generator).masked_fill(~valid, 2.0)
    ranks = _random_ranks(scores)
    n_valid = valid.sum(dim=1, keepdim=True)
    n_encode = n_valid - n_valid // 2
    encode = valid & (ranks < n_encode)
    return encode, valid & ~encode


def sample_view_masks(token_valid: dict[str, Tensor], generator: torch.Generator) -> ViewMasks:
    """Masks for one view from per-group token validity (B, T, h, w) (see module doc)."""
    groups = list(token_valid)
    if not groups:
        raise ValueError("token_valid is empty; masking needs at least one band group")
    flat = [token_valid[g].reshape(token_valid[g].shape[0], -1).cpu() for g in groups]
    present = torch.stack([v.any(dim=1) for v in flat], dim=1)  # (B, G)
    encodable = torch.tensor([g in encodable_groups() for g in groups])
    encoded = _choose_subset(present & encodable, MIN_ENCODED_GROUPS, generator)
    has_context = encoded.any(dim=1, keepdim=True)
    decoded = _choose_subset(present & has_context, 1, generator)
    encode: dict[str, Tensor] = {}
    decode: dict[str, Tensor] = {}
    for i, g in enumerate(groups):
        valid = flat[i]
        enc_g, dec_g = encoded[:, i : i + 1], decoded[:, i : i + 1]
        split_enc, split_dec = _split_tokens(valid, generator)
        both = enc_g & dec_g
        enc = torch.where(both, split_enc, valid & enc_g)
        dec = torch.where(both, split_dec, valid & dec_g)
        shape = token_valid[g].shape
        encode[g], decode[g] = enc.reshape(shape), dec.reshape(shape)
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
