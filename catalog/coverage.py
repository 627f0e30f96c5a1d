"""How much of a tile a lon/lat footprint covers: the one definition planning uses.

The footprint is cut to the tile's lon/lat outline first (cheap, and it keeps a
250 km scene from being projected whole), projected into the tile's UTM zone, made
valid and clipped to the tile square. `coverage_of_pairs` runs the same GEOS calls
elementwise over arrays, so its values equal `tile_coverage`'s bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np
import shapely
from pyproj import Transformer
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.grid import Tile


@functools.lru_cache(maxsize=64)
def lonlat_to(epsg: int) -> Transformer:
    """One transformer per CRS: building one costs more than projecting a footprint."""
    return Transformer.from_crs(4326, epsg, always_xy=True)


def tile_coverage(geometry_lonlat: shapely.Geometry, tile: Tile) -> float:
    """Fraction (0-1) of the tile's square covered by a lon/lat footprint, in the tile CRS."""
    return coverage_in_tile(geometry_lonlat, tile, tile.footprint_lonlat())


def coverage_in_tile(
    geometry_lonlat: shapely.Geometry, tile: Tile, footprint: shapely.Geometry
) -> float:
    near = shapely.intersection(geometry_lonlat, footprint)
    if near.is_empty:
        return 0.0
    to_tile = lonlat_to(tile.epsg)

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = to_tile.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    projected = shapely.transform(near, project)
    square = shapely.box(*tile.bounds)
    covered = shapely.intersection(shapely.make_valid(projected), square).area
    return float(min(1.0, covered / (TILE_SIZE_M * TILE_SIZE_M)))


def coverage_of_pairs(
    geometries: np.ndarray, footprints: np.ndarray, epsg: np.ndarray, bounds: np.ndarray
) -> np.ndarray:
    """Fraction of each tile covered by each lon/lat geometry, elementwise: the operations
    of `plan._coverage` (intersect in lon/lat, project, make valid, clip to the square)."""
    out = np.zeros(len(geometries), dtype=np.float64)
    if not len(geometries):
        return out
    near = shapely.intersection(geometries, footprints)
    meets = ~shapely.is_empty(near)
    for code in np.unique(epsg[meets]):
        chosen = np.flatnonzero(meets & (epsg == code))
        to_tile = lonlat_to(int(code))

        def project(coords: np.ndarray, to_tile: Transformer = to_tile) -> np.ndarray:
            x, y = to_tile.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([x, y])

        projected = shapely.transform(near[chosen], project)
        b = bounds[chosen]
        squares = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
        covered = shapely.area(shapely.intersection(shapely.make_valid(projected), squares))
        out[chosen] = np.minimum(1.0, covered / (TILE_SIZE_M * TILE_SIZE_M))
    return out
