"""The columnar planner gives the per-tile reference planner's tables, value for value.

Scenes: the synthetic world's own catalog (every collection, its tiles), and synthetic
scene grids (`workflows/world/item_tables.py`, records from the world's normalised
items) over a contiguous AOI astride the 32/33 UTM zone boundary, where tiles see
scenes of both CRSs, partial own-zone scenes and the union rule, plus scattered tiles
with per-tile anchors. Equality is `assert_frame_equal`: same rows, same order, same
coverage floats.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from terracube.catalog import plan_store
from terracube.catalog.grid import Tile
from terracube.catalog.plan import PlanParams, make_plan, make_plan_reference
from terracube.catalog.plan_items import ItemTable
from terracube.catalog.plan_store import PlanFiles
from terracube.catalog.registry import modality
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.catalog.timescheme import TimeScheme
from terracube.workflows.world.generate import WorldManifest
from terracube.workflows.world.item_tables import (
    contiguous_tiles,
    item_tables,
    templates,
    worldwide_tiles,
)

YEAR = TimeScheme(date(2023, 1, 1), periods=12)


def _items(table: ItemTable) -> list[NormalizedItem]:
    return [table.item(r) for r in range(len(table))]


def _assert_same(tiles, scheme, items, **kwargs) -> None:
    ours = make_plan(tiles, scheme, items, **kwargs)
    reference = make_plan_reference(tiles, scheme, items, **kwargs)
    assert len(reference.assignments) > 0
    pd.testing.assert_frame_equal(ours.assignments, reference.assignments)
    pd.testing.assert_frame_equal(ours.availability, reference.availability)
    assert ours.items == reference.items
    pd.testing.assert_frame_equal(
        pd.DataFrame(ours.samples.drop(columns="geometry")),
        pd.DataFrame(reference.samples.drop(columns="geometry")),
    )


def _world_items(world: WorldManifest) -> dict[str, list[NormalizedItem]]:
    out: dict[str, list[NormalizedItem]] = {}
    for name, path in world.ndjson.items():
        if name == "collections":
            continue
        for line in path.read_text().splitlines():
            item = normalize_item(json.loads(line), base_href=path.resolve().as_uri())
            out.setdefault(item.modality, []).append(item)
    return out


def test_the_world_catalog_plans_the_same(world: WorldManifest) -> None:
    tiles = [Tile.from_id(t) for t in world.tile_ids]
    scheme = TimeScheme(date.fromisoformat(world.period_starts[0]), len(world.period_starts))
    items = _world_items(world)
    assert {"sentinel2_l2a", "sentinel1", "landsat_c2l2", "worldcover"} <= set(items)
    _assert_same(tiles, scheme, items)
    _assert_same(tiles, scheme, items, params=PlanParams(max_candidates=2, prefer_same_crs=False))


@pytest.fixture(scope="module")
def zone_edge(world: WorldManifest) -> tuple[list[Tile], dict[str, list[NormalizedItem]]]:
    """~200 tiles astride 12 E with three sensors' scene grids over one year."""
    tiles = contiguous_tiles(200, lon=12.0, lat=48.0)
    assert len({t.epsg for t in tiles}) == 2
    tables = item_tables(tiles, YEAR.start, 12, templates(world.ndjson), seed=3)
    items = {name: _items(t) for name, t in tables.items()}
    items["sentinel2_l2a"] = _cut_own_zone_scenes(items["sentinel2_l2a"])
    return tiles, items


CUT_LON = 11.9


def _cut_own_zone_scenes(items: list[NormalizedItem]) -> list[NormalizedItem]:
    """Zone-32 Sentinel-2 scenes cut at 11.9 E, so tiles astride the cut are covered by
    own-CRS parts only: in March by a west and an east part (their union covers the
    tile), in April by the west part alone (it does not; zone-33 scenes stay)."""
    west = shapely.box(-180, -90, CUT_LON, 90)
    east = shapely.box(CUT_LON, -90, 180, 90)
    out = []
    for item in items:
        month = item.datetime.month
        if item.epsg != 32632 or month not in (3, 4):
            out.append(item)
            continue
        out.append(replace(item, id=item.id + "-w", geometry=item.geometry.intersection(west)))
        if month == 3:
            out.append(replace(item, id=item.id + "-e", geometry=item.geometry.intersection(east)))
    return out


