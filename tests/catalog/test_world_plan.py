"""Catalog acceptance on the synthetic world: the plan equals the ground truth.

The world (tests/conftest.py `world`) knows which item meets which tile in which
period; the plan, searched from its static catalog or from the loopback pgstac STAC
API, must assign exactly the tile's own-zone items (the same-CRS preference drops the
neighbouring zone's scenes, which cover every planned tile here). Searches must cost
regions x collections x pages requests, never tiles x periods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import requests
from terracube.catalog.grid import Tile, cover, tile_at
from terracube.catalog.plan import STATIC_PERIOD, Plan
from terracube.catalog.registry import modality
from terracube.catalog.stac.http import HrefPolicy
from terracube.catalog.stac.search import (
    STATIC_SEARCH_START,
    SearchCache,
    group_regions,
    search_and_plan,
)
from terracube.catalog.stac.sources import StacApiSource, StaticCatalogSource, generic_profile
from terracube.catalog.timescheme import TimeScheme
from terracube.workflows.config import BuildConfig, StaticSource, load_config
from terracube.workflows.planning import plan_build
from terracube.workflows.world import WorldManifest, WorldTruth
from terracube.workflows.world.config import planned_tiles, world_size

from tests.conftest import world_ndjson_items
from tests.services.http_assets import AssetServer
from tests.services.stac_api import StacApi

LOOPBACK_ASSETS = HrefPolicy(internal_hosts=frozenset({"127.0.0.1"}))
"""The world's API items point at the loopback asset server: allowed explicitly."""


@dataclass(frozen=True)
class WorldPlanInputs:
    """What `build.yaml` says to plan: tiles, periods, and where each modality lives."""

    config: BuildConfig
    tiles: list[Tile]
    scheme: TimeScheme
    collections: dict[str, str]
    """modality -> collection id, STAC modalities only (OSM is not searched)."""


@pytest.fixture(scope="module")
def inputs(world: WorldManifest) -> WorldPlanInputs:
    config = load_config(world.build_yaml)
    assert config.aoi.bbox is not None and config.time.period == "month"
    collections = {
        name: source.collection
        for name, source in config.modalities.items()
        if isinstance(source, StaticSource)
    }
    return WorldPlanInputs(
        config=config,
        tiles=cover(config.aoi.bbox),
        scheme=TimeScheme(config.time.start, config.time.periods),
        collections=collections,
    )


@pytest.fixture(scope="module")
def static_source(inputs: WorldPlanInputs) -> StaticCatalogSource:
    catalogs = {
        inputs.config.resolve(source.catalog)
        for source in inputs.config.modalities.values()
        if isinstance(source, StaticSource)
    }
    assert len(catalogs) == 1, catalogs
    return StaticCatalogSource(
        catalogs.pop(), collection_modalities={c: m for m, c in inputs.collections.items()}
    )


@pytest.fixture(scope="module")
def static_plan(inputs: WorldPlanInputs) -> Plan:
    """The world's build.yaml planned exactly as `terracube plan` does it."""
    plan = plan_build(inputs.config)
    assert list(plan.samples.tile_id) == [t.id for t in inputs.tiles]
    assert "search_pages" in plan.search
    return plan


def _each(source: object, inputs: WorldPlanInputs) -> dict:
    return dict.fromkeys(inputs.collections, source)


@pytest.fixture(scope="module")
def item_zone(world: WorldManifest) -> dict[str, int]:
    """item id -> EPSG of its own grid, read from the NDJSON the world wrote."""
    return {
        item["id"]: int(item["properties"]["proj:code"].removeprefix("EPSG:"))
        for item in world_ndjson_items(world)
    }


def _truth_ids(
    truth: WorldTruth,
    tile_id: str,
    name: str,
    period: int,
    item_zone: dict[str, int],
    *,
    native_only: bool,
) -> set[str]:
    """Items meeting the tile; `native_only`: those in the tile's own CRS.

    WorldTruth.items(native_only=True) knows the zones of its scenes but treats every
    WorldCover item as native, so the own-zone filter is applied here from the items.
    """
    if period >= len(truth.period_starts) or tile_id not in truth.tile_ids:
        return set()
    truth_period = 0 if period == STATIC_PERIOD else period
    ids = set(truth.items(tile_id, name, truth_period, native_only=native_only))
    if native_only:
        epsg = Tile.from_id(tile_id).epsg
        ids = {i for i in ids if item_zone[i] == epsg}
    return ids


