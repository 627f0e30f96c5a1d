"""Clear-sky signal per (class, band, period): the values every sensor shows.

A class's reflectance is a linear mix of four endmember spectra (green
vegetation, soil, water, urban) whose vegetation share follows a seasonal
phenology, so NDVI and the red edge cycle over the year and cropland peaks
later and sharper than forest. The value is constant within a period, so the
per-pixel median of clear observations equals it exactly.
"""

from __future__ import annotations

import math

import numpy as np
from terracube.catalog.registry import S2_GROUPS, WORLDCOVER_CLASSES, band_group
from terracube.workflows.world.crops import CROP_TYPE_CODES, crop_greenness, crop_type
from terracube.workflows.world.landcover import (
    BARE,
    BUILT,
    CROP,
    GRASS,
    MANGROVE,
    MOSS,
    SHRUB,
    SNOW,
    TREE,
    WATER,
    WETLAND,
)

S2_BANDS: tuple[str, ...] = tuple(b.name for g in S2_GROUPS for b in g.bands)
LANDSAT_BANDS: tuple[str, ...] = band_group("landsat").band_names
S1_BANDS: tuple[str, ...] = band_group("s1").band_names
CLASSES: tuple[int, ...] = tuple(WORLDCOVER_CLASSES)
SIGNAL_CODES: tuple[int, ...] = (*CLASSES, *CROP_TYPE_CODES)
"""Keys of the value tables: the WorldCover classes and the crop types under cropland."""

LANDSAT_TO_S2 = {
    "SR_B1": "B01",
    "SR_B2": "B02",
    "SR_B3": "B03",
    "SR_B4": "B04",
    "SR_B5": "B8A",
    "SR_B6": "B11",
    "SR_B7": "B12",
}
"""OLI bands and the S2 band of the same spectral region (Landsat reuses its reflectance)."""

_ENDMEMBERS: dict[str, dict[str, float]] = {
    #         B02    B03    B04    B08    B05    B06    B07    B8A    B11    B12    B01    B09
    "veg": dict(zip(S2_BANDS, (0.030, 0.070, 0.030, 0.380, 0.090, 0.280, 0.350, 0.390, 0.190, 0.090, 0.030, 0.120), strict=True)),
    "soil": dict(zip(S2_BANDS, (0.100, 0.130, 0.160, 0.250, 0.190, 0.210, 0.230, 0.260, 0.320, 0.260, 0.080, 0.090), strict=True)),
    "water": dict(zip(S2_BANDS, (0.060, 0.050, 0.030, 0.010, 0.020, 0.015, 0.012, 0.009, 0.004, 0.003, 0.060, 0.004), strict=True)),
    "urban": dict(zip(S2_BANDS, (0.130, 0.140, 0.150, 0.190, 0.160, 0.170, 0.180, 0.190, 0.220, 0.190, 0.120, 0.070), strict=True)),
}  # fmt: skip
# Columns follow S2_BANDS, the registry's group order.

S1_MEAN_DB: dict[int, tuple[float, float, float]] = {
    # class: (VV dB, VH dB, seasonal amplitude dB with vegetation growth)
    TREE: (-7.5, -13.5, 0.8),
    SHRUB: (-9.0, -15.5, 1.0),
    GRASS: (-10.5, -17.0, 1.5),
    CROP: (-12.0, -20.0, 4.0),
    BUILT: (-3.5, -10.5, 0.0),
    BARE: (-13.5, -22.0, 0.0),
    SNOW: (-12.0, -20.0, 0.0),
    WATER: (-21.0, -28.0, 0.0),
    WETLAND: (-12.5, -19.0, 1.5),
    MANGROVE: (-7.0, -13.0, 0.5),
    MOSS: (-12.0, -19.5, 0.5),
}

S1_LOOKS = 4.4
"""Equivalent number of looks of the gamma speckle (IW GRD ~4.4)."""


