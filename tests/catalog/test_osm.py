"""OSM extracts -> registry categories -> per-tile features, offline.

Extracts: West-Oakland.osm.bz2 and aguascalientes.osm.bz2 from the osmnx test data
(gboeing/osmnx, MIT); data (c) OpenStreetMap contributors, ODbL 1.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import shapely
from terracube.catalog.grid import cover
from terracube.catalog.osm.features import OsmFeatures, categories_of
from terracube.catalog.registry import OSM_CATEGORIES

OSMNX = "osm/osmnx"


@pytest.fixture(scope="module")
def oakland(fixtures_dir: Path) -> OsmFeatures:
    return OsmFeatures.from_extract(fixtures_dir / OSMNX / "West-Oakland.osm.bz2")


def test_categories_follow_the_registry_rules() -> None:
    assert categories_of({"highway": "residential", "name": "x"}) == ["highway"]
    assert categories_of({"highway": "footway"}) == []  # not one of the road classes
    assert categories_of({"building": "yes", "amenity": "parking"}) == ["building", "parking"]
    assert categories_of({"power": "generator"}) == []
    assert categories_of({"power": "generator", "generator:source": "wind"}) == ["generator_wind"]
    assert categories_of({"building": float("nan")}) == []  # osmnx fills absent tags with NaN
    assert len(OSM_CATEGORIES) == 30


def test_extract_loads_offline_with_categories(oakland: OsmFeatures) -> None:
    counts = oakland.features.category.value_counts().to_dict()
    assert counts == {"highway": 23, "building": 23, "parking": 3, "leisure": 2}
    assert set(oakland.features.columns) == {"osm_type", "osm_id", "category", "geometry"}


def _direct(features: OsmFeatures, tile) -> set[tuple[str, int, str]]:
    square = shapely.box(*tile.bounds)
    projected = features.features.to_crs(tile.crs)
    return {
        (r.osm_type, r.osm_id, r.category)
        for r in projected.itertuples()
        if r.geometry.intersects(square)
    }


@pytest.mark.parametrize("extract", ["West-Oakland.osm.bz2", "aguascalientes.osm.bz2"])
def test_every_feature_in_a_tile_is_in_its_set(fixtures_dir: Path, extract: str) -> None:
    features = OsmFeatures.from_extract(fixtures_dir / OSMNX / extract)
    tiles = cover(tuple(features.features.total_bounds))[:6]
    assert tiles
    seen_any = False
    for tile in tiles:
        got = features.features_for_tile(tile)
        keys = {(r.osm_type, r.osm_id, r.category) for r in got.itertuples()}
        assert keys == _direct(features, tile), tile.id
        seen_any |= bool(keys)
        assert got.crs.to_epsg() == tile.epsg
        square = shapely.box(*tile.bounds).buffer(1e-6)
        assert all(square.covers(g) for g in got.geometry)
    assert seen_any
