"""What loader workers send: storage values at each group's native resolution.

A worker's cost per sample should be the decode of its chunks and little more.
Normalising to float32 and repeating 20/40 m pixels onto the 10 m grid would
multiply the bytes a worker writes by 2-32x (a 40 m uint16 pixel becomes 16
float32 values), cost more than the decode itself, and send those bytes through
shared memory and then over PCIe. So the worker ships `RawBatch` — storage dtype
(uint16 / uint8 / float32 dB), native resolution, plus pixel validity — and the
consumer materialises the model's `Batch` (normalised float32 on one 10 m grid)
where it will be used: `to(device)` moves the compact tensors first and runs the
normalisation and nearest upsampling there (on a GPU: a few elementwise kernels).

Token validity, which modality-aware masking needs in the worker, is computed at
native resolution: a 20 m pixel repeated 2 x 2 contributes exactly what its four
copies would, so pooling the native mask with patch p/f equals pooling the
upsampled mask with patch p (f = group resolution / 10 m).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from terracube.catalog.bands import BASE_RESOLUTION_M
from terracube.catalog.registry import band_group
from terracube.model.data.pixel_stats import GroupNormalizer
from terracube.model.data.validity import pooled_validity
from terracube.model.nn.batch import TOKEN_VALID_FRACTION, Batch, token_validity
from terracube.model.nn.groups import all_groups
from terracube.model.train.masking import ViewMasks
from torch import Tensor

TORCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}
"""Registry storage dtypes -> torch dtypes of the worker's raw tensors."""


