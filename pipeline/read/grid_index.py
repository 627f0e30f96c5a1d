"""Nearest resampling between two north-up grids of one CRS as index arithmetic.

When an asset shares the tile's CRS and both grids are axis-aligned, GDAL's
nearest warp takes, for every target pixel, the source pixel that contains the
target pixel's centre. Along one axis the centre of target pixel j lies at source
pixel coordinate

    u_j = (target_origin + (j + 1/2) * target_step - source_origin) / source_step

and the source index is floor(u_j). Where every u_j is farther than 1e-6 px from
an integer, GDAL's own rounding (~1e-9 px) cannot flip that floor, so the index
arrays are pure arithmetic.

A centre can also fall exactly on a source pixel edge (30 m -> 20 m: the centre
of 20 m pixel 0 of a tile 7760 m east of the scene origin is at 259.0 source
pixels). There GDAL's choice depends on the rounding inside its transformer: on
the 30 -> 20 and 60 -> 40 m lattices it took the upper pixel every time we
measured, but on other grids (300 -> 10 m, 42 -> 20 m, 455.5 -> 20 m) a centre on
the raster's first edge went either way. No closed rule reproduces that, so ties
are settled by a `TieOracle` (`nearest_probe.GdalNearestProbe`: GDAL warps an
index-coded raster with the asset's exact grid), and without one the caller keeps
the warp. tests/pipeline/test_grid_index.py compares the result with stackstac's
WarpedVRT on tie-heavy grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
from affine import Affine
from rasterio.windows import Window, from_bounds
from terracube.catalog.grid import Tile

NEAR_EDGE_PX = 1e-6
"""A centre closer than this to a source pixel edge needs exact arithmetic (or the warp)."""


def covering_window(
    transform: Affine, shape: tuple[int, int], bounds: tuple[float, float, float, float]
) -> Window | None:
    """The asset's pixels that cover `bounds` (whole pixels, clipped to the asset); None if none.

    This is the window the raw-read floor reads and the window the direct path reads.
    """
    window = from_bounds(*bounds, transform=transform)
    col0 = max(0, math.floor(window.col_off))
    row0 = max(0, math.floor(window.row_off))
    col1 = min(shape[1], math.ceil(window.col_off + window.width))
    row1 = min(shape[0], math.ceil(window.row_off + window.height))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def nearest_indices(
    source_origin: float, source_step: float, target_origin: float, target_step: float, n: int
) -> np.ndarray | None:
    """Source pixel index (may lie outside the source) of each of n target pixels, as GDAL's
    nearest picks it; None when some centre lies within NEAR_EDGE_PX of a source pixel
    edge, where only GDAL's own arithmetic decides (see `TieOracle`).

    Steps are signed (negative for rows of a north-up grid) and must not be zero.
    """
    if source_step == 0 or target_step == 0:
        raise ValueError(f"pixel steps must be non-zero, got {source_step} and {target_step}")
    j = np.arange(n, dtype=np.float64)
    u = (target_origin - source_origin + (j + 0.5) * target_step) / source_step
    if np.all(np.abs(u - np.rint(u)) > NEAR_EDGE_PX):
        return np.floor(u).astype(np.int64)
    return None


class TieOracle(Protocol):
    """Asks GDAL which source pixels its nearest warp takes (nearest_probe.GdalNearestProbe)."""

    def __call__(
        self, transform: tuple[float, ...], shape: tuple[int, int], tile: Tile, resolution: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, cols): full-raster source index per target row / column, -1 outside;
        None when GDAL's choice is not separable into rows and columns."""
        ...

    def __hash__(self) -> int:
        """Oracles must be hashable: `_plan` caches plans per oracle (`lru_cache`)."""
        ...


