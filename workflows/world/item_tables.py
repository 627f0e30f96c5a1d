"""Synthetic item tables at corpus scale: scene grids and revisit rates of the real sensors.

`benchmarks/plan_scale.py` and the planner's equivalence tests need item tables the
size of a worldwide search (millions of items) without a catalog to search. Each
modality here lays a grid of square scene footprints over every UTM zone its tiles
touch (and the neighbouring zones, so tiles near a boundary see scenes of both
CRSs, as real ones do) and revisits each footprint on a fixed schedule:

| modality | scene | grid step | per month | cloud |
|---|---|---|---|---|
| sentinel2_l2a | 109.8 km (an MGRS tile) | 100 km | 3 | uniform 0-100 |
| landsat_c2l2 | 185 km (a WRS-2 scene) | 160 km | 2 | uniform 0-100 |
| sentinel1 | 250 km (an IW slice) | 200 km | 3 | none |

Records are real normalised items (`templates`: one per modality, from the synthetic
world's catalog) with id, time, footprint, CRS and cloud cover replaced, made only
when a plan writes the item, so a table of two million items costs its columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from terracube.catalog.grid import Tile, cover
from terracube.catalog.plan_items import ItemTable, datetime_ns
from terracube.catalog.stac.item_records import item_to_record
from terracube.catalog.stac.items import NormalizedItem, normalize_item


@dataclass(frozen=True)
class SceneGrid:
    modality: str
    prefix: str
    size_m: float
    step_m: float
    per_month: int
    cloudy: bool


SCENE_GRIDS = (
    SceneGrid("sentinel2_l2a", "S2X", 109_800.0, 100_000.0, 3, True),
    SceneGrid("landsat_c2l2", "LCX", 185_000.0, 160_000.0, 2, True),
    SceneGrid("sentinel1", "S1X", 250_000.0, 200_000.0, 3, False),
)
WORLD_COLLECTIONS = {
    "sentinel2_l2a": "sentinel-2-l2a",
    "landsat_c2l2": "landsat-c2-l2",
    "sentinel1": "sentinel-1-rtc",
}


def templates(world_ndjson: Mapping[str, Path]) -> dict[str, NormalizedItem]:
    """The first item of each modality's collection in a synthetic world, normalised."""
    out = {}
    for name, collection in WORLD_COLLECTIONS.items():
        path = world_ndjson[collection]
        first = json.loads(path.read_text().splitlines()[0])
        out[name] = normalize_item(first, base_href=path.resolve().as_uri())
    return out


