"""Modality-aware masking, run on CPU in DataLoader workers, behind a strategy registry.

`MASKING_STRATEGIES` (choose with `MaskingParams.strategy`):
- "modality_cross_random" (default): OlmoEarth v1's masking (`masking_cross_kernel`):
  every token is first drawn encoded / decoded / neither at encode_ratio / decode_ratio
  within its modality; band groups chosen for encoding keep their encoded tokens, groups
  chosen only for decoding keep just their decoded ones; at least 2 encoded groups; maps
  (the registry's encodable=False) are decode-only. With every token of the five
  modalities valid it encodes 0.35 x 3840 / 3968 = 33.9 % and decodes 35.5 % of the
  tokens at 64 px, p=8, T=12 (0.35 * (1 - f) and 0.35 + 0.15 f, f the maps' share).
- "group_split": terracube's first masking (`masking_kernel`): 2..all present encodable
  groups encoded and 1..all present groups decoded; a group on both sides has its valid
  tokens split 50/50, one side only goes wholly to that side (50.8 % encoded, 35.7 %
  decoded on the same batch).
- "uniform_random": the ablation arm of plain MAE-style masking: every valid token on its
  own is encoded with probability encode_ratio, else decoded with probability
  decode_ratio / (1 - encode_ratio), with no regard to band groups or modalities (maps:
  decoded with probability decode_ratio, never encoded).
Invalid tokens are never encoded nor decoded, under any strategy. A sample with no
valid encodable token gets no tokens at all (nothing to predict from).

Either way one compiled call masks every view of a batch, from one draw of a
torch.Generator, so the same generator state gives the same masks. Each view's masks
are zero-copy slices of one bool array, and the view carries its per-sample encoded and
decoded counts (computed here, on the host), which size the model's packed tensors
without reading anything back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from typing import Literal, Protocol

import numpy as np
import torch
from terracube.model.nn.groups import encodable_groups, modality_index
from terracube.model.train.masking_cross_kernel import cross_random_views
from terracube.model.train.masking_kernel import mask_views
from torch import Tensor

MIN_ENCODED_GROUPS = 2

MaskingStrategy = Literal["modality_cross_random", "group_split", "uniform_random"]
MASKING_STRATEGIES: tuple[str, ...] = ("modality_cross_random", "group_split", "uniform_random")


@dataclass(frozen=True)
class MaskingParams:
    """How views are masked; the YAML `masking:` section reads its defaults from here."""

    strategy: MaskingStrategy = "modality_cross_random"
    encode_ratio: float = 0.5
    """modality_cross_random: the share of a modality's tokens first drawn encoded."""
    decode_ratio: float = 0.5
    """modality_cross_random: the share first drawn decoded."""
    min_encoded_groups: int = MIN_ENCODED_GROUPS

    def __post_init__(self) -> None:
        if self.strategy not in MASKING_STRATEGIES:
            raise ValueError(
                f"masking strategy {self.strategy!r}; choose one of {', '.join(MASKING_STRATEGIES)}"
            )
        if not (0 < self.encode_ratio < 1 and 0 < self.decode_ratio < 1):
            raise ValueError(
                f"encode_ratio={self.encode_ratio}, decode_ratio={self.decode_ratio}: "
                "each must lie strictly between 0 and 1"
            )
        if self.encode_ratio + self.decode_ratio > 1:
            raise ValueError(
                f"encode_ratio + decode_ratio = {self.encode_ratio + self.decode_ratio} > 1; "
                "a token cannot be both"
            )
        if self.min_encoded_groups < 1:
            raise ValueError(f"min_encoded_groups={self.min_encoded_groups}; it must be >= 1")


_Layout = tuple[tuple[str, int, int, tuple[int, ...]], ...]
"""Per group: (name, first token, tokens, mask shape) in a view's flat (2, tokens) masks."""


