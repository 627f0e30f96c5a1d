"""Source DN -> stored values, exactly as the catalog's Conversion of each asset says.

The catalog (`catalog.stac.items.Conversion`) decides per asset: S2 `-1000 DN` once for
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
from terracube.catalog.registry import BandGroup, RadiometryKind
from terracube.catalog.stac.items import Conversion, NormalizedItem


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
    becomes the group's nodata. Observations sharing a Conversion are converted in
    one call per band (a period's scenes almost always share one).
    """
    out = np.empty(raw.shape, dtype=group.dtype)
    refs = []
    for item in items:
        check_conversion(item, group)
        refs.append({r.band: r for r in item.assets})
    for b, band in enumerate(group.bands):
        by_conversion: dict[Conversion | None, list[int]] = {}
        for i, item_refs in enumerate(refs):
            ref = item_refs.get(band.name)
            by_conversion.setdefault(ref.conversion if ref else None, []).append(i)
        for conversion, index in by_conversion.items():
            rows = slice(None) if len(index) == len(items) else index
            if conversion is None:  # optional band these products lack
                out[rows, b] = group.nodata
            else:
                out[rows, b] = convert(conversion, raw[rows, b], fill_value)
    return out


def convert(conversion: Conversion, dn: np.ndarray, fill_value: float) -> np.ndarray:
    """`conversion.to_stored(dn, nodata=fill_value)`, in uint16 arithmetic where that is
    exact (S2 offset and identity on uint16 DN; tests compare every uint16 value)."""
    if dn.dtype != np.uint16 or math.isnan(fill_value) or fill_value != int(fill_value):
        return conversion.to_stored(dn, nodata=fill_value)
    fill = int(fill_value)
    if conversion.kind is RadiometryKind.IDENTITY:
        return dn.copy() if fill == 0 else np.where(dn == fill, 0, dn).astype(np.uint16)
    offset = int(conversion.dn_offset)
    if (
        conversion.kind is not RadiometryKind.S2_BASELINE_OFFSET
        or offset != conversion.dn_offset
        or abs(offset) >= 65535
    ):
        return conversion.to_stored(dn, nodata=fill_value)
    # clip(dn + offset, 1, 65535) for valid dn >= 1, without leaving uint16
    if offset < 0:
        stored = np.maximum(dn, np.uint16(1 - offset))
        stored -= np.uint16(-offset)
    else:
        stored = np.minimum(dn, np.uint16(65535 - offset))
        stored += np.uint16(offset)
    stored[dn == 0] = 0
    if fill != 0:
        stored[dn == fill] = 0
    return stored


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
