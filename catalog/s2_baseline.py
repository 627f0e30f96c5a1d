"""Sentinel-2 L2A processing baselines: which DN carry the +1000 BOA_ADD_OFFSET.

From baseline 04.00 (January 2022) ESA adds 1000 to every L2A reflectance DN; the
corpus stores reflectance x 10000 without it (catalog/registry.py storage
conventions), so the offset is removed exactly once for those items and never for
older ones. Baselines are written "04.00" in STAC (`s2:processing_baseline`),
"N0400" in product names (`s2:product_uri`, Earth Search v0 `sentinel:product_id`),
"N04.00" at the end of granule ids (`s2:granule_id`, the TILE_ID of MTD_TL.xml) and
`<PROCESSING_BASELINE>04.00</PROCESSING_BASELINE>` in the product metadata XML.
`item_baseline` reads them in that order; when none says, the caller refuses the item:
guessing wrong stores every pixel 1000 DN off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

S2_BOA_ADD_OFFSET_DN = 1000
"""The offset, in DN, that those baselines add."""
S2_OFFSET_BASELINE = "04.00"
"""From this processing baseline on, S2 L2A DN carry a +1000 offset."""


def parse_processing_baseline(value: str) -> tuple[int, int]:
    """Read an S2 baseline as written in STAC ("04.00") or in product names ("N0400")."""
    match = re.fullmatch(r"\s*(?:N(\d{2})(\d{2})|(\d{1,2})\.(\d{1,2}))\s*", value)
    if not match:
        raise ValueError(
            f"unreadable Sentinel-2 processing baseline {value!r}: expected 'MM.mm' "
            "(s2:processing_baseline, e.g. '04.00') or 'Nxxyy' (product name, e.g. 'N0400')"
        )
    major, minor = (g for g in match.groups() if g is not None)
    return int(major), int(minor)


BASELINE_PROPERTIES = ("s2:processing_baseline", "sentinel:processing_baseline")
"""Properties holding the baseline itself ("05.11"): STAC s2 extension; Earth Search v0."""

BASELINE_NAME_PROPERTIES = (
    "s2:product_uri",
    "sentinel:product_id",
    "s2:granule_id",
    "s2:datatake_id",
    "s2:datastrip_id",
)
"""Item properties whose product or granule name carries the baseline."""

METADATA_ASSET_KEYS = (
    "product_metadata",
    "product-metadata",
    "granule_metadata",
    "granule-metadata",
    "metadata",
)
"""Assets holding MTD_MSIL2A.xml / MTD_TL.xml (Earth Search v1, Planetary Computer, v0)."""

_NAME_PATTERNS = (
    re.compile(r"_N(\d{2})(\d{2})(?=[_.]|$)"),  # product name: ..._N0400_R...
    re.compile(r"_N(\d{2})\.(\d{2})(?=[_.]|$)"),  # granule id: ..._N04.00
)
_METADATA_PATTERNS = (
    re.compile(rb"<PROCESSING_BASELINE>\s*(\d{1,2})\.(\d{1,2})\s*</PROCESSING_BASELINE>"),
    re.compile(rb"<TILE_ID[^>]*>[^<]*_N(\d{2})\.(\d{2})\s*</TILE_ID>"),
    re.compile(rb"<PRODUCT_URI>[^<]*_N(\d{2})(\d{2})_[^<]*</PRODUCT_URI>"),
)


class BaselineError(ValueError):
    """The item's baseline is unreadable or nowhere to be found; the message says where
    terracube looked."""


def baseline_in_name(name: str) -> str | None:
    """Baseline ("MM.mm") in a product or granule name, or None."""
    for pattern in _NAME_PATTERNS:
        found = pattern.search(name)
        if found:
            return f"{found.group(1)}.{found.group(2)}"
    return None


def baseline_in_metadata(xml: bytes) -> str | None:
    """Baseline ("MM.mm") in MTD_MSIL2A.xml or MTD_TL.xml bytes, or None."""
    for pattern in _METADATA_PATTERNS:
        found = pattern.search(xml)
        if found:
            major, minor = (int(g) for g in found.groups())
            return f"{major:02d}.{minor:02d}"
    return None


def item_baseline(
    properties: Mapping[str, Any],
    metadata: Callable[[], bytes | None] | None = None,
) -> tuple[str, str]:
    """(baseline "MM.mm", where it was read) for an S2 L2A item.

    Looks at BASELINE_PROPERTIES, then the names in BASELINE_NAME_PROPERTIES, then
    (only if still unknown) the metadata XML that `metadata()` returns. Raises
    BaselineError when the property is unreadable and nothing else says, or when
    nothing says at all.
    """
    key = next((k for k in BASELINE_PROPERTIES if properties.get(k) not in (None, "")), None)
    raw = properties.get(key) if key else None
    unreadable = None
    if raw not in (None, ""):
        try:
            major, minor = parse_processing_baseline(str(raw))
            return f"{major:02d}.{minor:02d}", str(key)
        except ValueError as err:
            unreadable = str(err)
    for key in BASELINE_NAME_PROPERTIES:
        value = properties.get(key)
        found = baseline_in_name(str(value)) if value else None
        if found:
            return found, key
    xml = metadata() if metadata is not None else None
    found = baseline_in_metadata(xml) if xml else None
    if found:
        return found, "metadata XML"
    if unreadable:
        raise BaselineError(unreadable)
    raise BaselineError(
        "Sentinel-2 processing baseline unknown: no s2:processing_baseline, no "
        f"{'/'.join(BASELINE_NAME_PROPERTIES)} with an 'Nxxyy' part"
        + (", and the metadata XML names none" if metadata is not None else "")
        + "; DN of baselines >= 04.00 carry +1000, so the item cannot be converted safely"
    )


def s2_offset_applies(processing_baseline: str | None) -> bool:
    """True when DN of this S2 L2A baseline carry the +1000 BOA_ADD_OFFSET."""
    if not processing_baseline:
        return False
    return parse_processing_baseline(processing_baseline) >= parse_processing_baseline(
        S2_OFFSET_BASELINE
    )
