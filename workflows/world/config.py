"""Size presets and fixed facts of the synthetic world.

The world sits around 47 N across the 6 E boundary between UTM zones 31 and 32
so that every multi-zone code path is exercised. Everything that makes the
pipeline's answer exact hangs on `BLOCK_M`: land cover, clouds and every value
are constant on 120 m blocks aligned to multiples of 120 m in each zone CRS,
and every raster origin is a multiple of 120 m (hence of 10/20/30/60 m too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.grid import Tile, cover

BLOCK_M = 120
"""Edge of the blocks on which land cover and clouds are constant (multiple of 10/20/30/40/60)."""

CENTER_LON, CENTER_LAT = 6.0, 47.0
"""Reference point of the geographic land-cover field (on the zone 31/32 boundary)."""

MARGIN_TILES = 1
"""Scene extent = planned tiles grown by this many tiles on every side (AOI well inside)."""

WorldSizeName = Literal["test", "demo"]


@dataclass(frozen=True)
class WorldSize:
    """How big a world to build: AOI, number of monthly periods, name."""

    name: str
    aoi_bbox: tuple[float, float, float, float]
    periods: int
    samples_per_shard: int
    """Shards of the ready build.yaml: small enough that every worker gets shards."""
    start: date = date(2022, 1, 1)


SIZES: dict[str, WorldSize] = {
    # 2 tiles per zone, 3 monthly periods: small enough for the test suite on one core.
    "test": WorldSize("test", (5.99, 46.99, 6.01, 47.01), periods=3, samples_per_shard=1),
    # 20 tiles over both zones, the default 12 monthly periods.
    "demo": WorldSize("demo", (5.95, 46.96, 6.05, 47.04), periods=12, samples_per_shard=2),
}


def world_size(size: str) -> WorldSize:
    """The preset named `size`, with an error listing the valid names."""
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown world size {size!r}; use one of: {', '.join(SIZES)}") from None


@dataclass(frozen=True)
class ZoneGrid:
    """A zone's scene extent as a grid of 120 m blocks (origin at the top-left corner)."""

    epsg: int
    x0: int
    y_top: int
    blocks_x: int
    blocks_y: int

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return (
            self.x0,
            self.y_top - self.blocks_y * BLOCK_M,
            self.x0 + self.blocks_x * BLOCK_M,
            self.y_top,
        )

    def shape(self, resolution: int) -> tuple[int, int]:
        """(rows, cols) of the scene raster at `resolution` metres."""
        factor = _block_factor(resolution)
        return (self.blocks_y * factor, self.blocks_x * factor)

    def transform(self, resolution: int) -> tuple[float, float, float, float, float, float]:
        """GDAL-ordered affine coefficients (a, b, c, d, e, f) as STAC `proj:transform` writes them."""
        _block_factor(resolution)
        return (float(resolution), 0.0, float(self.x0), 0.0, -float(resolution), float(self.y_top))


def _block_factor(resolution: int) -> int:
    if resolution <= 0 or BLOCK_M % resolution:
        raise ValueError(f"resolution {resolution} m must divide the {BLOCK_M} m block")
    return BLOCK_M // resolution


def planned_tiles(size: WorldSize) -> list[Tile]:
    """Tiles of the AOI, as the pipeline will plan them."""
    return cover(size.aoi_bbox)


def zone_grids(tiles: list[Tile]) -> list[ZoneGrid]:
    """Per zone: the planned tiles' extent grown by the margin and snapped out to 120 m."""
    grids = []
    for epsg in sorted({t.epsg for t in tiles}):
        mine = [t for t in tiles if t.epsg == epsg]
        minx = (min(t.col for t in mine) - MARGIN_TILES) * TILE_SIZE_M
        maxx = (max(t.col for t in mine) + 1 + MARGIN_TILES) * TILE_SIZE_M
        miny = (min(t.row for t in mine) - MARGIN_TILES) * TILE_SIZE_M
        maxy = (max(t.row for t in mine) + 1 + MARGIN_TILES) * TILE_SIZE_M
        x0 = math.floor(minx / BLOCK_M) * BLOCK_M
        x1 = math.ceil(maxx / BLOCK_M) * BLOCK_M
        y0 = math.floor(miny / BLOCK_M) * BLOCK_M
        y1 = math.ceil(maxy / BLOCK_M) * BLOCK_M
        grids.append(ZoneGrid(epsg, x0, y1, (x1 - x0) // BLOCK_M, (y1 - y0) // BLOCK_M))
    return grids


def period_starts(size: WorldSize) -> list[date]:
    """Monthly period starts from `size.start`."""
    starts = []
    year, month = size.start.year, size.start.month
    for _ in range(size.periods + 1):
        starts.append(date(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return starts


def period_of(when: datetime, starts: list[date]) -> int:
    """Index of the period holding `when`; `starts` has one extra entry, the end."""
    day = when.date()
    for index in range(len(starts) - 1):
        if starts[index] <= day < starts[index + 1]:
            return index
    raise ValueError(f"{when} lies outside the periods {starts[0]}..{starts[-1]}")


def revisit_dates(start: date, end: date, every_days: int, first_offset: int = 0) -> list[date]:
    """Acquisition days every `every_days` from `start + first_offset`, before `end`."""
    days = []
    day = start + timedelta(days=first_offset)
    while day < end:
        days.append(day)
        day += timedelta(days=every_days)
    return days