def test_scene_grids_at_a_zone_boundary_plan_the_same(zone_edge) -> None:
    tiles, items = zone_edge
    reference = make_plan_reference(tiles, YEAR, items)
    avail = reference.availability
    assert (avail.other_crs_dropped > 0).any(), "no tile met the same-CRS rule"
    kept_other = reference.assignments.merge(
        pd.DataFrame({"tile_id": [t.id for t in tiles], "tile_epsg": [t.epsg for t in tiles]})
    )
    item_epsg = {i.id: i.epsg for found in items.values() for i in found}
    other = kept_other[kept_other.item_id.map(item_epsg) != kept_other.tile_epsg]
    assert set(other.period) >= {3}, "no tile kept an other-CRS scene beside a partial own one"
    march = avail[(avail.period == 2) & (avail.modality == "sentinel2_l2a")]
    assert (march.other_crs_dropped > 0).any(), "the union of own-CRS parts never covered a tile"
    _assert_same(tiles, YEAR, items)


@pytest.mark.parametrize(
    "params",
    [
        PlanParams(max_candidates=3),
        PlanParams(prefer_same_crs=False),
        PlanParams(min_coverage=0.4, full_coverage=0.9),
    ],
)
def test_scene_grids_plan_the_same_under_other_rules(zone_edge, params: PlanParams) -> None:
    """Every third tile of the boundary AOI (both zones, the cut scenes' columns): the
    reference's time grows with the tiles, and the rules meet the same cases."""
    tiles, items = zone_edge
    _assert_same(tiles[::3], YEAR, items, params=params)


def test_scattered_tiles_with_their_own_anchors_plan_the_same(world: WorldManifest) -> None:
    tiles = worldwide_tiles(30, seed=5)
    tables = item_tables(tiles, date(2022, 11, 1), 16, templates(world.ndjson), seed=1)
    items = {name: _items(t) for name, t in tables.items()}
    anchors = [date(2022, 11 + (i % 2), 1) if i % 2 == 0 else date(2023, 1, 1)
               for i in range(len(tiles))]  # fmt: skip
    _assert_same(tiles, YEAR, items, anchors=anchors)


def test_static_maps_rank_like_the_reference(world: WorldManifest) -> None:
    tiles = [Tile.from_id(t) for t in world.tile_ids]
    static = {"worldcover": _world_items(world)["worldcover"]}
    assert not modality("worldcover").temporal
    _assert_same(tiles, YEAR, static)


def test_a_saved_plan_reads_back_by_sample_range(
    zone_edge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sample range's rows and items equal the slice of the whole plan, and the
    items file is cut in groups of ITEMS_PER_GROUP in order of first use."""
    monkeypatch.setattr(plan_store, "ITEMS_PER_GROUP", 64)
    tiles, items = zone_edge
    plan = make_plan(tiles, YEAR, items)
    plan.to_parquet(tmp_path / "plan")
    files = PlanFiles(tmp_path / "plan")
    assert files.n_samples == len(tiles)
    whole = plan.assignments
    for start in (0, 37, 199):
        stop = min(start + 4, len(tiles))
        rows = files.assignment_rows(start, stop)
        expected = whole[(whole.sample_index >= start) & (whole.sample_index < stop)]
        assert rows.sample_index.tolist() == expected.sample_index.tolist()
        found = files.items(rows.item_row.to_numpy())
        assert [found[r].id for r in rows.item_row] == expected.item_id.tolist()
        assert [found[r] for r in rows.item_row] == [plan.items[i] for i in expected.item_id]
    first_use = list(dict.fromkeys(whole.item_id))
    read = files.all_items()
    assert list(read) == first_use
    groups = pq.ParquetFile(tmp_path / "plan" / "items.parquet").metadata.num_row_groups
    assert groups == -(-len(first_use) // 64) > 1
    assert np.array_equal(files.sample_rows(10, 12).index.to_numpy(), [10, 11])


def test_a_worker_reads_the_inputs_the_whole_plan_gives(
    world: WorldManifest, tmp_path: Path
) -> None:
    """The inputs a build task reads from its rows of the saved plan equal those of the
    whole plan in memory (what tasks carried before), for every sample and modality:
    the builder is deterministic in its inputs, so the shards are the same bytes."""
    from terracube.workflows.build.shards import PlanIndex

    tiles = [Tile.from_id(t) for t in world.tile_ids]
    scheme = TimeScheme(date.fromisoformat(world.period_starts[0]), len(world.period_starts))
    plan = make_plan(tiles, scheme, _world_items(world))
    plan.to_parquet(tmp_path / "plan")
    whole = PlanIndex.from_plan(plan)
    files = PlanFiles(tmp_path / "plan")
    names = sorted(set(plan.assignments.modality))
    for start in range(0, len(tiles), 2):
        part = PlanIndex.from_files(files, start, min(start + 2, len(tiles)))
        for sample in range(start, min(start + 2, len(tiles))):
            assert part.tile_inputs(sample, names) == whole.tile_inputs(sample, names)
