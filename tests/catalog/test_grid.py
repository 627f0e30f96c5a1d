"""Tile grid: ids, zone assignment, georeferencing, footprints and AOI cover."""

from __future__ import annotations

import json
import math
from pathlib import Path

import affine
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.grid import Tile, cover, tile_at, zone_epsg
from terracube.catalog.registry import BAND_GROUPS

# Exact zone edges and latitude limits, so hypothesis hits the boundaries on purpose.
ZONE_EDGES = [float(lon) for lon in range(-180, 181, 6)]
LAT_LIMITS = [
    90.0,
    -90.0,
    84.0,
    -80.0,
    0.0,
    -0.0,
    math.nextafter(84.0, 90),
    math.nextafter(-80.0, -90),
]

# Subnormal coordinates (e.g. lat = -5e-324) are left out: GEOS loses them when it clips.
lons = st.one_of(st.floats(-180, 180, allow_subnormal=False), st.sampled_from(ZONE_EDGES))
lats = st.one_of(st.floats(-90, 90, allow_subnormal=False), st.sampled_from(LAT_LIMITS))
# AOI extents are either exactly zero (a point or line) or at least 1 nm-ish (1e-9 degrees).
extents = st.one_of(st.just(0.0), st.floats(1e-9, 0.1))


def project(lon: float, lat: float, epsg: int) -> tuple[float, float]:
    return Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)


def assert_holds(tile: Tile, lon: float, lat: float) -> None:
    x, y = project(lon, lat, tile.epsg)
    minx, miny, maxx, maxy = tile.bounds
    assert minx <= x < maxx and miny <= y < maxy, (tile, lon, lat, x, y)


# --------------------------------------------------------------------------- ids


def test_id_is_documented_form_and_round_trips() -> None:
    tile = Tile(32631, 245, 2267)
    assert tile.id == "32631_0245_02267"
    assert Tile.from_id("32631_0245_02267") == tile
    assert Tile.from_id("32761_-003_-0012") == Tile(32761, -3, -12)


@given(
    epsg=st.one_of(
        st.integers(32601, 32660), st.integers(32701, 32760), st.sampled_from([32661, 32761])
    ),
    col=st.integers(-5000, 50000),
    row=st.integers(-5000, 500000),
)
def test_any_tile_round_trips_through_its_id(epsg: int, col: int, row: int) -> None:
    tile = Tile(epsg, col, row)
    assert Tile.from_id(tile.id) == tile


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "32631-0245-02267",
        "32631_245_2267",
        "4326_0001_00001",
        "12345_0001_00001",
        "32631_0245_02267x",
    ],
)
def test_bad_id_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=f"bad tile id '{bad}'"):
        Tile.from_id(bad)


def test_non_zone_epsg_is_refused() -> None:
    with pytest.raises(ValueError, match="epsg 4326"):
        Tile(4326, 0, 0)


# --------------------------------------------------------------------------- zones and tile_at


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (4.9, 52.37, 32631),
        (6.0, 10.0, 32632),  # zone edge belongs to the eastern zone
        (math.nextafter(6.0, 0), 10.0, 32631),
        (-180.0, 0.0, 32601),
        (180.0, 0.0, 32660),
        (0.0, 84.0, 32631),
        (0.0, math.nextafter(84.0, 90), 32661),
        (0.0, -80.0, 32731),
        (0.0, math.nextafter(-80.0, -90), 32761),
        (10.0, 0.0, 32632),  # the equator is north
        (10.0, -1e-12, 32732),
        (10.7, 60.0, 32632),  # no Norway 32V exception
        (20.0, 78.0, 32634),  # no Svalbard exception
        (123.0, 90.0, 32661),
        (-45.0, -90.0, 32761),
    ],
)
def test_zone_epsg_known_points(lon: float, lat: float, epsg: int) -> None:
    assert zone_epsg(lon, lat) == epsg


def test_tile_at_known_tiles() -> None:
    # On zone 31's central meridian: x = 500000 (col 195.3125), y = 0 or 10^7.
    assert tile_at(3.0, 0.0) == Tile(32631, 195, 0)
    assert tile_at(3.0, -1e-9) == Tile(32731, 195, 3906)
    # Both poles project to (2000000, 2000000) in UPS: 2000000 / 2560 = 781.25.
    assert tile_at(17.0, 90.0) == Tile(32661, 781, 781)
    assert tile_at(-17.0, -90.0) == Tile(32761, 781, 781)