def _periods(name: str, scheme: TimeScheme) -> list[int]:
    return list(range(scheme.periods)) if modality(name).temporal else [STATIC_PERIOD]


def _assert_plan_matches_truth(
    plan: Plan,
    tiles: list[Tile],
    scheme: TimeScheme,
    truth: WorldTruth,
    item_zone: dict[str, int],
) -> int:
    """Every (tile, modality, period) of the plan against the truth; returns cells with data."""
    avail = plan.availability.set_index(["tile_id", "modality", "period"])
    names = sorted(plan.availability.modality.unique())
    cells = [(t.id, n, p) for t in tiles for n in names for p in _periods(n, scheme)]
    assert len(plan.availability) == len(cells)
    with_data = 0
    for tile_id, name, period in cells:
        native = _truth_ids(truth, tile_id, name, period, item_zone, native_only=True)
        every = _truth_ids(truth, tile_id, name, period, item_zone, native_only=False)
        candidates = plan.candidates(tile_id, name, period)
        where = (tile_id, name, period)
        assert {i.id for i in candidates} == native, where
        assert len(candidates) == len(native), where  # each item once
        clouds = [i.cloud_cover or 0.0 for i in candidates]
        assert clouds == sorted(clouds), where
        row = avail.loc[where]
        assert bool(row.has_data) == bool(native), where
        assert row.candidates == len(native), where
        assert row.other_crs_dropped == len(every) - len(native), where
        with_data += bool(native)
    return with_data


def test_static_plan_equals_the_ground_truth(
    inputs: WorldPlanInputs,
    static_plan: Plan,
    world: WorldManifest,
    world_truth: WorldTruth,
    item_zone: dict[str, int],
) -> None:
    assert [t.id for t in inputs.tiles] == list(world_truth.tile_ids) == list(world.tile_ids)
    assert set(inputs.collections) == {"sentinel2_l2a", "sentinel1", "landsat_c2l2", "worldcover"}
    cells = _assert_plan_matches_truth(
        static_plan, inputs.tiles, inputs.scheme, world_truth, item_zone
    )
    assert cells == len(inputs.tiles) * (3 * inputs.scheme.periods + 1)  # data everywhere
    assert static_plan.search["rejected"] == []
    # Boundary tiles really are met by the other zone: the preference had work to do,
    # for the static WorldCover map too.
    dropped = static_plan.availability.groupby("modality").other_crs_dropped.sum()
    assert (dropped > 0).all(), dropped.to_dict()
    # The all-cloud period keeps its (fully clouded) items: emptiness is the build's call.
    for case in world_truth.all_cloud:
        for tile_id in case["tiles"]:
            items = static_plan.candidates(tile_id, case["modality"], case["period"])
            assert items and all(i.cloud_cover == 100 for i in items)


def test_availability_is_false_exactly_where_the_truth_has_nothing(
    inputs: WorldPlanInputs,
    static_source: StaticCatalogSource,
    world_truth: WorldTruth,
    item_zone: dict[str, int],
) -> None:
    far = tile_at(6.6, 47.3)  # ~45 km east: beyond every scene of the world
    assert far.id not in world_truth.tile_ids
    tiles = [*inputs.tiles, far]
    longer = TimeScheme(inputs.scheme.start, inputs.scheme.periods + 1)  # one month past
    plan = search_and_plan(_each(static_source, inputs), tiles, longer)
    cells = _assert_plan_matches_truth(plan, tiles, longer, world_truth, item_zone)
    assert cells == len(inputs.tiles) * (3 * inputs.scheme.periods + 1)
    avail = plan.availability
    assert not avail[avail.tile_id == far.id].has_data.any()
    last = avail[avail.period == inputs.scheme.periods]
    assert len(last) == 3 * len(tiles) and not last.has_data.any()


# --------------------------------------------------------------------------- STAC API


def _api_source(api: StacApi, inputs: WorldPlanInputs, page_size: int) -> StacApiSource:
    profile = generic_profile(api.url, inputs.collections)
    return StacApiSource(profile, href_policy=LOOPBACK_ASSETS, page_size=page_size)