class TemplateRecords:
    """records[i]: the template's record with row i's id, time, footprint, CRS, cloud."""

    VARYING = ("id", "datetime", "geometry", "epsg", "cloud_cover")

    def __init__(self, template: NormalizedItem, table: ItemTable) -> None:
        base = {k: v for k, v in item_to_record(template).items() if k not in self.VARYING}
        self.head = json.dumps(base)[:-1]
        self.table = table
        self._rings: dict[int, str] = {}
        """JSON of each footprint's geometry, by object: the revisits of a scene share one."""

    def __len__(self) -> int:
        return len(self.table.ids)

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, int | np.integer):
            return self._one(int(row))
        return np.array([self._one(int(r)) for r in np.arange(len(self))[row]], dtype=object)

    def _one(self, row: int) -> str:
        t = self.table
        when = _EPOCH + timedelta(microseconds=int(t.datetime_ns[row]) // 1000)
        cloud = float(t.cloud[row])
        shape = t.geometry[row]
        geometry = self._rings.get(id(shape))
        if geometry is None:
            ring = shapely.get_coordinates(shape).round(9).tolist()
            geometry = json.dumps({"type": "Polygon", "coordinates": [ring]})
            self._rings[id(shape)] = geometry
        # the same text json.dumps gives for the dict of the five fields, built directly
        return (
            f'{self.head}, "id": {json.dumps(str(t.ids[row]))}, '
            f'"datetime": "{when.isoformat()}", "geometry": {geometry}, '
            f'"epsg": {int(t.epsg[row])}, "cloud_cover": {json.dumps(None if np.isnan(cloud) else cloud)}}}'
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _zones(tiles: Sequence[Tile]) -> dict[int, np.ndarray]:
    """epsg -> lon/lat centres of the tiles that zone's scenes may cover (own zone and
    the neighbours on either side, same hemisphere)."""
    centres = np.array([t.center_lonlat for t in tiles], dtype=float).reshape(-1, 2)
    epsg = np.array([t.epsg for t in tiles])
    out: dict[int, list[np.ndarray]] = {}
    for code in np.unique(epsg):
        base, zone = divmod(int(code), 100)
        for near in (zone - 1, zone, zone + 1):
            if 1 <= near <= 60:
                out.setdefault(base * 100 + near, []).append(centres[epsg == code])
    return {k: np.concatenate(v) for k, v in out.items()}


def _cells(grid: SceneGrid, epsg: int, lonlat: np.ndarray) -> np.ndarray:
    """(i, j) of the grid cells of `epsg` that hold one of the points, eastings 100-900 km."""
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lonlat[:, 0], lonlat[:, 1])
    x, y = np.asarray(x), np.asarray(y)
    found = []
    reach = int(np.ceil(grid.size_m / grid.step_m))
    for di in range(reach):
        for dj in range(reach):
            i = np.floor((x - 100_000.0) / grid.step_m).astype(np.int64) - di
            j = np.floor(y / grid.step_m).astype(np.int64) - dj
            x0, y0 = 100_000.0 + i * grid.step_m, j * grid.step_m
            inside = (x >= x0) & (x < x0 + grid.size_m) & (y >= y0) & (y < y0 + grid.size_m)
            inside &= (i >= 0) & (x0 + grid.size_m <= 1_000_000.0) & np.isfinite(x)
            found.append(np.column_stack([i[inside], j[inside]]))
    cells = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    return np.unique(cells, axis=0)


def _footprints(grid: SceneGrid, epsg: int, cells: np.ndarray) -> np.ndarray:
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    steps = np.linspace(0.0, 1.0, 5)[:-1]
    out = []
    for i, j in cells:
        x0, y0 = 100_000.0 + i * grid.step_m, j * grid.step_m
        x1, y1 = x0 + grid.size_m, y0 + grid.size_m
        xs = np.concatenate(
            [x0 + steps * (x1 - x0), np.full(4, x1), x1 - steps * (x1 - x0), np.full(4, x0)]
        )
        ys = np.concatenate(
            [np.full(4, y0), y0 + steps * (y1 - y0), np.full(4, y1), y1 - steps * (y1 - y0)]
        )
        lon, lat = to_lonlat.transform(xs, ys)
        out.append(shapely.Polygon(np.column_stack([lon, lat])))
    return np.array(out, dtype=object)


def item_tables(
    tiles: Sequence[Tile],
    start: date,
    months: int,
    record_templates: Mapping[str, NormalizedItem],
    seed: int = 0,
) -> dict[str, ItemTable]:
    """One table per modality of SCENE_GRIDS: every scene footprint meeting a tile's
    zone neighbourhood, revisited `per_month` times in each of `months` months."""
    rng = np.random.default_rng(seed)
    zones = _zones(tiles)
    out = {}
    for grid in SCENE_GRIDS:
        ids, times, epsgs, geoms, clouds = [], [], [], [], []
        for epsg, points in sorted(zones.items()):
            cells = _cells(grid, epsg, points)
            if not len(cells):
                continue
            shapes = _footprints(grid, epsg, cells)
            for m in range(months):
                first = date(
                    start.year + (start.month - 1 + m) // 12, (start.month - 1 + m) % 12 + 1, 1
                )
                for k in range(grid.per_month):
                    day = 1 + k * (28 // grid.per_month) + (cells[:, 0] + cells[:, 1]) % 5
                    when = [
                        datetime(first.year, first.month, int(d), 10, 30, tzinfo=UTC) for d in day
                    ]
                    ids += [
                        f"{grid.prefix}_{epsg}_{i:03d}_{j:05d}_{w:%Y%m%d}"
                        for (i, j), w in zip(cells, when, strict=True)
                    ]
                    times += [datetime_ns(w) for w in when]
                    epsgs.append(np.full(len(cells), epsg))
                    geoms.append(shapes)
                    clouds.append(
                        rng.uniform(0, 100, len(cells))
                        if grid.cloudy
                        else np.full(len(cells), np.nan)
                    )
        table = _table(ids, grid, times, epsgs, clouds, geoms, record_templates[grid.modality])
        out[grid.modality] = table
    return out


def _table(
    ids: list[str],
    grid: SceneGrid,
    times: list[int],
    epsgs: list[np.ndarray],
    clouds: list[np.ndarray],
    geoms: list[np.ndarray],
    template: NormalizedItem,
) -> ItemTable:
    n = len(ids)
    columns = dict(
        ids=np.array(ids, dtype=object),
        collection=np.full(n, template.collection, dtype=object),
        datetime_ns=np.array(times, dtype=np.int64),
        epsg=np.concatenate(epsgs).astype(np.int64) if epsgs else np.zeros(0, np.int64),
        cloud=np.concatenate(clouds).astype(float) if clouds else np.zeros(0),
        geometry=np.concatenate(geoms) if geoms else np.zeros(0, dtype=object),
    )
    draft = ItemTable(**columns, records=np.empty(n, dtype=object))
    records = TemplateRecords(template, draft)
    return ItemTable(**columns, records=records)


def worldwide_tiles(n: int, seed: int = 0) -> list[Tile]:
    """`n` distinct tiles at uniformly random places between 56 S and 72 N, sorted (away
    from the antimeridian, where these square scene grids would wrap)."""
    from terracube.catalog.grid import tile_at

    rng = np.random.default_rng(seed)
    found: set[Tile] = set()
    while len(found) < n:
        lon = rng.uniform(-170.0, 170.0, n)
        lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-56)), np.sin(np.radians(72)), n)))
        for a, b in zip(lon, lat, strict=True):
            found.add(tile_at(float(a), float(b)))
            if len(found) == n:
                break
    return sorted(found)


def contiguous_tiles(n: int, lon: float = 12.0, lat: float = 48.0) -> list[Tile]:
    """About `n` tiles of one square AOI centred on (lon, lat) (across the 32/33 zone
    boundary by default), the first `n` in grid order."""
    side_km = 2.56 * np.sqrt(n) * 1.05
    dlat = side_km / 111.0
    dlon = side_km / (111.0 * np.cos(np.radians(lat)))
    tiles = cover((lon - dlon / 2, lat - dlat / 2, lon + dlon / 2, lat + dlat / 2))
    return tiles[:n]