@given(lon=lons, lat=lats)
@settings(max_examples=300)
def test_tile_at_contains_the_point_in_its_own_zone(lon: float, lat: float) -> None:
    tile = tile_at(lon, lat)
    assert tile.epsg == zone_epsg(lon, lat)
    assert_holds(tile, lon, lat)
    assert all(v % TILE_SIZE_M == 0 for v in tile.bounds)
    assert_holds(Tile.from_id(tile.id), lon, lat)


@pytest.mark.parametrize(
    ("lon", "lat", "name"),
    [(0.0, 91.0, "latitude 91"), (200.0, 0.0, "longitude 200"), (math.nan, 0.0, "longitude nan")],
)
def test_out_of_range_points_are_refused(lon: float, lat: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tile_at(lon, lat)


# --------------------------------------------------------------------------- georeferencing


def test_bounds_transform_and_shape_are_exact() -> None:
    tile = Tile(32631, 245, 2267)
    assert tile.crs == "EPSG:32631"
    assert tile.bounds == (627200.0, 5803520.0, 629760.0, 5806080.0)
    assert tile.transform() == affine.Affine(10, 0, 627200, 0, -10, 5806080)
    assert tile.transform(20) == affine.Affine(20, 0, 627200, 0, -20, 5806080)
    assert tile.shape() == (256, 256)
    assert tile.shape(2.5) == (1024, 1024)
    # The last pixel's far corner is the tile's bottom-right corner.
    assert tile.transform(40) @ (64, 64) == (629760.0, 5803520.0)


def test_every_registry_group_tiles_exactly() -> None:
    tile = Tile(32631, 245, 2267)
    for group in BAND_GROUPS.values():
        assert tile.shape(group.resolution) == (group.pixels, group.pixels)


@pytest.mark.parametrize("resolution", [30, 0, -10, 3000, math.inf])
def test_resolution_that_does_not_divide_the_tile_is_refused(resolution: float) -> None:
    with pytest.raises(ValueError, match=f"resolution {resolution!r} m does not divide"):
        Tile(32631, 0, 0).shape(resolution)
    with pytest.raises(ValueError, match="does not divide"):
        Tile(32631, 0, 0).transform(resolution)


@given(lon=lons, lat=lats)
@settings(max_examples=100)
def test_footprint_holds_the_point_and_the_centre(lon: float, lat: float) -> None:
    tile = tile_at(lon, lat)
    footprint = tile.footprint_lonlat(densify=32)
    assert footprint.is_valid
    assert footprint.distance(shapely.Point(lon, lat)) < 1e-6
    assert footprint.contains(shapely.Point(tile.center_lonlat))
    minlon, minlat, maxlon, maxlat = footprint.bounds
    assert minlon >= -180 and maxlon <= 180 and minlat >= -90 and maxlat <= 90


def test_footprint_vertices_lie_on_the_tile_edges() -> None:
    tile = Tile(32631, 245, 2267)
    footprint = tile.footprint_lonlat(densify=4)
    assert isinstance(footprint, shapely.Polygon)
    coords = shapely.get_coordinates(footprint)
    assert len(coords) == 4 * 4 + 1
    xs, ys = Transformer.from_crs(4326, 32631, always_xy=True).transform(coords[:, 0], coords[:, 1])
    minx, miny, maxx, maxy = tile.bounds
    for x, y in zip(xs, ys, strict=True):
        on_edge = min(abs(x - minx), abs(x - maxx), abs(y - miny), abs(y - maxy))
        assert (
            on_edge < 1e-6 and minx - 1e-6 <= x <= maxx + 1e-6 and miny - 1e-6 <= y <= maxy + 1e-6
        )


def test_antimeridian_tile_footprint_is_split_at_180() -> None:
    tile = tile_at(179.999, 10.0)  # zone 60's easternmost column reaches past 180
    footprint = tile.footprint_lonlat()
    assert isinstance(footprint, shapely.MultiPolygon)
    east, west = sorted(footprint.geoms, key=lambda p: p.bounds[0], reverse=True)
    assert east.bounds[2] == 180.0 and west.bounds[0] == -180.0
    assert west.bounds[2] < -179.9 and east.bounds[0] > 179.9
    assert (
        footprint.distance(shapely.Point(-179.9999, 10.0)) < 1e-6
        or footprint.distance(shapely.Point(179.9999, 10.0)) < 1e-6
    )


def test_pole_tile_footprint_is_a_cap() -> None:
    footprint = Tile(32661, 781, 781).footprint_lonlat(densify=16)
    assert isinstance(footprint, shapely.Polygon) and footprint.is_valid
    assert footprint.bounds[0] == -180 and footprint.bounds[2] == 180 and footprint.bounds[3] == 90
    # The pole sits 640 m from the nearest edge and ~1.9 km from the farthest one.
    for lon in range(-180, 180, 15):
        assert footprint.covers(shapely.Point(lon, 89.995))
        assert not footprint.covers(shapely.Point(lon, 89.97))
    south = Tile(32761, 781, 781).footprint_lonlat()
    assert south.bounds[1] == -90 and south.contains(shapely.Point(33, -89.995))


# --------------------------------------------------------------------------- cover


def sample_points(
    bbox: tuple[float, float, float, float], fractions: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    minlon, minlat, maxlon, maxlat = bbox
    width = (maxlon - minlon) % 360 if maxlon != minlon else 0.0
    points = []
    for fx, fy in [(0, 0), (0, 1), (1, 0), (1, 1), (0.5, 0.5), *fractions]:
        lon = minlon + fx * width
        lon = lon - 360 if lon > 180 else lon
        points.append((lon, minlat + fy * (maxlat - minlat)))
    return points


small_bboxes = st.builds(
    lambda lon, lat, w, h: (lon, lat, min(lon + w, 180.0), min(lat + h, 90.0)),
    lons,
    lats.filter(lambda v: v < 90),
    extents,
    extents,
)
fractions = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=20)


@given(bbox=small_bboxes, inside=fractions)
@settings(max_examples=150, deadline=None)
def test_cover_holds_every_aoi_point_in_its_own_zone(
    bbox: tuple[float, float, float, float], inside: list[tuple[float, float]]
) -> None:
    tiles = cover(bbox)
    assert tiles == sorted(set(tiles))
    for lon, lat in sample_points(bbox, inside):
        assert tile_at(lon, lat) in tiles, (bbox, lon, lat)
    # No spurious tiles: each one really meets the AOI.
    aoi = (
        shapely.box(*bbox)
        if bbox[0] < bbox[2] and bbox[1] < bbox[3]
        else shapely.LineString([bbox[:2], bbox[2:]])
    )
    for tile in tiles:
        assert tile.footprint_lonlat(densify=16).distance(aoi) < 1e-6, tile


@given(
    west=st.floats(179.0, 180.0, exclude_max=True),
    east=st.floats(-180.0, -179.0, exclude_min=True),
    south=st.floats(-85, 85, allow_subnormal=False),
    height=st.floats(0.001, 0.05),
    inside=fractions,
)
@settings(max_examples=30, deadline=None)
def test_antimeridian_bbox_is_the_union_of_its_halves(
    west: float, east: float, south: float, height: float, inside: list[tuple[float, float]]
) -> None:
    bbox = (west, south, east, south + height)
    tiles = cover(bbox)
    halves = set(cover((west, south, 180.0, south + height))) | set(
        cover((-180.0, south, east, south + height))
    )
    assert tiles == sorted(halves)
    for lon, lat in sample_points(bbox, inside):
        assert tile_at(lon, lat) in tiles


def test_cover_of_a_point_is_its_tile() -> None:
    assert cover((4.9, 52.37, 4.9, 52.37)) == [tile_at(4.9, 52.37)]
    assert cover(shapely.Point(-70.5, -33.4)) == [tile_at(-70.5, -33.4)]


def test_cover_across_a_zone_edge_has_both_zones() -> None:
    assert {t.epsg for t in cover((5.95, 50.0, 6.05, 50.05))} == {32631, 32632}
    # Points on 6 E belong to zone 32, so a bbox ending there needs zone 32 tiles ...
    assert {t.epsg for t in cover((5.95, 50.0, 6.0, 50.05))} == {32631, 32632}
    # ... and one starting there needs none of zone 31.
    assert {t.epsg for t in cover((6.0, 50.0, 6.05, 50.05))} == {32632}
    assert {t.epsg for t in cover((10.0, -0.02, 10.05, 0.0))} == {32632, 32732}
    assert {t.epsg for t in cover((10.0, 0.0, 10.05, 0.02))} == {32632}
    assert {t.epsg for t in cover((10.0, 83.99, 10.05, 84.01))} == {32632, 32661}
    assert {t.epsg for t in cover((10.0, -80.01, 10.05, -79.99))} == {32732, 32761}


def test_pole_aois_give_ups_tiles() -> None:
    north = cover((-180.0, 89.9, 180.0, 90.0))
    assert {t.epsg for t in north} == {32661}
    assert tile_at(0.0, 90.0) in north
    # A disc of radius ~11.1 km: its tiles span about +-11.1 km around the pole.
    cols = [t.col for t in north]
    assert min(cols) == math.floor((2_000_000 - 11_120) / 2560) and max(cols) == math.floor(
        (2_000_000 + 11_120) / 2560
    )
    south = cover(
        {
            "type": "Polygon",
            "coordinates": [[(-180, -90), (180, -90), (180, -89.95), (-180, -89.95), (-180, -90)]],
        }
    )
    assert {t.epsg for t in south} == {32761} and tile_at(0.0, -90.0) in south


def test_all_aoi_forms_agree() -> None:
    bbox = (11.0, 46.0, 11.1, 46.05)
    geometry = shapely.box(*bbox)
    feature = {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(geometry)}
    collection = {"type": "FeatureCollection", "features": [feature]}
    expected = cover(bbox)
    assert len(expected) == len(set(expected)) > 1
    assert cover(geometry) == cover(feature) == cover(collection) == cover(list(bbox)) == expected


def test_cover_of_real_aoi_matches_footprint_intersection(fixtures_dir: Path) -> None:
    # netherlands_aoi.json: from stac-utils/pystac-client tests/data (Apache-2.0).
    aoi = json.loads((fixtures_dir / "pystac-client" / "netherlands_aoi.json").read_text())
    polygon = shapely.geometry.shape(aoi)
    tiles = cover(aoi)
    assert {t.epsg for t in tiles} == {32632}
    # Independent route: lon/lat footprints of every tile in the projected bbox.
    cols = [t.col for t in tiles]
    rows = [t.row for t in tiles]
    candidates = [
        Tile(32632, c, r)
        for c in range(min(cols) - 1, max(cols) + 2)
        for r in range(min(rows) - 1, max(rows) + 2)
    ]
    expected = [t for t in candidates if t.footprint_lonlat(densify=16).intersects(polygon)]
    assert tiles == expected


@pytest.mark.parametrize(
    ("aoi", "error", "message"),
    [
        ((0.0, 10.0, 1.0, 5.0), ValueError, "minlat 10.0 > maxlat 5.0"),
        ((0.0, -91.0, 1.0, 5.0), ValueError, "latitude -91.0"),
        ((0.0, 1.0, 181.0, 5.0), ValueError, "longitude 181.0"),
        ((0.0, "a", 1.0, 5.0), ValueError, "four numbers"),
        (shapely.Polygon(), ValueError, "empty"),
        (
            shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)]),
            ValueError,
            "invalid .*Self-intersection",
        ),
        (shapely.box(190, 0, 191, 1), ValueError, "outside lon"),
        ({"type": "FeatureCollection", "features": []}, ValueError, "no features"),
        ({"type": "Feature", "geometry": None}, ValueError, "no geometry"),
        ({"type": "Blob"}, ValueError, "'Blob'"),
        ("Netherlands", TypeError, "AOI 'Netherlands' is not supported"),
        ((0.0, 1.0, 2.0), TypeError, r"AOI \(0.0, 1.0, 2.0\)"),
    ],
)
def test_bad_aoi_is_refused_naming_it(aoi: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        cover(aoi)  # type: ignore[arg-type]
