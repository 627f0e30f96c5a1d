"""Static catalog search, region batching and the search cache, on real provider items.

Items: recorded Earth Search v1 / Planetary Computer responses from the pystac-client
test cassettes (Apache-2.0; Copernicus Sentinel data, USGS Landsat) and the ESA
WorldCover example item from stactools-packages/esa-worldcover (Apache-2.0; (c) ESA
WorldCover project 2021, CC-BY-4.0).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest
from terracube.catalog.grid import Tile, tile_at
from terracube.catalog.stac.http import REMOTE_POLICY
from terracube.catalog.stac.search import (
    RegionParams,
    SearchCache,
    SearchError,
    group_regions,
    search_tiles,
)
from terracube.catalog.stac.sources import (
    PROFILES,
    ItemSource,
    SourceError,
    StacApiSource,
    StaticCatalogSource,
    matches_query,
)

ITEMS = "pystac-client/items"
PAGES = [
    f"{ITEMS}/earth-search-v1_s2l2a+landsatc2l2_point-105.1_40.17_2023-10-08_page1.json",
    f"{ITEMS}/planetary-computer_sentinel-2-l2a_2019-01-01T000001-000010_page1.json",
]
WORLDCOVER = (
    "esa-worldcover/examples/ESA_WorldCover_10m_2021_v200_N00E006/"
    "ESA_WorldCover_10m_2021_v200_N00E006.json"
)


@pytest.fixture(scope="module")
def catalog_path(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-contained static catalog of real items, saved with pystac."""
    catalog = pystac.Catalog("real-items", "real provider items")
    for page in PAGES:
        for feature in json.loads((fixtures_dir / page).read_text())["features"]:
            item = pystac.Item.from_dict(feature)
            item.clear_links()
            catalog.add_item(item)
    worldcover = pystac.Item.from_file(str(fixtures_dir / WORLDCOVER))
    worldcover.make_asset_hrefs_absolute()
    worldcover.clear_links()
    catalog.add_item(worldcover)
    root = tmp_path_factory.mktemp("static") / "catalog"
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_static_source_is_an_item_source(catalog_path: Path) -> None:
    source = StaticCatalogSource(catalog_path)
    assert isinstance(source, ItemSource)
    assert len(source) == 2 + 33 + 1
    assert source.collections == {
        "sentinel-2-l2a": "sentinel2_l2a",
        "landsat-c2-l2": "landsat_c2l2",
        "esa-worldcover": "worldcover",
    }
    assert source.collection_for("worldcover") == "esa-worldcover"
    with pytest.raises(SourceError, match="no collection holds 'sentinel1'"):
        source.collection_for("sentinel1")


def test_a_configured_collection_is_the_one_searched(fixtures_dir: Path, tmp_path: Path) -> None:
    """Two collections of one modality (the Landsat items copied into landsat-c2l2-sr): the
    configured one is searched, not the first by id; a configured id the catalog lacks is
    an error naming it."""
    catalog = pystac.Catalog("two-landsat", "two Landsat collections")
    for feature in json.loads((fixtures_dir / PAGES[0]).read_text())["features"]:
        if feature["collection"] != "landsat-c2-l2":
            continue
        for collection in ("landsat-c2-l2", "landsat-c2l2-sr"):
            item = pystac.Item.from_dict({**feature, "collection": collection})
            item.id = f"{collection}/{item.id}"
            item.clear_links()
            catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    path = tmp_path / "catalog" / "catalog.json"
    assert StaticCatalogSource(path).collection_for("landsat_c2l2") == "landsat-c2-l2"
    chosen = StaticCatalogSource(path, collection_modalities={"landsat-c2l2-sr": "landsat_c2l2"})
    assert chosen.collection_for("landsat_c2l2") == "landsat-c2l2-sr"
    missing = StaticCatalogSource(path, collection_modalities={"landsat-c2l2-st": "landsat_c2l2"})
    with pytest.raises(SourceError, match="configured collection 'landsat-c2l2-st'"):
        missing.collection_for("landsat_c2l2")