class ViewMasks:
    """One masked view: per group bool (B, T, H/p, W/p); `encode` and `decode` are disjoint.

    Masks made by `mask_batch` are views of one (2, tokens) tensor, `flat`: the dicts are
    built on first use (a worker never uses them), the view travels as that one tensor,
    and `to` moves it to a device in one copy."""

    __slots__ = ("_counts", "_decode", "_encode", "flat", "layout")

    def __init__(self, encode: dict[str, Tensor], decode: dict[str, Tensor]) -> None:
        self._encode: dict[str, Tensor] | None = encode
        self._decode: dict[str, Tensor] | None = decode
        self.flat: Tensor | None = None
        """(2, tokens): encode and decode of every group, when the dicts are views of it."""
        self.layout: _Layout = ()
        self._counts: Tensor | None = None
        """int64 (2, groups, B) on the host, groups in `encode`'s order."""

    @classmethod
    def of_flat(cls, flat: Tensor, layout: _Layout, counts: Tensor | None = None) -> ViewMasks:
        view = cls.__new__(cls)
        view._encode = view._decode = None
        view.flat, view.layout = flat, layout
        view._counts = counts
        return view

    @property
    def counts(self) -> dict[str, Tensor]:
        """group -> int64 (2, B) on the host: encoded and decoded tokens per sample. Made
        with the masks (on the host), so reading it never waits on a device."""
        groups = self._groups()
        if self._counts is None:
            some = next(iter({**self.encode, **self.decode}.values()))
            absent = torch.zeros(some.shape[0], dtype=torch.long, device=some.device)
            self._counts = torch.stack(
                [
                    torch.stack(
                        [side[g].flatten(1).sum(1) if g in side else absent for g in groups]
                    )
                    for side in (self.encode, self.decode)
                ]
            ).cpu()
        return {g: self._counts[:, i] for i, g in enumerate(groups)}

    def _groups(self) -> list[str]:
        if self.layout:
            return [g for g, *_ in self.layout]
        return list(dict.fromkeys([*self.encode, *self.decode]))

    def _split(self) -> None:
        assert self.flat is not None
        self._encode, self._decode = (
            {g: row[a : a + n].view(shape) for g, a, n, shape in self.layout} for row in self.flat
        )

    @property
    def encode(self) -> dict[str, Tensor]:
        if self._encode is None:
            self._split()
        assert self._encode is not None
        return self._encode

    @property
    def decode(self) -> dict[str, Tensor]:
        if self._decode is None:
            self._split()
        assert self._decode is not None
        return self._decode

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewMasks:
        """This view on `device`: one copy of `flat` when there is one."""
        self.counts  # noqa: B018 - counted on the host, before the masks leave it
        counts = self._counts
        if self.flat is not None:
            moved = self.flat.to(device, non_blocking=non_blocking)
            return ViewMasks.of_flat(moved, self.layout, counts)
        move = {g: m.to(device, non_blocking=non_blocking) for g, m in self.encode.items()}
        view = ViewMasks(
            move, {g: m.to(device, non_blocking=non_blocking) for g, m in self.decode.items()}
        )
        view._counts = counts
        return view

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """Views of one array travel as that array and the layout: one tensor, not two per
        group (a worker sends each batch's views to the training process)."""
        if self.flat is None:
            return (ViewMasks, (self.encode, self.decode))
        return (ViewMasks.of_flat, (self.flat, self.layout, self._counts))

    def __repr__(self) -> str:
        return f"ViewMasks(groups={[g for g, *_ in self.layout] or list(self.encode)})"


@cache
def _encodable(groups: tuple[str, ...]) -> np.ndarray:
    return np.array([g in encodable_groups() for g in groups])


@cache
def _modalities(groups: tuple[str, ...]) -> np.ndarray:
    return np.array([modality_index(g) for g in groups], dtype=np.int64)


