"""Modality-aware masking, run on CPU in DataLoader workers.

Per sample and view: pick 2..all present encodable groups to encode and 1..all
present groups to decode (maps are decode-only by the registry's `encodable`).
A group both encoded and decoded has its valid tokens split 50/50 (the encoder
gets the odd one: ceil); an encode-only group is fully encoded and a decode-only
choice fully decoded. Invalid tokens are never encoded nor decoded. A sample with
no encodable group present gets no tokens at all (nothing to predict from).

Vectorised over the batch and the groups, seeded from a torch.Generator: one sort per
view splits every group's tokens (this runs once per batch in every worker); the
batch's flattened validity is computed once and shared by its views.
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


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank (0 = smallest) of each entry along the last dim: one sort and a scatter."""
    order = np.argsort(scores, axis=-1)
    ranks = np.empty_like(order)
    positions = np.broadcast_to(np.arange(scores.shape[-1]), order.shape)
    np.put_along_axis(ranks, order, positions, axis=-1)
    return ranks


def _choose_subset(candidates: np.ndarray, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """(B, G) bool: per row a uniformly random subset of the candidates whose size is
    uniform in [min(minimum, n), n] for n candidates in that row."""
    b, g = candidates.shape
    n = candidates.sum(axis=1)
    low = np.minimum(n, minimum)
    k = low + np.minimum((rng.random(b) * (n - low + 1)).astype(np.int64), n - low)
    scores = np.where(candidates, rng.random((b, g)), 2.0)
    return (_ranks(scores) < k[:, None]) & candidates


def _split_tokens(
    valid: np.ndarray, segments: np.ndarray, starts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split each row's valid tokens of every group randomly: ceil(n/2) encoded, floor(n/2)
    decoded per group. `valid` is (B, N) over all groups side by side; `segments` (N,) the
    group of each column, `starts` (G,) each group's first column. Scores of group i lie in
    [3i, 3i + 2] (2 = invalid), so one sorted row holds the groups block by block, and a
    group's encoded tokens are those scoring at most its ceil(n/2)-th smallest score (a
    sort of values and one gather: cheaper than ranking every token). float64 scores: 53
    random bits practically never tie, so the split does not depend on how a sort
    implementation orders ties."""
    b, n = valid.shape
    scores = np.where(valid, rng.random((b, n)), 2.0) + 3.0 * segments
    counts = np.add.reduceat(valid, starts, axis=1, dtype=np.int64)
    n_encode = counts - counts // 2  # (B, G)
    ordered = np.sort(scores, axis=1)
    pick = starts[None, :] + np.maximum(n_encode - 1, 0)
    threshold = np.where(n_encode > 0, np.take_along_axis(ordered, pick, axis=1), -np.inf)
    encode = valid & (scores <= threshold[:, segments])
    return encode, valid & ~encode


@dataclass(frozen=True)
class _FlatValidity:
    """A batch's token validity laid out for masking: computed once, shared by its views."""

    groups: list[str]
    shapes: list[torch.Size]
    valid: np.ndarray
    """bool (B, N): every group's tokens side by side."""
    segments: np.ndarray
    starts: np.ndarray
    sizes: list[int]
    present: np.ndarray
    """bool (B, G): the group has a valid token in that sample."""
    encodable: np.ndarray

    @classmethod
    def of(cls, token_valid: dict[str, Tensor]) -> _FlatValidity:
        groups = list(token_valid)
        if not groups:
            raise ValueError("token_valid is empty; masking needs at least one band group")
        flat = [token_valid[g].reshape(token_valid[g].shape[0], -1).cpu().numpy() for g in groups]
        sizes = [v.shape[1] for v in flat]
        return cls(
            groups=groups,
            shapes=[token_valid[g].shape for g in groups],
            valid=np.concatenate(flat, axis=1),
            segments=np.repeat(np.arange(len(groups)), sizes),
            starts=np.cumsum([0, *sizes[:-1]]),
            sizes=sizes,
            present=np.stack([v.any(axis=1) for v in flat], axis=1),
            encodable=np.array([g in encodable_groups() for g in groups]),
        )


def sample_view_masks(token_valid: dict[str, Tensor], generator: torch.Generator) -> ViewMasks:
    """Masks for one view from per-group token validity (B, T, h, w) (see module doc).

    Runs in numpy (a few dozen small operations, each ~5x cheaper than torch's per-op
    cost), seeded by one draw from `generator`, so the same generator state gives the
    same masks."""
    return _view_masks(_FlatValidity.of(token_valid), generator)


def _view_masks(flat: _FlatValidity, generator: torch.Generator) -> ViewMasks:
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    valid, segments = flat.valid, flat.segments
    encoded = _choose_subset(flat.present & flat.encodable, MIN_ENCODED_GROUPS, rng)
    has_context = encoded.any(axis=1, keepdims=True)
    decoded = _choose_subset(flat.present & has_context, 1, rng)
    split_enc, split_dec = _split_tokens(valid, segments, flat.starts, rng)
    enc_cols, dec_cols = encoded[:, segments], decoded[:, segments]
    both = enc_cols & dec_cols
    enc = np.where(both, split_enc, valid & enc_cols)
    dec = np.where(both, split_dec, valid & dec_cols)
    encode: dict[str, Tensor] = {}
    decode: dict[str, Tensor] = {}
    for g, a, size, shape in zip(
        flat.groups, flat.starts.tolist(), flat.sizes, flat.shapes, strict=True
    ):
        encode[g] = torch.from_numpy(np.ascontiguousarray(enc[:, a : a + size])).reshape(shape)
        decode[g] = torch.from_numpy(np.ascontiguousarray(dec[:, a : a + size])).reshape(shape)
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
    flat = _FlatValidity.of({g: batch.token_valid(g) for g in batch.groups})
    return [_view_masks(flat, generator) for _ in range(num_views)]