def test_items_of_a_configured_custom_collection_are_planned(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """A collection id the registry does not know, mapped in the config, keeps its items:
    the normaliser is told which modality the searched collection holds."""
    catalog = pystac.Catalog("custom", "one custom Landsat collection")
    for feature in json.loads((fixtures_dir / PAGES[0]).read_text())["features"]:
        if feature["collection"] == "landsat-c2-l2":
            item = pystac.Item.from_dict({**feature, "collection": "my-landsat"})
            item.clear_links()
            catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    source = StaticCatalogSource(
        tmp_path / "catalog" / "catalog.json", collection_modalities={"my-landsat": "landsat_c2l2"}
    )
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 31, tzinfo=UTC)
    found = search_tiles(source, [tile_at(-105.1, 40.17)], start, end, ["landsat_c2l2"])
    assert found.rejected == []
    assert [i.id for i in found.items["landsat_c2l2"]] == ["LC08_L2SP_033032_20231008_02_T1"]
    assert found.items["landsat_c2l2"][0].modality == "landsat_c2l2"


def test_static_search_filters_by_geometry_time_collection_and_query(catalog_path: Path) -> None:
    source = StaticCatalogSource(catalog_path)
    day = (datetime(2023, 10, 8, tzinfo=UTC), datetime(2023, 10, 8, 23, 59, tzinfo=UTC))
    point_box = (-105.11, 40.16, -105.09, 40.18)
    found = source.search(point_box, *day, ["sentinel-2-l2a", "landsat-c2-l2"])
    assert sorted(i["id"] for i in found) == [
        "LC08_L2SP_033032_20231008_02_T1",
        "S2A_13TDE_20231008_0_L2A",
    ]
    assert source.search(point_box, *day, ["landsat-c2-l2"])[0]["id"].startswith("LC08")
    assert source.search((10.0, 10.0, 10.1, 10.1), *day, ["sentinel-2-l2a"]) == []
    next_day = (datetime(2023, 10, 9, tzinfo=UTC), datetime(2023, 10, 10, tzinfo=UTC))
    assert source.search(point_box, *next_day, ["sentinel-2-l2a"]) == []
    low_cloud = {"eo:cloud_cover": {"lt": 0.01}}
    assert [
        i["id"]
        for i in source.search(point_box, *day, ["sentinel-2-l2a", "landsat-c2-l2"], low_cloud)
    ] == ["S2A_13TDE_20231008_0_L2A"]
    # WorldCover spans 2021: any instant of 2021 finds it; geometry is the footprint, not bbox.
    wc_day = (datetime(2021, 6, 1, tzinfo=UTC), datetime(2021, 6, 2, tzinfo=UTC))
    assert len(source.search((7.0, 1.0, 7.01, 1.01), *wc_day, ["esa-worldcover"])) == 1
    assert (
        source.search((8.9, 0.0, 8.95, 0.05), *wc_day, ["esa-worldcover"]) == []
    )  # in bbox, off footprint
    # Hrefs come back absolute and exist on disk.
    wc = source.search((7.0, 1.0, 7.01, 1.01), *wc_day, ["esa-worldcover"])[0]
    assert Path(wc["assets"]["map"]["href"]).is_file()


def test_antimeridian_bbox_finds_items_on_both_sides(catalog_path: Path) -> None:
    source = StaticCatalogSource(catalog_path)
    span = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 1, 1, 0, 1, tzinfo=UTC))
    east_only = source.search((170.0, 50.0, 180.0, 70.0), *span, ["sentinel-2-l2a"])
    crossing = source.search((170.0, 50.0, -170.0, 70.0), *span, ["sentinel-2-l2a"])
    assert len(crossing) >= len(east_only) > 0


def test_query_operators() -> None:
    props = {"eo:cloud_cover": 12.5, "platform": "landsat-9"}
    assert matches_query(props, {"eo:cloud_cover": {"gte": 12.5, "lt": 13}})
    assert not matches_query(props, {"eo:cloud_cover": {"gt": 12.5}})
    assert matches_query(props, {"platform": {"in": ["landsat-8", "landsat-9"]}})
    assert not matches_query(props, {"missing": {"eq": 1}})
    with pytest.raises(SourceError, match="'like'"):
        matches_query(props, {"platform": {"like": "x"}})


