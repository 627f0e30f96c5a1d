"""Per-period composites of masked observations, with valid fraction and provenance.

Default: the per-pixel, per-band median of the clear observations. With an even
count the median is the mean of the two middle values; for integer storage
dtypes that mean is rounded half to even (numpy `rint`), so 100 and 103 give
102 and 100 and 101 give 100 — unbiased over many pixels, and exact whenever
the two middle values are equal. Floats (S1 dB) keep the mean.

Option `best`: scenes ordered by their clear fraction over the tile (ties keep
the plan's rank order); each pixel takes the first scene that is clear there,
so the clearest scene dominates and later ones only fill its gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

CompositeMethod = Literal["median", "best"]


@dataclass(frozen=True)
class Composite:
    """One period of one group: pixels, valid fraction and which observations contributed."""

    values: np.ndarray
    """(bands, rows, cols) in the storage dtype; nodata where no clear observation."""
    valid_fraction: float
    """Share of pixels with at least one clear observation (0 = missing timestep)."""
    used: tuple[int, ...]
    """Indices (into the observations given) that gave at least one pixel."""


def composite(
    stored: np.ndarray,
    valid: np.ndarray,
    nodata: float,
    method: CompositeMethod = "median",
) -> Composite:
    """Composite (obs, bands, rows, cols) values where `valid` (obs, rows, cols) is True.

    A band value equal to nodata inside a valid observation (e.g. an optional band
    a product lacks) is ignored for that band only.
    """
    if stored.ndim != 4 or valid.shape != (stored.shape[0], *stored.shape[2:]):
        raise ValueError(
            f"composite wants values (obs, bands, rows, cols) and valid (obs, rows, cols), "
            f"got {stored.shape} and {valid.shape}"
        )
    n_obs, n_bands, rows, cols = stored.shape
    if n_obs == 0:
        return Composite(np.full((n_bands, rows, cols), nodata, stored.dtype), 0.0, ())
    band_ok = valid[:, None] & _has_data(stored, nodata)
    any_ok = band_ok.any(axis=1)
    fraction = float(any_ok.any(axis=0).mean())
    if method == "median":
        values = _median(stored, band_ok, nodata)
        used = tuple(int(i) for i in np.flatnonzero(any_ok.reshape(n_obs, -1).any(axis=1)))
    elif method == "best":
        values, used = _best(stored, band_ok, any_ok, nodata)
    else:
        raise ValueError(f"unknown composite method {method!r}; use 'median' or 'best'")
    return Composite(values, fraction, used)


def _has_data(values: np.ndarray, nodata: float) -> np.ndarray:
    return ~np.isnan(values) if np.isnan(nodata) else values != nodata


def _median(stored: np.ndarray, ok: np.ndarray, nodata: float) -> np.ndarray:
    """Masked median along obs: invalid values become the largest value (so they sort
    last), obs are sorted, and each pixel takes the middle of its valid count.

    Integers sort in their own dtype with the dtype's maximum as the stand-in (a
    valid maximum ties with it and is the same number, so the order is still right);
    floats in float64 with +inf. Up to SORTING_NETWORK_MAX observations (the usual
    2-7 scenes of a period) are sorted by a min/max network over whole arrays, 3-5x
    faster than numpy's sort along a short, strided axis.
    """
    integer = stored.dtype.kind in "ui"
    if integer:
        work = stored.copy()
        work[~ok] = np.iinfo(stored.dtype).max
    else:
        work = stored.astype(np.float64)
        work[~ok] = np.inf
    rows = _sorted_obs(work)
    count = _count(ok)
    low = _pick(rows, (count - (count > 0)) // 2)  # (count - 1) // 2, never below 0
    high = _pick(rows, count // 2)
    if integer:  # mean of the two middle values, rounded half to even, in integers
        total = low.astype(np.int64) + high
        half = total >> 1
        mid = half + ((total & 1) & (half & 1))
    else:
        mid = (low + high) / 2
    return np.where(count > 0, mid, nodata).astype(stored.dtype)


SORTING_NETWORK_MAX = 8


def _count(ok: np.ndarray) -> np.ndarray:
    """ok.sum(axis=0), accumulated in uint8 when it fits (a bool sum widens to int64)."""
    if ok.shape[0] > np.iinfo(np.uint8).max:
        return ok.sum(axis=0)
    count = np.zeros(ok.shape[1:], dtype=np.uint8)
    for row in ok:
        np.add(count, row, out=count, casting="unsafe")
    return count


def _sorted_obs(work: np.ndarray) -> list[np.ndarray]:
    """The obs of `work` (obs, ...) sorted per element, as a list of arrays (obs first)."""
    n = work.shape[0]
    if n > SORTING_NETWORK_MAX:
        work.sort(axis=0)
        return list(work)
    rows = [work[i] for i in range(n)]
    scratch = np.empty_like(rows[0]) if n > 1 else None
    for rnd in range(n):  # odd-even transposition: n rounds sort n values
        for i in range(rnd % 2, n - 1, 2):
            np.minimum(rows[i], rows[i + 1], out=scratch)
            np.maximum(rows[i], rows[i + 1], out=rows[i + 1])
            rows[i], scratch = scratch, rows[i]
    return rows


def _pick(rows: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Per element, rows[index] (index has the shape of one row)."""
    out = rows[0].copy()
    for i in range(1, len(rows)):
        np.copyto(out, rows[i], where=index == i)
    return out


def _best(
    stored: np.ndarray, band_ok: np.ndarray, any_ok: np.ndarray, nodata: float
) -> tuple[np.ndarray, tuple[int, ...]]:
    clear_share = any_ok.reshape(any_ok.shape[0], -1).mean(axis=1)
    order = sorted(range(len(clear_share)), key=lambda i: -clear_share[i])
    out = np.full(stored.shape[1:], nodata, dtype=stored.dtype)
    filled = np.zeros(stored.shape[1:], dtype=bool)
    used: list[int] = []
    for i in order:
        take = band_ok[i] & ~filled
        if take.any():
            out[take] = stored[i][take]
            filled |= take
            used.append(i)
    return out, tuple(sorted(used))


def split_periods(period_of_obs: Sequence[int], n_periods: int) -> list[list[int]]:
    """Observation indices of every period, in the order given (plan rank order)."""
    groups: list[list[int]] = [[] for _ in range(n_periods)]
    for i, period in enumerate(period_of_obs):
        groups[period].append(i)
    return groups
