"""The vectorised median composite equals a per-pixel reference, for every observation count.

The sorting network (up to 8 observations) and numpy's sort (more) must give the
median of the clear values only, rounded half to even for integers, with the
dtype's maximum and +inf as legitimate values that still sort correctly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from terracube.pipeline.composite import SORTING_NETWORK_MAX, composite


def _reference(stored: np.ndarray, valid: np.ndarray, nodata: float) -> np.ndarray:
    n_obs, n_bands, rows, cols = stored.shape
    out = np.full((n_bands, rows, cols), nodata, dtype=stored.dtype)
    integer = stored.dtype.kind in "ui"
    for b in range(n_bands):
        for r in range(rows):
            for c in range(cols):
                values = [
                    float(stored[o, b, r, c])
                    for o in range(n_obs)
                    if valid[o, r, c]
                    and not (
                        math.isnan(stored[o, b, r, c])
                        if math.isnan(nodata)
                        else stored[o, b, r, c] == nodata
                    )
                ]
                if not values:
                    continue
                values.sort()
                k = len(values)
                mid = (values[(k - 1) // 2] + values[k // 2]) / 2
                out[b, r, c] = round(mid) if integer else mid  # round(): half to even
    return out


@pytest.mark.parametrize("n_obs", [1, 2, 3, 4, 5, 7, SORTING_NETWORK_MAX, SORTING_NETWORK_MAX + 3])
def test_uint16_median_equals_reference(n_obs: int) -> None:
    rng = np.random.default_rng(n_obs)
    stored = rng.integers(0, 8, (n_obs, 2, 9, 11)).astype(np.uint16) * 9000  # many ties
    stored[rng.random(stored.shape) < 0.1] = 65535  # valid maximum: ties with the stand-in
    stored[rng.random(stored.shape) < 0.1] = 0  # nodata inside a clear observation
    valid = rng.random((n_obs, 9, 11)) < 0.7
    got = composite(stored, valid, 0).values
    np.testing.assert_array_equal(got, _reference(stored, valid, 0))
    assert (got != 0).any()
    assert (got == 0).any() or n_obs > 3  # pixels with no clear value, where likely


@pytest.mark.parametrize("n_obs", [1, 2, 3, 6, SORTING_NETWORK_MAX + 1])
def test_float_median_equals_reference(n_obs: int) -> None:
    rng = np.random.default_rng(100 + n_obs)
    stored = rng.normal(-12, 5, (n_obs, 2, 7, 8)).astype(np.float32)
    stored[rng.random(stored.shape) < 0.15] = np.nan
    valid = rng.random((n_obs, 7, 8)) < 0.8
    got = composite(stored, valid, math.nan).values
    want = _reference(stored, valid, math.nan)
    np.testing.assert_array_equal(got, want)  # NaN where no clear value, equal elsewhere


def test_even_count_rounds_half_to_even() -> None:
    stored = np.array([100, 101, 103, 104], dtype=np.uint16).reshape(4, 1, 1, 1)
    pairs = {(0, 1): 100, (0, 2): 102, (1, 2): 102, (2, 3): 104, (1, 3): 102}
    for (a, b), want in pairs.items():
        valid = np.zeros((4, 1, 1), bool)
        valid[[a, b]] = True
        assert composite(stored, valid, 0).values.item() == want, (a, b)
