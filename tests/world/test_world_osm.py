"""The synthetic world's OSM extract: osmnx reads it, every category is there, on fitting land cover."""

from __future__ import annotations

from terracube.catalog.grid import Tile
from terracube.catalog.registry import (
    OSM_CATEGORIES,
)
from terracube.workflows.world import (
    WorldManifest,
    WorldTruth,
)
from terracube.workflows.world.config import BLOCK_M
from terracube.workflows.world.modalities.osm import PREFERRED_CLASSES


def test_osm_extract_loads_with_osmnx_and_has_every_category(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    import osmnx

    truth = world_truth
    gdf = osmnx.features_from_xml(world.osm)
    tag_columns = [c for c in gdf.columns if c != "geometry"]
    found: dict[str, set[str]] = {}
    for _, row in gdf.iterrows():
        tags = {k: str(row[k]) for k in tag_columns if isinstance(row[k], str)}
        for category in OSM_CATEGORIES:
            if category.rule.matches(tags):
                found.setdefault(category.name, set()).add(row.geometry.geom_type)
    assert set(found) == {c.name for c in OSM_CATEGORIES}
    kinds = {"point": {"Point"}, "line": {"LineString"}, "polygon": {"Polygon"}}
    for category in OSM_CATEGORIES:
        assert found[category.name] == kinds[str(category.geometry)], category.name
    # truth records every element with the same coordinates as the file
    assert len(truth.osm) == len(gdf)
    by_id = {(f.osm_type, f.osm_id): f for f in truth.osm}
    for (osm_type, osm_id), row in gdf.iterrows():
        assert row.geometry.equals_exact(by_id[(osm_type, osm_id)].geometry, 1e-9)
    planned = [Tile.from_id(t).footprint_lonlat() for t in world.tile_ids]
    for feature in truth.osm:
        assert any(feature.geometry.intersects(p) for p in planned), feature.osm_id


def test_osm_features_sit_on_fitting_land_cover(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    truth = world_truth
    from pyproj import Transformer

    on_preferred = 0
    block_placed = [f for f in truth.osm if f.category in PREFERRED_CLASSES]
    for feature in block_placed:
        lon, lat = feature.geometry.centroid.coords[0]
        epsg = 32631 if lon < 6 else 32632
        grid = truth.zones[epsg]
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        code = truth.blocks(epsg)[int((grid.y_top - y) // BLOCK_M), int((x - grid.x0) // BLOCK_M)]
        on_preferred += int(code in PREFERRED_CLASSES[feature.category])
    assert on_preferred / len(block_placed) > 0.9
    assert truth.osm_features(world.tile_ids[0])
    assert any(f.category == "generator_wind" for f in truth.osm)