def arena_specs(
    groups: tuple[str, ...], geo: Any, batch: int, num_views: int
) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    """(dtype, shape) of everything a batch of geometry `geo` (crop, patch, timesteps)
    holds, in arena order: each group's values and validity, then the months and every
    view's encode/decode masks (all groups' tokens side by side, as `mask_batch` lays
    them out)."""
    specs = []
    tokens = 0
    for g in groups:
        group = band_group(g)
        side = geo.crop // group_factor(g)
        steps = geo.timesteps if group.temporal else 1
        shape = (batch, steps, len(group.bands), side, side)
        specs += [(TORCH_DTYPES[group.dtype], shape), (torch.bool, (*shape[:2], side, side))]
        tokens += batch * steps * (geo.crop // geo.patch) ** 2
    specs.append((torch.int64, (batch, geo.timesteps)))
    specs.append((torch.bool, (num_views, 2, tokens)))
    return specs


@dataclass
class SampleCrop:
    """One sample cut to its batch's crop and timestep window, at native resolution."""

    data: dict[str, Any]
    """group -> its window, ([T_g,] band, side, side) storage dtype: compressed chunks read
    but not yet decoded (`EncodedWindow`), or values (zarr fallback); None = failed."""
    present: dict[str, np.ndarray]
    """group -> bool (T_g,): modality done and timestep not missing."""
    months: np.ndarray
    failed: set[str] = field(default_factory=set)
    """Groups whose data or metadata could not be read (counted once each in the batch)."""


def group_factor(group: str) -> int:
    """Pixels of the shared 10 m grid per native pixel of `group`, along one axis."""
    return int(band_group(group).resolution // BASE_RESOLUTION_M)


@dataclass
class RawBatch:
    """One batch as a worker builds it (see the module doc)."""

    raw: dict[str, Tensor]
    """group -> storage dtype (B, T, band, crop/f, crop/f); static groups have T == 1."""
    valid: dict[str, Tensor]
    """group -> bool (B, T, crop/f, crop/f): modality done, timestep present, not nodata."""
    months: Tensor
    """int64 (B, T): calendar month 0..11 of each period start."""
    patch_size: int
    crop: int
    """Side of the crop in pixels of the shared 10 m grid."""

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for g in all_groups() if g in self.raw)

    def __getstate__(self) -> dict[str, Any]:
        """uint16 tensors pickle as int16 views (same bytes, no copy): torch's plain pickling
        of uint16 storage fails (`UntypedStorage has no attribute dtype`, torch 2.13)."""
        state = dict(self.__dict__)
        state["raw"] = {
            g: (x.view(torch.int16), True) if x.dtype == torch.uint16 else (x, False)
            for g, x in self.raw.items()
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["raw"] = {
            g: x.view(torch.uint16) if was_uint16 else x
            for g, (x, was_uint16) in state["raw"].items()
        }
        self.__dict__.update(state)

    @property
    def batch_size(self) -> int:
        return int(self.months.shape[0])

    def token_valid(self, group: str) -> Tensor:
        """bool (B, T, crop/p, crop/p), equal to `Batch.token_valid` of the materialised batch."""
        valid, f, p = self.valid[group], group_factor(group), self.patch_size
        if p % f:  # patch finer than the native pixel
            return token_validity(_repeat(valid, f), p)
        if valid.device.type != "cpu":
            return token_validity(valid, p // f)
        q = p // f  # compiled: the workers compute this for every group of every batch
        b, t, h, w = valid.shape
        out = np.empty((b, t, h // q, w // q), dtype=bool)
        pooled_validity(valid.numpy(), q, math.ceil(TOKEN_VALID_FRACTION * q * q), out)
        return torch.from_numpy(out)

    def materialize(
        self, normalizers: Mapping[str, GroupNormalizer], device: torch.device | str = "cpu"
    ) -> Batch:
        """The model's `Batch` on `device`: normalised float32, every group on the 10 m grid."""
        device = torch.device(device)
        data: dict[str, Tensor] = {}
        valid: dict[str, Tensor] = {}
        for g in self.groups:
            raw = _to_device(self.raw[g], device)
            ok = self.valid[g].to(device, non_blocking=True)
            x = normalizers[g].apply_torch(raw, ok)
            f = group_factor(g)
            data[g], valid[g] = _repeat(x, f), _repeat(ok, f)
        months = self.months.to(device, non_blocking=True)
        return Batch(data, valid, months, patch_size=self.patch_size)


def _to_device(x: Tensor, device: torch.device) -> Tensor:
    """Storage values on `device`; uint16 travels as int16 bits (every backend copies int16)
    and is widened there, since some device kernels lack uint16."""
    if device.type == "cpu":
        return x
    if x.dtype == torch.uint16:
        return widen_uint16_bits(x.view(torch.int16).to(device, non_blocking=True))
    return x.to(device, non_blocking=True)


def widen_uint16_bits(bits: Tensor) -> Tensor:
    """int16 tensor holding uint16 bit patterns -> int32 with the unsigned values."""
    return bits.to(torch.int32) & 0xFFFF


def _repeat(x: Tensor, f: int) -> Tensor:
    """Nearest upsampling of the last two axes by whole-pixel repeats (f x f copies)."""
    if f == 1:
        return x
    *lead, h, w = x.shape
    return x[..., :, None, :, None].expand(*lead, h, f, w, f).reshape(*lead, h * f, w * f)


@dataclass
class LoaderItem:
    """One batch as the training loop receives it: compact storage values (`raw`), its
    masked views, and where it came from. `to(device)` gives the model's `Batch` there."""

    raw: RawBatch
    views: list[ViewMasks]
    samples: tuple[int, ...]
    epoch: int
    index: int
    decode_errors: int = 0
    """(sample, band group) reads of this batch that failed and were left out."""
    decoded_bytes: int = 0
    fallbacks: int = 0
    """Reads the compiled shard path failed and zarr's selection did instead (a damaged
    shard, or a fast-path bug): counted so a run and the tests can tell. A shard whose
    prefetch and synchronous read both fail counts twice: these are attempts."""
    bad_shards: tuple[str, ...] = ()
    """`path: reason` of damaged shards its worker met for the first time (`read_faults`)."""
    normalizers: dict[str, GroupNormalizer] = field(default_factory=dict, repr=False)
    _cpu: Batch | None = field(default=None, repr=False, compare=False)
    _slot: tuple[int, torch.Tensor, int] | None = field(default=None, repr=False, compare=False)
    """In a worker: (ring slot, its bytes, bytes used) the batch was built in."""

    @property
    def batch_size(self) -> int:
        return self.raw.batch_size

    def to(self, device: torch.device | str) -> Batch:
        """The normalised 10 m `Batch`, computed on `device` from the compact tensors."""
        if torch.device(device).type == "cpu":
            return self.batch
        return self.raw.materialize(self.normalizers, device)

    @property
    def batch(self) -> Batch:
        """The normalised 10 m `Batch` on the CPU (computed once, then kept)."""
        if self._cpu is None:
            self._cpu = self.raw.materialize(self.normalizers, "cpu")
        return self._cpu

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cpu"] = None  # workers never send the materialised batch
        state["_slot"] = None
        return state
