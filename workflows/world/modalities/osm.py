"""An OpenStreetMap extract (OSM API 0.6 XML) that agrees with the land cover.

Every one of the registry's 30 categories gets features, tagged with the
category's own TagRule and geometry kind, and placed on blocks of a fitting
class inside the planned tiles (wind turbines on cropland, buildings on
built-up, the runway on the airfield...). Roads cross the landscape, the river
follows the water's centreline. Coordinates are rounded to OSM's 7 decimals
before anything is recorded, so the truth and the file hold the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely
from pyproj import Transformer
from terracube.catalog.grid import Tile
from terracube.catalog.registry import OSM_CATEGORIES, GeometryKind, OsmCategory
from terracube.workflows.world.config import BLOCK_M, ZoneGrid
from terracube.workflows.world.landcover import (
    BARE,
    BUILT,
    CROP,
    GRASS,
    TREE,
    WETLAND,
    local_to_lonlat,
    lonlat_to_local,
    river_centre_north,
    structures,
)

PREFERRED_CLASSES: dict[str, tuple[int, ...]] = {
    "aerialway_pylon": (TREE, GRASS),
    "airstrip": (GRASS, BARE),
    "amenity_fuel": (BUILT,),
    "building": (BUILT,),
    "chimney": (BUILT,),
    "communications_tower": (GRASS, TREE),
    "crane": (BUILT,),
    "flagpole": (BUILT,),
    "fountain": (BUILT,),
    "generator_wind": (CROP,),
    "helipad": (GRASS, BUILT),
    "leisure": (GRASS, BUILT),
    "lighthouse": (WETLAND, GRASS),
    "obelisk": (GRASS, BUILT),
    "observatory": (GRASS, TREE),
    "parking": (BUILT,),
    "petroleum_well": (CROP, BARE),
    "power_plant": (BARE, BUILT),
    "power_substation": (CROP, BUILT),
    "power_tower": (CROP, GRASS),
    "satellite_dish": (BUILT,),
    "silo": (CROP,),
    "storage_tank": (BUILT, BARE),
    "water_tower": (BUILT, GRASS),
    "works": (BUILT, BARE),
}
"""Land-cover classes each block-placed category goes on, in order of preference."""

FEATURES_PER_ZONE = 2
BUILDINGS_PER_ZONE = 24
_POLYGON_HALF_M = {"airstrip": (45.0, 10.0), "building": (12.0, 8.0), "parking": (25.0, 15.0)}
_DEFAULT_POLYGON_HALF_M = (40.0, 30.0)


@dataclass(frozen=True)
class OsmFeature:
    """One element of the extract and the category it must rasterise into."""

    osm_type: str  # "node" or "way"
    osm_id: int
    category: str
    tags: tuple[tuple[str, str], ...]
    coords: tuple[tuple[float, float], ...]
    """lon/lat, rounded to 7 decimals; polygons are closed (first == last)."""
    kind: GeometryKind

    @property
    def geometry(self) -> shapely.Geometry:
        if self.kind == GeometryKind.POINT:
            return shapely.Point(self.coords[0])
        if self.kind == GeometryKind.LINE:
            return shapely.LineString(self.coords)
        return shapely.Polygon(self.coords)


def category_tags(category: OsmCategory, value_index: int = 0) -> dict[str, str]:
    """Tags that satisfy a category's TagRule."""
    values = category.rule.values
    tags = {category.rule.key: values[value_index % len(values)] if values else "yes"}
    tags.update(dict(category.rule.also))
    return tags


