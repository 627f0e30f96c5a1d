"""Search answers stored once on disk plan exactly as items held in memory do.

The item store (`catalog.plan_items.ItemStoreWriter`) is what a 300k-tile plan reads:
its planning columns come back as ItemTables, its file becomes the plan's items.parquet
(no record is written twice), and every build task's rows name the same items as the
plan made in memory. Tile arrays (`catalog.tile_arrays`) give every tile's outline,
centre and bounds bit for bit as the per-tile methods do.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from terracube.catalog import plan_items
from terracube.catalog.grid import Tile, cover
from terracube.catalog.plan import make_plan, write_plan
from terracube.catalog.plan_items import ItemStoreWriter, read_item_tables
from terracube.catalog.plan_store import PlanFiles
from terracube.catalog.tile_arrays import (
    centers_lonlat,
    footprints_lonlat,
    tile_bounds,
    tile_keys,
)
from terracube.catalog.timescheme import TimeScheme
from terracube.workflows.world.generate import WorldManifest
from terracube.workflows.world.item_tables import (
    contiguous_tiles,
    item_tables,
    templates,
    worldwide_tiles,
)

YEAR = TimeScheme(date(2023, 1, 1), periods=12)


@pytest.fixture(scope="module")
def stored(world: WorldManifest, tmp_path_factory: pytest.TempPathFactory):
    """Scene grids over 120 tiles astride the 32/33 boundary, written to an item store
    in pieces of 1000 rows with row groups of 64, and the same tables in memory."""
    tiles = contiguous_tiles(120, lon=12.0, lat=48.0)
    tables = item_tables(tiles, YEAR.start, 12, templates(world.ndjson), seed=3)
    root = tmp_path_factory.mktemp("store")
    previous = plan_items.ITEMS_PER_GROUP
    plan_items.ITEMS_PER_GROUP = 64
    try:
        writer = ItemStoreWriter(root / "items")
        for name, table in tables.items():
            for first in range(0, len(table), 1000):
                writer.add(name, table, np.arange(first, min(first + 1000, len(table))))
        writer.close()
    finally:
        plan_items.ITEMS_PER_GROUP = previous
    return tiles, tables, root


def test_the_store_reads_back_its_columns_and_records(stored) -> None:
    _, tables, root = stored
    read = read_item_tables(root / "items", list(tables))
    offset = 0
    for name, table in tables.items():
        back = read[name]
        assert back.ids.tolist() == table.ids.tolist()
        assert back.collection.tolist() == table.collection.tolist()
        assert np.array_equal(back.datetime_ns, table.datetime_ns)
        assert np.array_equal(back.epsg, table.epsg)
        assert np.array_equal(back.cloud, table.cloud, equal_nan=True)
        assert all(shapely.to_wkb(a) == shapely.to_wkb(b)
                   for a, b in zip(back.geometry, table.geometry, strict=True))  # fmt: skip
        assert np.array_equal(back.store_rows, np.arange(offset, offset + len(table)))
        for row in (0, len(table) // 2, len(table) - 1):
            assert back.records[row] == table.records[row]
        offset += len(table)
    # each footprint once, shared by its revisits
    footprints = pq.read_table(root / "items" / "footprints.parquet").num_rows
    distinct = sum(len({shapely.to_wkb(g) for g in t.geometry}) for t in tables.values())
    assert footprints == distinct
    groups = pq.ParquetFile(root / "items" / "items.parquet").metadata
    sizes = [groups.row_group(g).num_rows for g in range(groups.num_row_groups)]
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64


def test_a_plan_from_the_store_equals_the_plan_in_memory(stored, tmp_path: Path) -> None:
    tiles, tables, root = stored
    items = {name: [t.item(r) for r in range(len(t))] for name, t in tables.items()}
    whole = make_plan(tiles, YEAR, items)
    progress: list[tuple[int, int]] = []
    write_plan(tiles, YEAR, read_item_tables(root / "items", list(tables)), tmp_path / "plan",
               progress=lambda done, total: progress.append((done, total)))  # fmt: skip
    files = PlanFiles(tmp_path / "plan")
    pd.testing.assert_frame_equal(files.assignments, whole.assignments)
    pd.testing.assert_frame_equal(files.availability, whole.availability)
    pd.testing.assert_frame_equal(
        pd.DataFrame(files.samples.drop(columns="geometry")),
        pd.DataFrame(whole.samples.drop(columns="geometry")),
    )
    assert progress[-1] == (len(tiles), len(tiles))
    # the store's file is the plan's items, kept once (a hard link on one file system)
    linked = tmp_path / "plan" / "items.parquet"
    if os.stat(linked).st_dev == os.stat(root / "items" / "items.parquet").st_dev:
        assert os.path.samefile(linked, root / "items" / "items.parquet")
    assert files.meta["items"] == sum(len(t) for t in tables.values())
    assert files.meta["items_per_group"] == 64
    a = whole.assignments
    for start in (0, 33, len(tiles) - 3):
        rows = files.assignment_rows(start, start + 3)
        expected = a[(a.sample_index >= start) & (a.sample_index < start + 3)]
        found = files.items(rows.item_row.to_numpy())
        assert [found[r] for r in rows.item_row] == [whole.items[i] for i in expected.item_id]


def test_tile_arrays_equal_the_per_tile_methods() -> None:
    tiles = worldwide_tiles(400, seed=2)
    tiles += cover((179.95, 10.0, 180.0, 10.05)) + cover((-180.0, -10.0, -179.95, -9.95))
    tiles += [Tile(32661, 780, 780), Tile(32761, 780, 780), Tile(32661, 10, 20)]
    outlines = footprints_lonlat(tiles)
    assert any(o.geom_type == "MultiPolygon" for o in outlines)
    for tile, outline in zip(tiles, outlines, strict=True):
        assert shapely.to_wkb(outline) == shapely.to_wkb(tile.footprint_lonlat())
    assert np.array_equal(centers_lonlat(tiles), np.array([t.center_lonlat for t in tiles]))
    assert np.array_equal(tile_bounds(tiles), np.array([t.bounds for t in tiles]))
    keys = tile_keys(tiles)
    assert [tiles[i] for i in np.argsort(keys, kind="stable")] == sorted(tiles)
    assert footprints_lonlat([]).shape == (0,)