def test_regions_group_nearby_tiles_and_keep_zones_apart() -> None:
    base = tile_at(-105.1, 40.17)
    block = [Tile(base.epsg, base.col + dc, base.row + dr) for dc in range(5) for dr in range(4)]
    regions = group_regions(block, RegionParams(max_region_km=2560 * 100 / 1000))
    assert len(regions) == 1 and len(regions[0].tiles) == 20
    minlon, minlat, maxlon, maxlat = regions[0].bbox
    for tile in block:
        tminlon, tminlat, tmaxlon, tmaxlat = tile.footprint_lonlat().bounds
        assert minlon <= tminlon and tmaxlon <= maxlon and minlat <= tminlat and tmaxlat <= maxlat
    small = group_regions(block, RegionParams(max_region_km=2 * 2.56))  # 2 x 2 tile blocks
    assert sum(len(r.tiles) for r in small) == 20
    assert all(len(r.tiles) <= 4 for r in small)
    other_zone = Tile(base.epsg + 1, 10, base.row)
    assert len(group_regions([*block, other_zone], RegionParams(1000))) == 2
    with pytest.raises(ValueError, match="smaller than one tile"):
        RegionParams(max_region_km=1)


def test_search_tiles_one_search_per_region_and_collection_then_cache(
    catalog_path: Path, tmp_path: Path
) -> None:
    source = StaticCatalogSource(catalog_path)
    base = tile_at(-105.1, 40.17)
    tiles = [Tile(base.epsg, base.col + dc, base.row + dr) for dc in range(4) for dr in range(5)]
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 31, tzinfo=UTC)
    cache = SearchCache(tmp_path / "cache")
    result = search_tiles(source, tiles, start, end, ["sentinel2_l2a", "landsat_c2l2"], cache=cache)
    assert len(result.requests) == 2  # 20 tiles, one region, two collections
    assert result.cache_hits == 0
    assert [i.id for i in result.items["sentinel2_l2a"]] == ["S2A_13TDE_20231008_0_L2A"]
    assert [i.id for i in result.items["landsat_c2l2"]] == ["LC08_L2SP_033032_20231008_02_T1"]
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 2
    again = search_tiles(source, tiles, start, end, ["sentinel2_l2a", "landsat_c2l2"], cache=cache)
    assert again.cache_hits == 2
    assert [i.id for i in again.items["sentinel2_l2a"]] == ["S2A_13TDE_20231008_0_L2A"]
    assert again.items["sentinel2_l2a"][0] == result.items["sentinel2_l2a"][0]
    # Another query is another cache key.
    third = search_tiles(
        source,
        tiles,
        start,
        end,
        ["sentinel2_l2a"],
        cache=cache,
        query={"sentinel2_l2a": {"eo:cloud_cover": {"lt": 0.0001}}},
    )
    assert third.cache_hits == 0 and third.items["sentinel2_l2a"] == []


def test_a_failing_search_names_the_modality_it_was_searching(catalog_path: Path) -> None:
    """The error names sentinel1 (the catalog has none), not the first modality of the pass."""
    source = StaticCatalogSource(catalog_path)
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 31, tzinfo=UTC)
    with pytest.raises(SearchError, match="no collection holds 'sentinel1'") as caught:
        search_tiles(source, [tile_at(-105.1, 40.17)], start, end, ["sentinel2_l2a", "sentinel1"])
    assert caught.value.modality == "sentinel1"


def test_search_records_unsafe_items_from_remote_sources(
    catalog_path: Path, tmp_path: Path
) -> None:
    """The static source pretends nothing; judged as remote, its local WorldCover href is refused."""
    source = StaticCatalogSource(catalog_path, href_policy=REMOTE_POLICY)
    tiles = [tile_at(7.0, 1.0)]
    result = search_tiles(
        source,
        tiles,
        datetime(2021, 1, 1, tzinfo=UTC),
        datetime(2021, 12, 31, tzinfo=UTC),
        ["worldcover"],
    )
    assert result.items["worldcover"] == []
    assert len(result.rejected) == 1
    refused = result.rejected[0]
    assert refused["item_id"] == "ESA_WorldCover_10m_2021_v200_N00E006"
    assert refused["reason"] == "unsafe href" and "local files" in refused["message"]


def test_profiles_say_what_a_provider_lacks() -> None:
    es = StacApiSource("earth-search")  # building a source makes no request
    assert es.counter.requests == 0
    assert es.collection_for("sentinel2_l2a") == "sentinel-2-l2a"
    with pytest.raises(SourceError, match="sentinel-1-grd"):
        es.collection_for("sentinel1")
    with pytest.raises(SourceError, match="WorldCover"):
        es.collection_for("worldcover")
    assert PROFILES["planetary-computer"].collections["sentinel1"] == "sentinel-1-rtc"
