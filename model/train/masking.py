"""Modality-aware masking, run on CPU in DataLoader workers.

Per sample and view: pick 2..all present encodable groups to encode and 1..all
present groups to decode (maps are decode-only by the registry's `encodable`).
A group both encoded and decoded has its valid tokens split 50/50 (the encoder
gets the odd one: ceil); an encode-only group is fully encoded and a decode-only
choice fully decoded. Invalid tokens are never encoded nor decoded. A sample with
no encodable group present gets no tokens at all (nothing to predict from).

The work runs compiled (`masking_kernel`): one call masks every view of a batch, from
one draw of a torch.Generator, so the same generator state gives the same masks. Each
view's masks are zero-copy slices of one bool array.
"""

from __future__ import annotations

from functools import cache
from itertools import accumulate
from typing import Protocol

import numpy as np
import torch
from terracube.model.nn.groups import encodable_groups
from terracube.model.train.masking_kernel import mask_views
from torch import Tensor

MIN_ENCODED_GROUPS = 2


_Layout = tuple[tuple[str, int, int, tuple[int, ...]], ...]
"""Per group: (name, first token, tokens, mask shape) in a view's flat (2, tokens) masks."""


class ViewMasks:
    """One masked view: per group bool (B, T, H/p, W/p); `encode` and `decode` are disjoint.

    Masks made by `mask_batch` are views of one (2, tokens) tensor, `flat`: the dicts are
    built on first use (a worker never uses them), the view travels as that one tensor,
    and `to` moves it to a device in one copy."""

    __slots__ = ("_decode", "_encode", "flat", "layout")

    def __init__(self, encode: dict[str, Tensor], decode: dict[str, Tensor]) -> None:
        self._encode: dict[str, Tensor] | None = encode
        self._decode: dict[str, Tensor] | None = decode
        self.flat: Tensor | None = None
        """(2, tokens): encode and decode of every group, when the dicts are views of it."""
        self.layout: _Layout = ()

    @classmethod
    def of_flat(cls, flat: Tensor, layout: _Layout) -> ViewMasks:
        view = cls.__new__(cls)
        view._encode = view._decode = None
        view.flat, view.layout = flat, layout
        return view

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
        if self.flat is not None:
            return ViewMasks.of_flat(self.flat.to(device, non_blocking=non_blocking), self.layout)
        move = {g: m.to(device, non_blocking=non_blocking) for g, m in self.encode.items()}
        return ViewMasks(
            move, {g: m.to(device, non_blocking=non_blocking) for g, m in self.decode.items()}
        )

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """Views of one array travel as that array and the layout: one tensor, not two per
        group (a worker sends each batch's views to the training process)."""
        if self.flat is None:
            return (ViewMasks, (self.encode, self.decode))
        return (ViewMasks.of_flat, (self.flat, self.layout))

    def __repr__(self) -> str:
        return f"ViewMasks(groups={[g for g, *_ in self.layout] or list(self.encode)})"


@cache
def _encodable(groups: tuple[str, ...]) -> np.ndarray:
    return np.array([g in encodable_groups() for g in groups])


def _masks(
    token_valid: dict[str, Tensor],
    generator: torch.Generator,
    views: int,
    out: Tensor | None = None,
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
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    mask_views(
        np.concatenate(flat),
        np.array(starts, dtype=np.int64),
        np.array(sizes, dtype=np.int64),
        _encodable(groups),
        batch,
        MIN_ENCODED_GROUPS,
        seed,
        out.numpy(),
    )
    layout = tuple(
        (g, a, n, tuple(shape))
        for g, a, n, shape in zip(groups, starts, lengths, shapes, strict=True)
    )
    return [ViewMasks.of_flat(out[v], layout) for v in range(views)]


def sample_view_masks(token_valid: dict[str, Tensor], generator: torch.Generator) -> ViewMasks:
    """Masks for one view from per-group token validity (B, T, h, w) (see module doc)."""
    return _masks(token_valid, generator, 1)[0]


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
) -> list[ViewMasks]:
    """`num_views` independent masked views of a batch (two for the contrastive loss).
    With `out` (bool (num_views, 2, all groups' tokens)) the masks are views of it: the
    loader passes memory of the batch's shared slot."""
    if num_views < 1:
        raise ValueError(f"num_views={num_views}; need at least one view")
    return _masks({g: batch.token_valid(g) for g in batch.groups}, generator, num_views, out)
