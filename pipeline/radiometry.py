"""Source DN -> stored values, exactly as the catalog's Conversion of each asset says.

The catalog (normalize.Conversion) decides per asset: S2 `-1000 DN` once for
baseline >= 04.00 unless provider metadata already accounts for it, Landsat DN
kept as published (scale/offset recorded), S1 linear power -> dB. The pipeline
applies that and nothing else, per observation and before compositing, because
scenes of one period can differ in baseline.

The store records the stored -> physical inverse per band (registry
radiometry in `terracube:groups`); `conversion_record` gives the source -> stored
step per item so a reader can recover the provider's DN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from terracube.catalog.normalize import Conversion, NormalizedItem
from terracube.catalog.registry import BandGroup, RadiometryKind


class RadiometryError(ValueError):
    """An item's conversion disagrees with what the corpus records for its group."""


def check_conversion(item: NormalizedItem, group: BandGroup) -> None:
    """Refuse stored values the corpus attributes would describe wrongly.

    For IDENTITY bands the stored value is the provider DN, and physical =
    stored * scale + offset with the registry's scale/offset written in the store;
    an item publishing another scale/offset would be silently misread.
    """
    for band in group.bands:
        ref = next((r for r in item.assets if r.band == band.name), None)
        if ref is None or ref.conversion.kind is not RadiometryKind.IDENTITY:
            continue
        want = band.radiometry
        got = ref.conversion
        if not (
            math.isclose(got.scale, want.scale, rel_tol=1e-6)
            and math.isclose(got.offset, want.offset, rel_tol=1e-6, abs_tol=1e-9)
        ):
            raise RadiometryError(
                f"item {item.id} band {band.name}: scale/offset {got.scale}/{got.offset} "
                f"({got.source}) differ from the corpus' {want.scale}/{want.offset}; "
                "rescale the source or add a registry band for this product"
            )


def to_stored(
    raw: np.ndarray, items: Sequence[NormalizedItem], group: BandGroup, fill_value: float
) -> np.ndarray:
    """(obs, bands, rows, cols) raw DN -> storage dtype with each item's own Conversion.

    `fill_value` (what the reader wrote outside footprints / on source nodata)
    becomes the group's nodata.
    """
    out = np.empty(raw.shape, dtype=group.dtype)
    for i, item in enumerate(items):
        check_conversion(item, group)
        refs = {r.band: r for r in item.assets}
        for b, band in enumerate(group.bands):
            ref = refs.get(band.name)
            if ref is None:  # optional band this product lacks
                out[i, b] = group.nodata
                continue
            out[i, b] = ref.conversion.to_stored(raw[i, b], nodata=fill_value)
    return out


def conversion_record(conversion: Conversion) -> dict[str, Any]:
    """JSON-safe description of one source -> stored conversion."""
    return {
        "kind": conversion.kind.value,
        "dn_offset": conversion.dn_offset,
        "scale": conversion.scale,
        "offset": conversion.offset,
        "source": conversion.source,
    }


def item_conversions(items: Sequence[NormalizedItem], group: BandGroup) -> dict[str, Any]:
    """{item id: {band: conversion}} for the items that fed a group."""
    names = set(group.band_names)
    return {
        item.id: {r.band: conversion_record(r.conversion) for r in item.assets if r.band in names}
        for item in items
    }
