"""Compiled pixel and token validity: run for every group of every batch in the workers.

In numpy each is a handful of whole-batch passes (compare, reduce over bands, AND; or
cast, pool, compare) with temporaries the size of the batch; here each is one pass.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def pixel_validity(
    values: np.ndarray, nodata: np.ndarray, nan: np.ndarray, present: np.ndarray, out: np.ndarray
) -> None:
    """`out` (L, H, W) := row l is `present` and every band of `values` (L, band, H, W)
    holds a value there: not equal to its band's `nodata` (same dtype as `values`), or not
    NaN where `nan[band]`. Absent rows' values are never read."""
    lead, bands, rows, cols = values.shape
    for i in range(lead):
        mask = out[i]
        mask[:] = present[i]
        if not present[i]:
            continue
        for b in range(bands):  # band-major: each pass is a vectorisable sweep of one plane
            plane, missing = values[i, b], nodata[b]
            if nan[b]:
                for y in range(rows):
                    for x in range(cols):
                        mask[y, x] &= plane[y, x] == plane[y, x]
            else:
                for y in range(rows):
                    for x in range(cols):
                        mask[y, x] &= plane[y, x] != missing


@numba.njit(cache=True, nogil=True)
def pooled_validity(valid: np.ndarray, q: int, need: int, out: np.ndarray) -> None:
    """`out` (B, T, H/q, W/q) := at least `need` of the q x q pixels of `valid` (B, T, H, W)
    under each cell are valid. The workers' token validity (see `RawBatch.token_valid`)."""
    batch, steps, rows, cols = out.shape
    width = valid.shape[3]
    column = np.zeros(width, np.int32)  # valid pixels per column over a row of cells
    for b in range(batch):
        for t in range(steps):
            for i in range(rows):
                column[:] = 0
                for y in range(i * q, i * q + q):
                    line = valid[b, t, y]
                    for x in range(width):  # contiguous: vectorised
                        column[x] += line[x]
                for j in range(cols):
                    count = 0
                    for x in range(j * q, j * q + q):
                        count += column[x]
                    out[b, t, i, j] = count >= need
