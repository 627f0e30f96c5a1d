"""Ask GDAL itself which source pixels its nearest warp takes where centres sit on edges.

For target centres exactly on a source pixel edge, GDAL's choice depends on the
floating-point rounding inside its transformer, which no closed formula
reproduces for every grid (see grid_index). So instead of guessing, the probe
warps an index-coded stand-in of the asset through the very same WarpedVRT
stackstac would build (the asset's exact geotransform and size, the tile grid
from stackstac's own RasterSpec, nearest) and reads back which source column and
row landed on each target pixel. The stand-in is a sparse in-memory GeoTIFF
holding codes only around the tile's window, so a 7800 x 7800 scene costs a few
small blocks, and the answer is cached per (grid, tile, resolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from stackstac.raster_spec import RasterSpec
from terracube.catalog.grid import Tile
from terracube.pipeline.read.grid_index import covering_window


@dataclass(frozen=True)
class GdalNearestProbe:
    """A `grid_index.TieOracle` backed by GDAL's warper.

    `masked_by_nodata` mirrors the asset: stackstac adds an alpha band to the VRT
    when the file has no nodata, and the probe builds the same VRT.
    """

    masked_by_nodata: bool = True

    def __call__(
        self, transform: tuple[float, ...], shape: tuple[int, int], tile: Tile, resolution: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        return _probe(transform, shape, tile, resolution, self.masked_by_nodata)


@lru_cache(maxsize=1024)
def _probe(
    transform: tuple[float, ...],
    shape: tuple[int, int],
    tile: Tile,
    resolution: float,
    masked_by_nodata: bool,
) -> tuple[np.ndarray, np.ndarray] | None:
    affine = Affine(*transform)
    window = covering_window(affine, shape, tile.bounds)
    if window is None:
        return None
    # one pixel of margin: a choice just outside the covering window is still seen
    row0, col0 = max(0, int(window.row_off) - 1), max(0, int(window.col_off) - 1)
    row1 = min(shape[0], int(window.row_off + window.height) + 1)
    col1 = min(shape[1], int(window.col_off + window.width) + 1)
    if max(row1 - row0, col1 - col0) >= np.iinfo(np.uint16).max:
        return None
    rows_code = np.repeat(np.arange(1, row1 - row0 + 1, dtype=np.uint16)[:, None], col1 - col0, 1)
    cols_code = np.repeat(np.arange(1, col1 - col0 + 1, dtype=np.uint16)[None, :], row1 - row0, 0)
    spec = RasterSpec(tile.epsg, tile.bounds, (resolution, resolution))
    profile = {
        "driver": "GTiff",
        "width": shape[1],
        "height": shape[0],
        "count": 2,
        "dtype": "uint16",
        "crs": f"EPSG:{tile.epsg}",
        "transform": affine,
        "nodata": 0 if masked_by_nodata else None,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "sparse_ok": True,
    }
    target = Window(0, 0, spec.shape[1], spec.shape[0])
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            written = Window(col0, row0, col1 - col0, row1 - row0)
            ds.write(np.stack([rows_code, cols_code]), window=written)
        with (
            mem.open() as ds,
            WarpedVRT(
                ds,
                resampling=Resampling.nearest,
                add_alpha=not masked_by_nodata,
                **spec.vrt_params,
            ) as vrt,
        ):
            got = vrt.read(window=target, masked=True)
    return _separable(got, row0, col0)


def _separable(
    got: np.ma.MaskedArray, row0: int, col0: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row and per-column source indices, or None if GDAL's choice is not a product."""
    rows_code = np.ma.filled(got[0], 0).astype(np.int64)
    cols_code = np.ma.filled(got[1], 0).astype(np.int64)
    valid = (rows_code > 0) & (cols_code > 0)
    valid_rows, valid_cols = valid.any(axis=1), valid.any(axis=0)
    if not np.array_equal(valid, np.outer(valid_rows, valid_cols)):
        return None
    if not valid.any():
        return np.full(valid.shape[0], -1), np.full(valid.shape[1], -1)
    first_col, first_row = int(np.argmax(valid_cols)), int(np.argmax(valid_rows))
    rows = np.where(valid_rows, rows_code[:, first_col] - 1 + row0, -1)
    cols = np.where(valid_cols, cols_code[first_row] - 1 + col0, -1)
    block = np.ix_(valid_rows, valid_cols)
    same_rows = np.all(rows_code[block] == rows_code[:, first_col][valid_rows][:, None])
    same_cols = np.all(cols_code[block] == cols_code[first_row][valid_cols][None, :])
    return (rows, cols) if same_rows and same_cols else None