@dataclass(frozen=True)
class DirectPlan:
    """How to put one asset on the tile grid without a warp: read `window`, then gather."""

    window: Window | None
    """None: the asset does not meet the tile, nothing to read."""
    rows: np.ndarray
    """Per target row, the row inside `window` to take; -1 = outside the asset (fill)."""
    cols: np.ndarray
    """Per target column, the column inside `window` to take; -1 = outside the asset (fill)."""
    _spans: tuple[slice, slice, slice | np.ndarray, slice | np.ndarray] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Precomputed once per cached plan: target spans and source selectors.
        rows, cols = _valid_span(self.rows), _valid_span(self.cols)
        spans = (rows, cols, _source(self.rows[rows]), _source(self.cols[cols]))
        object.__setattr__(self, "_spans", spans)

    def gather(self, data: np.ndarray, out: np.ndarray) -> None:
        """Write the target pixels the asset covers from `data` (the window) into `out`.

        The covered target rows (and columns) are contiguous; a pure shift is a slice
        copy, any other ratio two `take`s (4x faster than one fancy index on a 2-D array).
        """
        rows, cols, src_rows, src_cols = self._spans
        if isinstance(src_rows, slice) and isinstance(src_cols, slice):
            out[rows, cols] = data[src_rows, src_cols]
            return
        picked = data[src_rows] if isinstance(src_rows, slice) else data.take(src_rows, axis=0)
        out[rows, cols] = (
            picked[:, src_cols] if isinstance(src_cols, slice) else picked.take(src_cols, axis=1)
        )


def _valid_span(index: np.ndarray) -> slice:
    valid = np.flatnonzero(index >= 0)
    return slice(int(valid[0]), int(valid[-1]) + 1) if valid.size else slice(0, 0)


def _source(index: np.ndarray) -> slice | np.ndarray:
    """A slice when the indices are consecutive, else the indices."""
    if index.size and index[-1] - index[0] == index.size - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def plan_direct(
    transform: Affine,
    shape: tuple[int, int],
    epsg: int | None,
    tile: Tile,
    resolution: float,
    ties: TieOracle | None = None,
) -> DirectPlan | None:
    """The direct-read plan of an asset on `tile` at `resolution`, or None when only a warp
    is exact (other CRS, rotation or shear, or centres on source pixel edges and no
    `ties` oracle to settle them).

    Pure without `ties`: decides from the asset's grid alone.
    """
    if epsg is None or epsg != tile.epsg:
        return None
    return _plan(tuple(transform)[:6], tuple(shape), tile, float(resolution), ties)


@lru_cache(maxsize=4096)
def _plan(
    transform: tuple[float, ...],
    shape: tuple[int, int],
    tile: Tile,
    resolution: float,
    ties: TieOracle | None,
) -> DirectPlan | None:
    a, b, c, d, e, f = transform
    if b or d or a <= 0 or e >= 0:
        return None
    rows_n, cols_n = tile.shape(resolution)
    window = covering_window(Affine(*transform), shape, tile.bounds)
    if window is None:
        return DirectPlan(None, np.full(rows_n, -1), np.full(cols_n, -1))
    minx, _, _, maxy = tile.bounds
    cols = nearest_indices(c, a, minx, resolution, cols_n)
    rows = nearest_indices(f, e, maxy, -resolution, rows_n)
    if cols is None or rows is None:
        settled = ties(transform, shape, tile, resolution) if ties is not None else None
        if settled is None:
            return None
        rows, cols = settled
    rows = _relative(rows, shape[0], int(window.row_off), int(window.height))
    cols = _relative(cols, shape[1], int(window.col_off), int(window.width))
    if rows is None or cols is None:
        return None
    return DirectPlan(window, rows, cols)


def _relative(index: np.ndarray, size: int, start: int, length: int) -> np.ndarray | None:
    """Indices relative to the window, -1 outside the asset; None if one escapes the window
    or the covered targets are not one increasing run (neither happens for a covering
    window and a north-up grid; refuse rather than misread)."""
    inside = (index >= 0) & (index < size)
    rel = np.where(inside, index - start, -1)
    if np.any(inside & ((rel < 0) | (rel >= length))):
        return None
    covered = np.flatnonzero(inside)
    if covered.size and (
        covered[-1] - covered[0] != covered.size - 1 or np.any(np.diff(rel[covered]) < 0)
    ):
        return None
    rel.setflags(write=False)
    return rel
