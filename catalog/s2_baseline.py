"""Sentinel-2 L2A processing baselines: which DN carry the +1000 BOA_ADD_OFFSET.

From baseline 04.00 (January 2022) ESA adds 1000 to every L2A reflectance DN; the
corpus stores reflectance x 10000 without it (catalog/registry.py storage
conventions), so the offset is removed exactly once for those items and never for
older ones. Baselines are written "04.00" in STAC (`s2:processing_baseline`) and
"N0400" in product names.
"""

from __future__ import annotations

import re

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


def s2_offset_applies(processing_baseline: str | None) -> bool:
    """True when DN of this S2 L2A baseline carry the +1000 BOA_ADD_OFFSET."""
    if not processing_baseline:
        return False
    return parse_processing_baseline(processing_baseline) >= parse_processing_baseline(
        S2_OFFSET_BASELINE
    )