def _round(lon: np.ndarray, lat: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple(
        (round(float(x), 7), round(float(y), 7))
        for x, y in zip(np.atleast_1d(lon), np.atleast_1d(lat), strict=True)
    )


class _Builder:
    """Hands out ids and collects features in a fixed order (determinism)."""

    def __init__(self) -> None:
        self.features: list[OsmFeature] = []
        self._next = {"node": 1_000_001, "way": 2_000_001}

    def add(
        self,
        category: OsmCategory,
        coords: tuple[tuple[float, float], ...],
        tags: dict[str, str],
    ) -> None:
        osm_type = "node" if category.geometry == GeometryKind.POINT else "way"
        osm_id = self._next[osm_type]
        self._next[osm_type] += 1
        self.features.append(
            OsmFeature(
                osm_type,
                osm_id,
                category.name,
                tuple(sorted(tags.items())),
                coords,
                category.geometry,
            )
        )


def _candidate_blocks(
    grid: ZoneGrid, classes: np.ndarray, tiles: list[Tile], wanted: Iterable[int]
) -> list[tuple[int, int]]:
    """(row, col) of blocks of the first wanted class that has any inside the planned tiles."""
    rows, cols = np.indices(classes.shape)
    x = grid.x0 + (cols + 0.5) * BLOCK_M
    y = grid.y_top - (rows + 0.5) * BLOCK_M
    inside = np.zeros(classes.shape, dtype=bool)
    for tile in tiles:
        minx, miny, maxx, maxy = tile.bounds
        # Keep a block's whole extent inside the tile so features never straddle tiles.
        inside |= (
            (x - BLOCK_M / 2 >= minx)
            & (x + BLOCK_M / 2 <= maxx)
            & (y - BLOCK_M / 2 >= miny)
            & (y + BLOCK_M / 2 <= maxy)
        )
    for code in wanted:
        hits = np.argwhere(inside & (classes == code))
        if len(hits):
            return [(int(r), int(c)) for r, c in hits]
    return [(int(r), int(c)) for r, c in np.argwhere(inside)]


def build_features(
    grids: list[ZoneGrid], classes: dict[int, np.ndarray], tiles: list[Tile], seed: int
) -> list[OsmFeature]:
    """All features of the extract, zone by zone then the landscape-wide lines."""
    builder = _Builder()
    rng = np.random.default_rng([seed, 5])
    by_name = {c.name: c for c in OSM_CATEGORIES}
    for grid in grids:
        to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
        zone_tiles = [t for t in tiles if t.epsg == grid.epsg]
        for name, wanted in PREFERRED_CLASSES.items():
            category = by_name[name]
            blocks = _candidate_blocks(grid, classes[grid.epsg], zone_tiles, wanted)
            count = BUILDINGS_PER_ZONE if name == "building" else FEATURES_PER_ZONE
            chosen = rng.choice(len(blocks), size=min(count, len(blocks)), replace=False)
            for pick in sorted(int(i) for i in chosen):
                row, col = blocks[pick]
                cx = grid.x0 + (col + 0.5) * BLOCK_M + float(rng.uniform(-15, 15))
                cy = grid.y_top - (row + 0.5) * BLOCK_M + float(rng.uniform(-15, 15))
                if category.geometry == GeometryKind.POINT:
                    coords = _round(*to_lonlat.transform(cx, cy))
                else:
                    hx, hy = _POLYGON_HALF_M.get(name, _DEFAULT_POLYGON_HALF_M)
                    xs = np.array([cx - hx, cx + hx, cx + hx, cx - hx, cx - hx])
                    ys = np.array([cy - hy, cy - hy, cy + hy, cy + hy, cy - hy])
                    coords = _round(*to_lonlat.transform(xs, ys))
                builder.add(category, coords, category_tags(category, pick))
    _add_landscape_lines(builder, by_name, tiles, seed)
    return builder.features


def _tiles_local_extent(tiles: list[Tile]) -> tuple[float, float, float, float]:
    """Planned tiles' extent in local metres (east/north of the reference point)."""
    boxes = [t.footprint_lonlat(2) for t in tiles]
    lon_min, lat_min, lon_max, lat_max = shapely.union_all(boxes).bounds
    (e0, e1), (n0, n1) = lonlat_to_local(np.array([lon_min, lon_max]), np.array([lat_min, lat_max]))
    return float(e0), float(n0), float(e1), float(n1)


def _add_landscape_lines(
    builder: _Builder, by_name: dict[str, OsmCategory], tiles: list[Tile], seed: int
) -> None:
    """Roads, the river, the runway and a taxiway, laid in local metres across the AOI."""
    where = structures(seed)
    east0, north0, east1, north1 = _tiles_local_extent(tiles)
    east = np.arange(east0 + 100.0, east1 - 100.0, 40.0)
    highway = by_name["highway"]
    town_e, town_n, _ = where.town
    roads = [
        (
            {"highway": "primary", "name": "Route de la Ville"},
            east,
            np.full_like(east, town_n + 10.0),
        ),
        (
            {"highway": "secondary", "name": "Chemin du Nord"},
            np.full(40, town_e + 250.0),
            np.linspace(north0 + 100.0, north1 - 100.0, 40),
        ),
        (
            {"highway": "residential"},
            np.linspace(town_e - 300, town_e + 300, 16),
            np.full(16, town_n - 200.0),
        ),
        (
            {"highway": "track", "tracktype": "grade2"},
            east,
            river_centre_north(east, where) + 300.0,
        ),
    ]
    for tags, xs, ys in roads:
        builder.add(highway, _round(*local_to_lonlat(xs, ys)), tags)
    builder.add(
        by_name["river"],
        _round(*local_to_lonlat(east, river_centre_north(east, where))),
        {"waterway": "river", "name": "La Synthétique"},
    )
    air_e, air_n, half_length, _ = where.airfield
    strip = np.linspace(air_e - half_length + 100.0, air_e + half_length - 100.0, 12)
    builder.add(
        by_name["runway"],
        _round(*local_to_lonlat(strip, np.full(12, air_n))),
        {"aeroway": "runway", "ref": "09/27"},
    )
    builder.add(
        by_name["taxiway"],
        _round(*local_to_lonlat(strip, np.full(12, air_n + 70.0))),
        {"aeroway": "taxiway", "ref": "A"},
    )
    airfield = np.array(
        [
            (air_e - half_length, air_n - 160.0),
            (air_e + half_length, air_n - 160.0),
            (air_e + half_length, air_n + 160.0),
            (air_e - half_length, air_n + 160.0),
            (air_e - half_length, air_n - 160.0),
        ]
    )
    builder.add(
        by_name["aerodrome"],
        _round(*local_to_lonlat(airfield[:, 0], airfield[:, 1])),
        {"aeroway": "aerodrome", "name": "Aérodrome synthétique", "icao": "LFZZ"},
    )


def write_osm_xml(path: Path, features: list[OsmFeature]) -> None:
    """OSM API 0.6 XML: tagged nodes for points, untagged nodes + tagged ways otherwise."""
    nodes: list[tuple[int, str]] = []
    ways: list[tuple[int, str]] = []
    next_node = 3_000_001
    lons = [c[0] for f in features for c in f.coords]
    lats = [c[1] for f in features for c in f.coords]
    attrs = 'version="1" timestamp="2022-01-01T00:00:00Z" changeset="1" uid="1" user="terracube" visible="true"'
    for feature in features:
        tag_xml = "".join(f"\n  <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in feature.tags)
        if feature.osm_type == "node":
            lon, lat = feature.coords[0]
            nodes.append(
                (
                    feature.osm_id,
                    f'<node id="{feature.osm_id}" {attrs} lat="{lat:.7f}" lon="{lon:.7f}">{tag_xml}\n </node>',
                )
            )
            continue
        refs = []
        ring = feature.kind == GeometryKind.POLYGON
        for lon, lat in feature.coords[:-1] if ring else feature.coords:
            nodes.append(
                (next_node, f'<node id="{next_node}" {attrs} lat="{lat:.7f}" lon="{lon:.7f}"/>')
            )
            refs.append(next_node)
            next_node += 1
        if ring:
            refs.append(refs[0])
        nd_xml = "".join(f'\n  <nd ref="{r}"/>' for r in refs)
        ways.append(
            (feature.osm_id, f'<way id="{feature.osm_id}" {attrs}>{nd_xml}{tag_xml}\n </way>')
        )
    header = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<osm version="0.6" generator="terracube synthetic world">\n'
        f' <bounds minlat="{min(lats):.7f}" minlon="{min(lons):.7f}" maxlat="{max(lats):.7f}" maxlon="{max(lons):.7f}"/>\n'
    )
    # Elements sorted by type then id, as planet extracts are (osmium relies on it).
    body = "".join(f" {xml}\n" for _, xml in sorted(nodes) + sorted(ways))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body + "</osm>\n", encoding="utf-8")