@pytest.mark.services
def test_stac_api_plan_equals_the_static_plan(
    world_stac_api: StacApi,
    world_assets: AssetServer,
    inputs: WorldPlanInputs,
    static_plan: Plan,
    world: WorldManifest,
) -> None:
    source = _api_source(world_stac_api, inputs, page_size=100)
    plan = search_and_plan(_each(source, inputs), inputs.tiles, inputs.scheme)
    assert plan.search["rejected"] == []
    exact = [
        "sample_index", "tile_id", "modality", "period", "rank", "item_id", "collection",
        "cloud_cover",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(plan.assignments[exact], static_plan.assignments[exact])
    assert plan.assignments.coverage.to_numpy() == pytest.approx(
        static_plan.assignments.coverage.to_numpy(), abs=1e-9
    )
    assert [d.timestamp() for d in plan.assignments.datetime] == [
        d.timestamp() for d in static_plan.assignments.datetime
    ]
    pd.testing.assert_frame_equal(plan.availability, static_plan.availability)
    # Same items, served over HTTP: every asset href is on the world's asset server and
    # a ranged read returns the bytes of the file the static catalog points at.
    assert plan.items.keys() == static_plan.items.keys()
    stac_root = (world.root / "stac").resolve()
    for item_id, item in plan.items.items():
        local = static_plan.items[item_id]
        for ref, local_ref in zip(item.assets, local.assets, strict=True):
            relative = Path(local_ref.href).resolve().relative_to(stac_root)
            assert ref.href == f"{world_assets.url}/stac/{relative.as_posix()}"
    first = plan.candidates(inputs.tiles[0].id, "sentinel2_l2a", 0)[0]
    local_href = static_plan.items[first.id].assets[0].href
    answer = requests.get(first.assets[0].href, headers={"Range": "bytes=0-4095"}, timeout=10)
    assert answer.status_code == 206
    assert answer.content == Path(local_href).read_bytes()[:4096]


@pytest.mark.services
def test_search_requests_grow_with_regions_not_tiles_x_periods(
    world_stac_api: StacApi,
    inputs: WorldPlanInputs,
    static_source: StaticCatalogSource,
    tmp_path: Path,
) -> None:
    tiles = planned_tiles(world_size("demo"))  # 20 tiles around the world, both zones
    scheme = TimeScheme(inputs.scheme.start, 12)  # 12 months; the world has data in 3
    assert len(tiles) == 20
    page_size = 10
    names = list(inputs.collections)
    cache = SearchCache(tmp_path / "search-cache")

    world_stac_api.reset_request_count()
    plan = search_and_plan(
        dict.fromkeys(names, _api_source(world_stac_api, inputs, page_size)),
        tiles,
        scheme,
        cache=cache,
    )
    served = world_stac_api.search_request_count()

    # What the requests must be, from the static catalog: one paged search per region x
    # collection, ceil(matches / page size) pages each (one page when nothing matches).
    regions = group_regions(tiles)
    assert sorted(r.epsg for r in regions) == [32631, 32632]
    span_start, span_end = scheme.span()
    expected_pages = 0
    for name, collection in inputs.collections.items():
        start = span_start if modality(name).temporal else STATIC_SEARCH_START
        for region in regions:
            matches = static_source.search(region.bbox, start, span_end, [collection])
            expected_pages += max(1, math.ceil(len(matches) / page_size))
    assert plan.search["search_calls"] == len(regions) * len(names) == 8
    assert served == plan.search["search_pages"] == expected_pages
    assert expected_pages > plan.search["search_calls"]  # paging really happened
    assert served * 10 < len(tiles) * scheme.periods  # vs 240 per-tile-per-month searches
    assert plan.availability.has_data.any()

    # A re-plan from the cache sends nothing at all, not even the landing page.
    world_stac_api.reset_request_count()
    again = search_and_plan(
        dict.fromkeys(names, _api_source(world_stac_api, inputs, page_size)),
        tiles,
        scheme,
        cache=cache,
    )
    assert world_stac_api.request_counts() == {}
    assert again.search["cache_hits"] == 8 and again.search["search_pages"] == 0
    assert again.search["http_requests"] == 0
    pd.testing.assert_frame_equal(again.assignments, plan.assignments)
    pd.testing.assert_frame_equal(again.availability, plan.availability)


def test_static_maps_dated_before_the_periods_are_found(
    inputs: WorldPlanInputs, static_source: StaticCatalogSource
) -> None:
    """WorldCover 2021 describes 2022: searched over the span alone it would be missed."""
    wc = "worldcover"
    start, end = inputs.scheme.span()
    bbox = inputs.tiles[0].footprint_lonlat().bounds
    assert static_source.search(bbox, start, end, [inputs.collections[wc]]) == []
    found = static_source.search(bbox, STATIC_SEARCH_START, end, [inputs.collections[wc]])
    assert found and all(
        datetime.fromisoformat(i["properties"]["end_datetime"]) < start for i in found
    )
