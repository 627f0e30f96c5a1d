"""Acquisition planning (pure): which scene of which mission exists on which day.

Revisits follow the missions in 2022: Sentinel-2A/2B together every 5 days,
Sentinel-1A alone every 12 days (Sentinel-1B failed in December 2021), and
Landsat 8 and 9 alternating every 8 days. There is one scene per (zone, date)
covering the zone's whole extent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from terracube.workflows.world.config import ZoneGrid, period_of, revisit_dates

S2_REVISIT_DAYS = 5
S1_REVISIT_DAYS = 12
LANDSAT_REVISIT_DAYS = 8
ALL_CLOUD_PERIOD = 1
"""Period in which every Sentinel-2 scene (both zones) is fully clouded, for the 'empty' path."""

_LATITUDE_BAND = "T"  # 40-48 N
_MGRS_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_MGRS_ROWS = "ABCDEFGHJKLMNPQRSTUV"


@dataclass(frozen=True)
class Scene:
    """One acquisition: an item of one collection over one zone's extent."""

    modality: str
    collection: str
    item_id: str
    grid: ZoneGrid
    when: datetime
    period: int
    platform: str
    ordinal: int
    """Index of the scene within its (modality, zone), used to seed its randomness."""
    baseline: str = ""
    orbit_state: str = ""
    relative_orbit: int = 0
    wrs_path: int = 0
    wrs_row: int = 0


def mgrs_square(grid: ZoneGrid) -> str:
    """MGRS grid-zone + 100 km square of the extent's centre, e.g. '31TGN'."""
    zone = grid.epsg % 100
    minx, miny, maxx, maxy = grid.bounds
    column = _MGRS_COLUMNS[(zone - 1) % 3][int((minx + maxx) / 2 // 100_000) - 1]
    row_offset = 5 if zone % 2 == 0 else 0
    row = _MGRS_ROWS[(int((miny + maxy) / 2 // 100_000) + row_offset) % 20]
    return f"{zone:02d}{_LATITUDE_BAND}{column}{row}"


def s2_baseline(index: int, count: int) -> str:
    """First half of the dates before baseline 04.00, then 04.00, then 05.09."""
    if index < count // 2:
        return "03.01"
    return "04.00" if index < (3 * count) // 4 else "05.09"


def plan_sentinel2(grids: list[ZoneGrid], starts: list[date]) -> list[Scene]:
    days = revisit_dates(starts[0], starts[-1], S2_REVISIT_DAYS)
    scenes = []
    for grid in grids:
        for index, day in enumerate(days):
            platform = "sentinel-2a" if index % 2 == 0 else "sentinel-2b"
            when = datetime.combine(day, time(10, 27, 9, 24000), UTC)
            item_id = f"S2{platform[-1].upper()}_{mgrs_square(grid)}_{day:%Y%m%d}_0_L2A"
            scenes.append(
                Scene(
                    "sentinel2_l2a",
                    "sentinel-2-l2a",
                    item_id,
                    grid,
                    when,
                    period_of(when, starts),
                    platform,
                    index,
                    baseline=s2_baseline(index, len(days)),
                    relative_orbit=108 if grid.epsg % 2 else 8,
                )
            )
    return scenes


def plan_sentinel1(grids: list[ZoneGrid], starts: list[date]) -> list[Scene]:
    days = revisit_dates(starts[0], starts[-1], S1_REVISIT_DAYS, first_offset=2)
    scenes = []
    for grid in grids:
        for index, day in enumerate(days):
            ascending = index % 2 == 1
            clock = time(17, 33, 41) if ascending else time(5, 46, 12)
            start = datetime.combine(day, clock, UTC)
            stop = start + timedelta(seconds=25)
            absolute = 41_283 + (day - date(2022, 1, 3)).days * 175 // 12
            datatake = 0x04E84B + (day - date(2022, 1, 3)).days * 97 + grid.epsg % 100
            item_id = (
                f"S1A_IW_GRDH_1SDV_{start:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}_"
                f"{absolute:06d}_{datatake:06X}_rtc"
            )
            scenes.append(
                Scene(
                    "sentinel1",
                    "sentinel-1-rtc",
                    item_id,
                    grid,
                    start,
                    period_of(start, starts),
                    "SENTINEL-1A",
                    index,
                    orbit_state="ascending" if ascending else "descending",
                    relative_orbit=88 if ascending else 37,
                )
            )
    return scenes


def plan_landsat(grids: list[ZoneGrid], starts: list[date]) -> list[Scene]:
    days = revisit_dates(starts[0], starts[-1], LANDSAT_REVISIT_DAYS, first_offset=3)
    scenes = []
    for grid in grids:
        path = 196 if grid.epsg == 32631 else 195 - (grid.epsg - 32632)
        for index, day in enumerate(days):
            sensor = "LC08" if index % 2 == 0 else "LC09"
            when = datetime.combine(day, time(10, 18, 27, 530560), UTC)
            item_id = f"{sensor}_L2SP_{path:03d}027_{day:%Y%m%d}_02_T1"
            scenes.append(
                Scene(
                    "landsat_c2l2",
                    "landsat-c2-l2",
                    item_id,
                    grid,
                    when,
                    period_of(when, starts),
                    "landsat-8" if sensor == "LC08" else "landsat-9",
                    index,
                    wrs_path=path,
                    wrs_row=27,
                )
            )
    return scenes
