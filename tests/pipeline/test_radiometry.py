"""The uint16 fast path of radiometry.convert equals the catalog's Conversion for every DN.

Exhaustive over all 65536 uint16 values, for S2 baseline offsets on both sides of
zero and at the clip limits, identity, and fills 0 and 65535.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from terracube.catalog.registry import RadiometryKind
from terracube.catalog.stac.items import Conversion
from terracube.pipeline.radiometry import convert

EVERY_DN = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)


@pytest.mark.parametrize("offset", [-1000.0, -1.0, 0.0, 1.0, 1000.0, -65534.0, 65534.0])
@pytest.mark.parametrize("fill", [0.0, 65535.0])
def test_s2_offset_fast_path_equals_conversion(offset: float, fill: float) -> None:
    conversion = Conversion(RadiometryKind.S2_BASELINE_OFFSET, dn_offset=offset)
    got = convert(conversion, EVERY_DN, fill)
    want = conversion.to_stored(EVERY_DN, nodata=fill)
    assert got.dtype == want.dtype == np.uint16
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fill", [0.0, 65535.0, 7.0])
def test_identity_fast_path_equals_conversion(fill: float) -> None:
    conversion = Conversion(RadiometryKind.IDENTITY, scale=2.75e-05, offset=-0.2)
    np.testing.assert_array_equal(
        convert(conversion, EVERY_DN, fill), conversion.to_stored(EVERY_DN, nodata=fill)
    )


def test_other_kinds_and_dtypes_use_the_conversion_itself() -> None:
    db = Conversion(RadiometryKind.LINEAR_TO_DB)
    linear = np.array([[0.0, 1.0, 10.0, math.nan]], dtype=np.float32)
    np.testing.assert_array_equal(
        convert(db, linear, math.nan), np.array([[math.nan, 0.0, 10.0, math.nan]], np.float32)
    )
    odd = Conversion(RadiometryKind.S2_BASELINE_OFFSET, dn_offset=-0.5)  # not whole DN
    np.testing.assert_array_equal(convert(odd, EVERY_DN, 0.0), odd.to_stored(EVERY_DN, nodata=0))
