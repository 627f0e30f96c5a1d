"""Exactly how one asset's source DN become the registry's stored value.

The numbers come from the asset's raster:bands when the provider publishes them, else
from the S2 processing baseline wherever the item carries it (catalog/s2_baseline.py),
else from the registry. An S2 item whose baseline cannot be known is refused here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from terracube.catalog.registry import Band, RadiometryKind
from terracube.catalog.s2_baseline import (
    S2_BOA_ADD_OFFSET_DN,
    BaselineError,
    item_baseline,
    s2_offset_applies,
)
from terracube.catalog.stac.item_errors import ItemNormalizationError


@dataclass(frozen=True)
class Conversion:
    """Exactly how one asset's source DN become the registry's stored value.

    stored = DN + dn_offset (S2 baseline offset; 0 elsewhere), or 10 log10(DN) for
    LINEAR_TO_DB; physical = stored * scale + offset. `source` says where the numbers
    came from: "raster:bands", "s2:processing_baseline" or "registry".
    """

    kind: RadiometryKind
    dn_offset: float = 0.0
    scale: float = 1.0
    offset: float = 0.0
    source: str = "registry"

    def to_stored(self, dn: np.ndarray, nodata: float | None = None) -> np.ndarray:
        """Apply the conversion; source nodata maps to the stored nodata of the kind."""
        dn = np.asarray(dn)
        invalid = np.zeros(dn.shape, bool) if nodata is None else _equal_nodata(dn, nodata)
        if self.kind is RadiometryKind.LINEAR_TO_DB:
            linear = dn.astype(np.float64)
            invalid |= ~(linear > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                db = 10.0 * np.log10(np.where(invalid, 1.0, linear))
            return np.where(invalid, np.nan, db).astype(np.float32)
        if self.kind is RadiometryKind.S2_BASELINE_OFFSET:
            shifted = dn.astype(np.int64) + int(self.dn_offset)
            # 0 is nodata; valid dark pixels clip to 1 rather than become nodata.
            stored = np.clip(shifted, 1, np.iinfo(np.uint16).max)
            return np.where(invalid | (dn == 0), 0, stored).astype(np.uint16)
        return np.where(invalid, 0, dn).astype(dn.dtype)


def _equal_nodata(values: np.ndarray, nodata: float) -> np.ndarray:
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    return values == nodata


OFFSET_APPLIED_PROPERTIES = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
"""Earth Search (v1, v0): true when Element84 already removed the +1000 DN from the COGs.

Said by its maintainers (cirrus-geo/cirrus-earth-search#21: new scenes "have the
BOA_ADD_OFFSET applied"; Element84/earth-search#9: raster:bands may still say -0.1 "even
when it has been applied", the flag "is the truth"; allenai/rslearn#689 fixed the same
double subtraction). Only the COGs were rewritten: the JP2 originals beside them keep
ESA's DN, so for those the baseline rule still holds."""


def offset_already_applied(props: Mapping[str, Any]) -> bool | None:
    """The Earth Search flag when the item carries one (True / False), else None."""
    for key in OFFSET_APPLIED_PROPERTIES:
        if isinstance(props.get(key), bool):
            return bool(props[key])
    return None


def band_conversion(
    band: Band,
    raster: Mapping[str, Any],
    props: Mapping[str, Any],
    item_id: str,
    metadata: Callable[[], bytes | None] | None = None,
    jp2: bool = False,
) -> Conversion:
    """How this band's DN become stored values. For S2: an Earth Search COG whose flag
    says the offset was already removed is stored as is; else raster:bands scale/offset;
    else the item's processing baseline, wherever it carries it (or the item is refused).
    `jp2` marks the provider's JPEG 2000 original, which the flag does not cover."""
    kind = band.radiometry.kind
    has_scale = "scale" in raster or "offset" in raster
    if kind is RadiometryKind.S2_BASELINE_OFFSET:
        scale = float(raster.get("scale", band.radiometry.scale))
        applied = offset_already_applied(props)
        if applied and not jp2:
            key = next(k for k in OFFSET_APPLIED_PROPERTIES if k in props)
            return Conversion(kind, 0.0, scale, 0.0, key)
        if has_scale:
            dn_offset = float(raster.get("offset", 0.0)) / scale
            if abs(dn_offset - round(dn_offset)) > 1e-6:
                raise ItemNormalizationError(
                    f"item {item_id}: raster:bands offset/scale of {band.name} give a "
                    f"non-integral DN offset {dn_offset}",
                    "non-integral DN offset",
                )
            return Conversion(kind, float(round(dn_offset)), scale, 0.0, "raster:bands")
        try:
            baseline, where = item_baseline(props, metadata)
        except BaselineError as err:
            raise ItemNormalizationError(
                f"item {item_id}: {err}. Give the items an s2:processing_baseline "
                "(or raster:bands scale/offset), or search a provider that publishes one",
                "unknown S2 baseline",
            ) from None
        applies = s2_offset_applies(baseline)
        return Conversion(
            kind,
            -float(S2_BOA_ADD_OFFSET_DN) if applies else 0.0,
            scale,
            0.0,
            where,
        )
    if kind is RadiometryKind.IDENTITY:
        if has_scale:
            return Conversion(
                kind,
                0.0,
                float(raster.get("scale", 1.0)),
                float(raster.get("offset", 0.0)),
                "raster:bands",
            )
        return Conversion(kind, 0.0, band.radiometry.scale, band.radiometry.offset, "registry")
    return Conversion(kind, source="registry")


def mask_conversion() -> Conversion:
    return Conversion(RadiometryKind.CLASSES, source="registry")