def greenness(month: int) -> float:
    """Phenology 0 (mid-winter) .. 1 (mid-July) for a calendar month 1..12."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * (month - 1.5) / 12.0)


def _mix(code: int, green: float) -> dict[str, float]:
    """Endmember fractions (veg, soil, water, urban) of a class at a greenness."""
    crop_green = 0.05 + 0.9 * green**2
    fractions = {
        TREE: (0.60 + 0.35 * green, 0.40 - 0.35 * green, 0.0, 0.0),
        SHRUB: (0.35 + 0.30 * green, 0.65 - 0.30 * green, 0.0, 0.0),
        GRASS: (0.45 + 0.45 * green, 0.55 - 0.45 * green, 0.0, 0.0),
        CROP: (crop_green, 1.0 - crop_green, 0.0, 0.0),
        BUILT: (0.10 + 0.10 * green, 0.0, 0.0, 0.90 - 0.10 * green),
        BARE: (0.05, 0.95, 0.0, 0.0),
        WATER: (0.0, 0.0, 1.0, 0.0),
        WETLAND: (0.20 + 0.30 * green, 0.30 - 0.30 * green, 0.5, 0.0),
        MANGROVE: (0.80, 0.0, 0.20, 0.0),
        MOSS: (0.40, 0.60, 0.0, 0.0),
    }
    if code == SNOW:
        return {b: (0.10 if b in ("B11", "B12") else 0.80) for b in S2_BANDS}
    veg, soil, water, urban = fractions[code]
    shade = 0.85 if code == TREE else 1.0  # canopy shadowing darkens forest
    return {
        b: shade
        * (
            veg * _ENDMEMBERS["veg"][b]
            + soil * _ENDMEMBERS["soil"][b]
            + water * _ENDMEMBERS["water"][b]
            + urban * _ENDMEMBERS["urban"][b]
        )
        for b in S2_BANDS
    }


def reflectance(code: int, month: int) -> dict[str, float]:
    """Clear-sky surface reflectance per S2 band name for a signal code in a calendar month
    (a crop type is cropland at its own phase of the season, crops.py)."""
    if crop_type(code) is not None:
        return _mix(CROP, crop_greenness(code, month))
    return _mix(code, greenness(month))


def s2_stored(months: list[int]) -> dict[int, np.ndarray]:
    """class -> uint16 (period, band in S2_BANDS order): reflectance x 10000 (registry storage)."""
    return {
        code: np.array(
            [[round(reflectance(code, m)[b] * 10000) for b in S2_BANDS] for m in months],
            dtype=np.uint16,
        )
        for code in SIGNAL_CODES
    }


def landsat_dn(months: list[int]) -> dict[int, np.ndarray]:
    """class -> uint16 (period, band in LANDSAT_BANDS order): C2 L2 DN as published."""
    sr = band_group("landsat").bands[0].radiometry
    st = band_group("landsat").bands[-1].radiometry
    table = {}
    for code in SIGNAL_CODES:
        rows = []
        for m in months:
            refl = reflectance(code, m)
            row = [
                round((refl[LANDSAT_TO_S2[b]] - sr.offset) / sr.scale) for b in LANDSAT_BANDS[:-1]
            ]
            row.append(round((surface_temperature_k(code, m) - st.offset) / st.scale))
            rows.append(row)
        table[code] = np.array(rows, dtype=np.uint16)
    return table


def surface_temperature_k(code: int, month: int) -> float:
    """Plausible land surface temperature (K) at 47 N: seasonal cycle plus a class offset
    (every crop type is cropland's: temperature follows the climate, not the crop)."""
    code = CROP if crop_type(code) is not None else code
    green = greenness(month)
    if code in (WATER, WETLAND):
        return 276.0 + 15.0 * green
    offset = {BUILT: 4.0, BARE: 3.0, CROP: 1.0, TREE: -2.0, SNOW: -8.0}.get(code, 0.0)
    return 270.0 + 24.0 * green + offset


def s1_mean_db(code: int, month: int) -> tuple[float, float]:
    """(VV, VH) mean backscatter in dB of a signal code in a calendar month."""
    vv, vh, amplitude = S1_MEAN_DB[CROP if crop_type(code) is not None else code]
    green = crop_greenness(code, month) if crop_type(code) is not None else greenness(month)
    swing = amplitude * (green - 0.5)
    return vv + swing, vh + swing


def s1_mean_linear(months: list[int]) -> dict[int, np.ndarray]:
    """class -> float64 (period, pol) mean linear power (the speckle mean)."""
    return {
        code: np.array([[10 ** (v / 10) for v in s1_mean_db(code, m)] for m in months])
        for code in SIGNAL_CODES
    }
