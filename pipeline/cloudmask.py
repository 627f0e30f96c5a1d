"""Per-pixel cloud masks from the registry's MaskBand (S2 SCL classes, Landsat QA_PIXEL bits).

A scene-level `eo:cloud_cover` sort only ranks scenes; it cannot keep a cloud out
of a composite. Every observation is masked per pixel here before compositing.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from terracube.catalog.registry import MaskBand


def clear_from_mask(mask: np.ndarray, band: MaskBand) -> np.ndarray:
    """True where the mask band says the pixel is a clear observation.

    classes: the code is not in `invalid` (SCL 0 no-data, 1 saturated, 3 shadow,
    8/9 cloud, 10 cirrus). bits: none of the `invalid` bits is set (QA_PIXEL bit 0
    fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow).
    """
    values = np.asarray(mask)
    if values.dtype.kind not in "ui":
        raise TypeError(
            f"{band.name} mask must be an integer array, got {values.dtype}; read it with an "
            "integer dtype (the group dtype) and nearest resampling"
        )
    if band.kind == "classes":
        if values.dtype.kind == "u" and values.dtype.itemsize <= 2:  # a lookup table, not isin
            clear = np.ones(np.iinfo(values.dtype).max + 1, dtype=bool)
            clear[[code for code in band.invalid if 0 <= code < clear.size]] = False
            return clear[values]
        return ~np.isin(values, np.asarray(band.invalid, dtype=values.dtype))
    bits = 0
    for bit in band.invalid:
        bits |= 1 << bit
    return (values.astype(np.uint64) & np.uint64(bits)) == 0


def observation_valid(
    bands: np.ndarray, nodata: float, mask: np.ndarray | None, band: MaskBand | None
) -> np.ndarray:
    """(obs, rows, cols) True where an observation is usable.

    Usable = the mask says clear (when the modality has a mask and the item has it)
    AND at least one band holds data. The band test matters because pixels outside a
    footprint are filled with nodata while their mask reads 0, which QA_PIXEL bits
    would call clear.
    """
    # (obs, bands, rows, cols) reduced over an axis: an array, not the stubs' np.bool_ too.
    has_data = cast(np.ndarray, _has_data(bands, nodata).any(axis=1))
    if mask is None or band is None:
        return has_data
    return has_data & clear_from_mask(mask, band)


def _has_data(values: np.ndarray, nodata: float) -> np.ndarray:
    if np.isnan(nodata):
        return ~np.isnan(values)
    return values != nodata