def _masks(
    token_valid: dict[str, Tensor],
    generator: torch.Generator,
    views: int,
    out: Tensor | None = None,
    params: MaskingParams | None = None,
) -> list[ViewMasks]:
    """`views` masked views (see module doc). Spelled out with plain lists: this runs for
    every batch in every worker, and numpy's per-call cost exceeds the kernel's work.
    The views are tensors over `out`'s own storage, never over a numpy array of it: should
    torch move that storage (into shared memory, to send it), they follow it."""
    groups = tuple(token_valid)
    if not groups:
        raise ValueError("token_valid is empty; masking needs at least one band group")
    shapes = [token_valid[g].shape for g in groups]
    batch = shapes[0][0]
    flat = [token_valid[g].reshape(-1).cpu().numpy() for g in groups]
    lengths = [v.size for v in flat]
    starts = [0, *accumulate(lengths[:-1])]
    sizes = [n // batch if batch else 0 for n in lengths]
    shape = (views, 2, sum(lengths))
    if out is None:
        out = torch.empty(shape, dtype=torch.bool)
    elif out.shape != shape or out.dtype != torch.bool or not out.is_contiguous():
        raise ValueError(
            f"out is {out.dtype}{tuple(out.shape)}; the masks need a contiguous bool{shape}"
        )
    params = params or MaskingParams()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    valid = np.concatenate(flat)
    starts_array = np.array(starts, dtype=np.int64)
    sizes_array = np.array(sizes, dtype=np.int64)
    if params.strategy == "modality_cross_random":
        cross_random_views(
            valid,
            starts_array,
            sizes_array,
            _encodable(groups),
            _modalities(groups),
            batch,
            params.min_encoded_groups,
            params.encode_ratio,
            params.decode_ratio,
            seed,
            out.numpy(),
        )
    elif params.strategy == "uniform_random":
        _uniform_views(valid, starts_array, _encodable(groups), params, seed, out.numpy())
    else:
        mask_views(
            valid,
            starts_array,
            sizes_array,
            _encodable(groups),
            batch,
            params.min_encoded_groups,
            seed,
            out.numpy(),
        )
    layout = tuple(
        (g, a, n, tuple(shape))
        for g, a, n, shape in zip(groups, starts, lengths, shapes, strict=True)
    )
    counts = torch.stack(
        [out[:, :, a : a + n].reshape(views, 2, batch, -1).sum(-1) for _, a, n, _ in layout],
        dim=2,
    )  # (views, 2, groups, B)
    return [ViewMasks.of_flat(out[v], layout, counts[v]) for v in range(views)]


def _uniform_views(
    valid: np.ndarray,
    starts: np.ndarray,
    encodable: np.ndarray,
    params: MaskingParams,
    seed: int,
    out: np.ndarray,
) -> None:
    """out (views, 2, tokens) := independent per-token draws (see "uniform_random")."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(np.append(starts, valid.size))
    can_encode = np.repeat(encodable, lengths)
    e, d = params.encode_ratio, params.decode_ratio
    for view in range(out.shape[0]):
        u = rng.random(valid.size)
        encode = valid & can_encode & (u < e)
        decode = valid & np.where(can_encode, (u >= e) & (u < e + d), u < d)
        out[view, 0], out[view, 1] = encode, decode


def sample_view_masks(
    token_valid: dict[str, Tensor],
    generator: torch.Generator,
    params: MaskingParams | None = None,
) -> ViewMasks:
    """Masks for one view from per-group token validity (B, T, h, w) (see module doc)."""
    return _masks(token_valid, generator, 1, params=params)[0]


class TokenValidity(Protocol):
    """What masking reads of a batch: `Batch` and the loader's `RawBatch` both provide it."""

    @property
    def groups(self) -> tuple[str, ...]: ...

    def token_valid(self, group: str) -> Tensor: ...


def mask_batch(
    batch: TokenValidity,
    generator: torch.Generator,
    num_views: int = 2,
    out: Tensor | None = None,
    params: MaskingParams | None = None,
) -> list[ViewMasks]:
    """`num_views` independent masked views of a batch (two for the contrastive loss).
    With `out` (bool (num_views, 2, all groups' tokens)) the masks are views of it: the
    loader passes memory of the batch's shared slot."""
    if num_views < 1:
        raise ValueError(f"num_views={num_views}; need at least one view")
    token_valid = {g: batch.token_valid(g) for g in batch.groups}
    return _masks(token_valid, generator, num_views, out, params)
