"""Same-CRS preference in the plan: near a UTM zone boundary, own-zone items win.

Items are a real Earth Search v1 Sentinel-2 item from the pystac-client test cassettes
(Apache-2.0; Copernicus Sentinel data) and the ESA WorldCover example item from
stactools-packages/esa-worldcover (Apache-2.0; (c) ESA WorldCover project 2021,
CC-BY-4.0), with edited copies that claim the neighbouring zone's CRS, a half
footprint or another cloud cover, so every branch of the rule is met.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import shapely
from terracube.catalog.grid import Tile, tile_at
from terracube.catalog.plan import (
    STATIC_PERIOD,
    PlanParams,
    make_plan,
    prefer_same_crs,
    tile_coverage,
)
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.catalog.timescheme import TimeScheme

ES = "pystac-client/items/earth-search-v1_s2l2a+landsatc2l2_point-105.1_40.17_2023-10-08_page1.json"
WORLDCOVER = (
    "esa-worldcover/examples/ESA_WorldCover_10m_2021_v200_N00E006/"
    "ESA_WorldCover_10m_2021_v200_N00E006.json"
)
OCTOBER = TimeScheme(date(2023, 10, 1), periods=1)
TILE = tile_at(-105.1, 40.17)  # EPSG:32613, inside the S2 footprint


def _variant(
    base: dict[str, Any],
    suffix: str,
    *,
    epsg: int | None = None,
    cloud: float | None = None,
    geometry: shapely.Geometry | None = None,
    base_href: str | None = None,
) -> NormalizedItem:
    item = copy.deepcopy(base)
    item["id"] = f"{base['id']}-{suffix}"
    if epsg is not None:
        item["properties"]["proj:epsg"] = epsg
    if cloud is not None:
        item["properties"]["eo:cloud_cover"] = cloud
    if geometry is not None:
        item["geometry"] = shapely.geometry.mapping(geometry)
    return normalize_item(item, base_href=base_href)


@pytest.fixture
def s2(fixtures_dir: Path) -> dict[str, Any]:
    features = json.loads((fixtures_dir / ES).read_text())["features"]
    return next(f for f in features if f["id"] == "S2A_13TDE_20231008_0_L2A")


def _halves(tile: Tile) -> tuple[shapely.Geometry, shapely.Geometry]:
    """West and east lon/lat halves of a wide box, split at the tile's centre."""
    lon, _ = tile.center_lonlat
    return shapely.box(-107.0, 39.0, lon, 41.0), shapely.box(lon, 39.0, -103.0, 41.0)


def _ids(plan, tile: Tile, name: str = "sentinel2_l2a", period: int = 0) -> list[str]:
    return [i.id for i in plan.candidates(tile.id, name, period)]


def test_full_same_crs_cover_drops_the_other_zone(s2) -> None:
    own = normalize_item(s2)
    other = _variant(s2, "z12", epsg=32612, cloud=0.0)  # clearer, still dropped
    assert (own.epsg, other.epsg, TILE.epsg) == (32613, 32612, 32613)
    plan = make_plan([TILE], OCTOBER, {"sentinel2_l2a": [other, own]})
    assert _ids(plan, TILE) == [own.id]
    row = plan.availability.iloc[0]
    assert (row.candidates, row.other_crs_dropped, row.has_data) == (1, 1, True)
    assert other.id not in plan.items


def test_two_same_crs_halves_together_count_as_full_cover(s2) -> None:
    west, east = _halves(TILE)
    own_west = _variant(s2, "west", geometry=west, cloud=1.0)
    own_east = _variant(s2, "east", geometry=east, cloud=2.0)
    other = _variant(s2, "z12", epsg=32612, cloud=0.0)
    assert tile_coverage(own_west.geometry, TILE) == pytest.approx(0.5, abs=0.02)
    plan = make_plan([TILE], OCTOBER, {"sentinel2_l2a": [own_west, own_east, other]})
    assert _ids(plan, TILE) == [own_west.id, own_east.id]
    assert plan.availability.other_crs_dropped.tolist() == [1]


def test_partial_same_crs_keeps_the_other_zone_ranked_after_at_equal_cloud(s2) -> None:
    west, _ = _halves(TILE)
    own_half = _variant(s2, "west", geometry=west, cloud=5.0)
    other_full = _variant(s2, "z12", epsg=32612, cloud=5.0)
    other_clear = _variant(s2, "z12-clear", epsg=32612, cloud=1.0)
    items = {"sentinel2_l2a": [other_full, own_half, other_clear]}
    plan = make_plan([TILE], OCTOBER, items)
    # Cloud first; at equal cloud the own CRS beats the other zone's better coverage.
    assert _ids(plan, TILE) == [other_clear.id, own_half.id, other_full.id]
    assert plan.availability.other_crs_dropped.tolist() == [0]
    # Without the preference the old order holds: at equal cloud, higher coverage first.
    off = make_plan([TILE], OCTOBER, items, params=PlanParams(prefer_same_crs=False))
    assert _ids(off, TILE) == [other_clear.id, other_full.id, own_half.id]


def test_without_the_preference_nothing_is_dropped(s2) -> None:
    own = normalize_item(s2)
    other = _variant(s2, "z12", epsg=32612, cloud=0.0)
    plan = make_plan(
        [TILE], OCTOBER, {"sentinel2_l2a": [own, other]}, params=PlanParams(prefer_same_crs=False)
    )
    assert _ids(plan, TILE) == [other.id, own.id]  # 0 % beats 0.000299 %
    assert plan.availability.other_crs_dropped.tolist() == [0]


def test_threshold_decides_what_full_means(s2) -> None:
    minx, _, maxx, _ = TILE.footprint_lonlat().bounds
    almost = shapely.box(-107.0, 39.0, maxx - (maxx - minx) * 0.01, 41.0)  # ~99 % of the tile
    own = _variant(s2, "almost", geometry=almost)
    other = _variant(s2, "z12", epsg=32612)
    candidates = [(own, tile_coverage(own.geometry, TILE)), (other, 1.0)]
    assert 0.98 < candidates[0][1] < 0.999
    assert [i.id for i, _ in prefer_same_crs(candidates, TILE, 0.999)] == [own.id, other.id]
    assert [i.id for i, _ in prefer_same_crs(candidates, TILE, 0.98)] == [own.id]
    with pytest.raises(ValueError, match=r"full_coverage must be in \(0, 1\]"):
        PlanParams(full_coverage=0.0)


def test_static_map_in_the_tile_crs_replaces_the_geographic_one(fixtures_dir: Path) -> None:
    path = fixtures_dir / WORLDCOVER
    raw = json.loads(path.read_text())
    tile = tile_at(7.0, 1.0)  # EPSG:32632
    geographic = normalize_item(raw, base_href=str(path))
    utm = _variant(raw, "utm32", epsg=32632, base_href=str(path))
    assert (geographic.epsg, utm.epsg, tile.epsg) == (4326, 32632, 32632)
    assert tile_coverage(utm.geometry, tile) == pytest.approx(1.0)
    scheme = TimeScheme(date(2023, 1, 1), periods=2)
    plan = make_plan([tile], scheme, {"worldcover": [geographic, utm]})
    assert _ids(plan, tile, "worldcover", STATIC_PERIOD) == [utm.id]
    # Only the geographic map: kept (nothing in the tile's CRS to prefer).
    alone = make_plan([tile], scheme, {"worldcover": [geographic]})
    assert _ids(alone, tile, "worldcover", STATIC_PERIOD) == [geographic.id]
