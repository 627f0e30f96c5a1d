"""Read a modality's mask band once and put it on every group's grid in numpy.

S2 SCL is 20 m; the 10, 20 and 40 m groups each used to read it again through a
warp. When every item's mask asset lies on the tile's grid at its native pixel
size (same CRS, origin a whole number of pixels from the tile corner), nearest
resampling onto a grid whose pixel is an integer multiple or divisor of it is pure
index arithmetic, so one read serves all groups with the same pixels:

- finer (20 m -> 10 m, factor k): every mask pixel is repeated k x k times, since
  each fine pixel centre falls inside exactly one mask pixel;
- coarser (20 m -> 40 m, factor k): the coarse pixel centre sits at mask pixel
  coordinate k*j + k/2, and GDAL's nearest takes the pixel containing it, i.e.
  index k*j + k//2 (for k = 2 the lower-right of each 2 x 2 block).
  tests/pipeline/test_mask_grid.py checks both against stackstac's own warp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from terracube.catalog.grid import Tile
from terracube.catalog.registry import MaskBand
from terracube.catalog.stac.items import NormalizedItem


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-6


def scale_factor(from_res: float, to_res: float) -> int | None:
    """The integer k with to = from / k (finer) or to = from * k (coarser); None if none."""
    if from_res <= 0 or to_res <= 0:
        raise ValueError(f"resolutions must be positive, got {from_res} and {to_res}")
    ratio = from_res / to_res if from_res >= to_res else to_res / from_res
    return round(ratio) if _whole(ratio) else None


def on_tile_grid(item: NormalizedItem, band: MaskBand, tile: Tile) -> bool:
    """True when the item's mask asset is north-up at band.native_res on the tile's grid."""
    ref = item.mask
    if ref is None or ref.transform is None or item.epsg != tile.epsg:
        return False
    t, res = ref.transform, float(band.native_res)
    if t.b or t.d or not math.isclose(t.a, res) or not math.isclose(-t.e, res):
        return False
    minx, _, _, maxy = tile.bounds
    return _whole((t.c - minx) / res) and _whole((maxy - t.f) / res)


def shared_mask_resolution(
    items: Sequence[NormalizedItem], band: MaskBand | None, tile: Tile
) -> float | None:
    """The mask's native pixel size when one read of it can serve every group, else None.

    Items without a mask are fine (they read as fill either way); any item whose mask
    is not on the tile grid sends the modality back to one warped mask read per group.
    """
    if band is None:
        return None
    try:
        tile.shape(band.native_res)
    except ValueError:  # the mask's pixel does not divide the tile
        return None
    with_mask = [item for item in items if item.mask is not None]
    if not with_mask or not all(on_tile_grid(item, band, tile) for item in with_mask):
        return None
    return float(band.native_res)


def mask_on_grid(mask: np.ndarray, from_res: float, to_res: float) -> np.ndarray:
    """(..., rows, cols) mask at from_res -> the same tile at to_res, as GDAL nearest would."""
    k = scale_factor(from_res, to_res)
    if k is None:
        raise ValueError(
            f"a {from_res} m mask does not nest into a {to_res} m grid; read the mask with "
            "the group instead (shared_mask_resolution decides this)"
        )
    if k == 1:
        return mask
    if to_res < from_res:
        return mask.repeat(k, axis=-2).repeat(k, axis=-1)
    return np.ascontiguousarray(mask[..., k // 2 :: k, k // 2 :: k])
