"""The batch contract between the streaming loader and the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from terracube.catalog.registry import band_group
from terracube.model.nn.groups import all_groups, group_channels
from torch import Tensor

TOKEN_VALID_FRACTION = 0.5
"""A token is valid when at least this fraction of its pixels is valid: a patch that is
mostly cloud or nodata carries too little signal to encode or to be a target."""

MAX_PATCH_SIZE = 8


@dataclass
class Batch:
    """All band groups on one shared 10 m pixel grid (the loader upsamples 20/40 m groups by nearest repeat)."""

    data: dict[str, Tensor]
    """group -> float32 (B, T, C, H, W), normalised; static groups (worldcover, osm) have T == 1."""
    valid: dict[str, Tensor]
    """group -> bool (B, T, H, W): pixel validity (False = nodata / cloud / missing timestep)."""
    months: Tensor
    """int64 (B, T): calendar month 0..11 of each period start."""
    patch_size: int
    """Shared within a batch, 1..8, divides H and W."""
    gsd: float = 10.0
    """Metres per pixel of the shared grid."""

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups present in this batch, in the model's fixed (registry) order."""
        return tuple(g for g in all_groups() if g in self.data)

    @property
    def batch_size(self) -> int:
        return int(self.months.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (H/p, W/p)."""
        _, _, _, h, w = next(iter(self.data.values())).shape
        return h // self.patch_size, w // self.patch_size

    def token_valid(self, group: str) -> Tensor:
        """bool (B, T, H/p, W/p): which tokens of `group` hold enough valid pixels."""
        return token_validity(self.valid[group], self.patch_size)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            data={g: x.to(device, non_blocking=True) for g, x in self.data.items()},
            valid={g: v.to(device, non_blocking=True) for g, v in self.valid.items()},
            months=self.months.to(device, non_blocking=True),
            patch_size=self.patch_size,
            gsd=self.gsd,
        )


def token_validity(valid: Tensor, patch_size: int) -> Tensor:
    """bool (B, T, H/p, W/p) from pixel validity (B, T, H, W): >= half the patch valid."""
    b, t, h, w = valid.shape
    fraction = F.avg_pool2d(valid.reshape(b * t, 1, h, w).float(), patch_size)
    return (fraction >= TOKEN_VALID_FRACTION).reshape(b, t, h // patch_size, w // patch_size)


def validate_batch(batch: Batch) -> None:
    """Raise a ValueError naming the offending group and the fix if `batch` breaks the contract."""
    if not batch.data:
        raise ValueError("Batch.data is empty; a batch needs at least one band group")
    unknown = set(batch.data) - set(all_groups())
    if unknown:
        raise ValueError(
            f"Batch.data has unknown band groups {sorted(unknown)}; "
            f"the registry has: {', '.join(all_groups())}"
        )
    if set(batch.valid) != set(batch.data):
        raise ValueError(
            f"Batch.valid groups {sorted(batch.valid)} differ from Batch.data groups "
            f"{sorted(batch.data)}; give one validity mask per data group"
        )
    p = batch.patch_size
    if not isinstance(p, int) or not 1 <= p <= MAX_PATCH_SIZE:
        raise ValueError(f"Batch.patch_size={p!r}; it must be an int in 1..{MAX_PATCH_SIZE}")
    if batch.months.dtype != torch.int64 or batch.months.ndim != 2:
        raise ValueError(
            f"Batch.months must be int64 (B, T), got {batch.months.dtype} {tuple(batch.months.shape)}"
        )
    b, t = batch.months.shape
    out_of_range = ((batch.months < 0) | (batch.months > 11)).any()
    if batch.months.device.type == "cpu":
        if bool(out_of_range):
            raise ValueError("Batch.months must hold calendar months 0..11 (January = 0)")
    else:  # no host read in a device step: an asynchronous assertion instead
        torch._assert_async(~out_of_range, "Batch.months must hold calendar months 0..11")
    shape_hw: tuple[int, int] | None = None
    for name in batch.groups:
        x, v = batch.data[name], batch.valid[name]
        if x.ndim != 5 or x.dtype != torch.float32:
            raise ValueError(
                f"Batch.data[{name!r}] must be float32 (B, T, C, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        want_t = t if band_group(name).temporal else 1
        want_c = group_channels(name)
        if x.shape[0] != b or x.shape[1] != want_t or x.shape[2] != want_c:
            raise ValueError(
                f"Batch.data[{name!r}] has shape {tuple(x.shape)}; expected (B={b}, T={want_t}, "
                f"C={want_c}, H, W) from Batch.months and the registry"
            )
        if shape_hw is None:
            shape_hw = (x.shape[3], x.shape[4])
        if (x.shape[3], x.shape[4]) != shape_hw:
            raise ValueError(
                f"Batch.data[{name!r}] is {x.shape[3]}x{x.shape[4]} px but other groups are "
                f"{shape_hw[0]}x{shape_hw[1]}; the loader must put every group on one grid"
            )
        if x.shape[3] % p or x.shape[4] % p:
            raise ValueError(
                f"Batch.data[{name!r}] is {x.shape[3]}x{x.shape[4]} px, not divisible by "
                f"patch_size={p}; crop to a multiple of the patch size"
            )
        if v.dtype != torch.bool or tuple(v.shape) != (b, want_t, x.shape[3], x.shape[4]):
            raise ValueError(
                f"Batch.valid[{name!r}] must be bool {(b, want_t, x.shape[3], x.shape[4])}, "
                f"got {v.dtype} {tuple(v.shape)}"
            )
