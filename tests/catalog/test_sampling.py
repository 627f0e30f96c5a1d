"""Tile sampling: AOI cover, seeded random draws, WorldCover-stratified draws.

The WorldCover raster is the real ESA WorldCover 2021 v200 tile N00E006 from
stactools-packages/esa-worldcover (Apache-2.0; (c) ESA WorldCover project 2021 /
Contains modified Copernicus Sentinel data (2021), CC-BY-4.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds
from terracube.catalog.grid import Tile, cover, tile_at
from terracube.catalog.sampling import (
    cover_aois,
    draw_random_tiles,
    draw_stratified,
    majority_class,
    worldcover_class_lookup,
)
from terracube.catalog.stac.items import normalize_item

WORLDCOVER = (
    "esa-worldcover/examples/ESA_WorldCover_10m_2021_v200_N00E006/"
    "ESA_WorldCover_10m_2021_v200_N00E006.json"
)
AOIS = [(5.99, 46.99, 6.03, 47.02), (6.02, 47.0, 6.05, 47.03)]  # overlap, two UTM zones


def test_cover_aois_dedupes_overlaps() -> None:
    tiles = cover_aois(AOIS)
    assert tiles == sorted(set(cover(AOIS[0])) | set(cover(AOIS[1])))
    assert len(tiles) < len(cover(AOIS[0])) + len(cover(AOIS[1]))
    assert {t.epsg for t in tiles} == {32631, 32632}


def test_random_draw_is_seeded_distinct_and_inside() -> None:
    everything = set(cover_aois(AOIS))
    first = draw_random_tiles(AOIS, 5, seed=7)
    assert first == draw_random_tiles(AOIS, 5, seed=7)
    assert first != draw_random_tiles(AOIS, 5, seed=8)
    assert len(set(first)) == 5 and set(first) <= everything
    assert set(draw_random_tiles(AOIS, len(everything), seed=1)) == everything
    with pytest.raises(ValueError, match=f"cover {len(everything)}"):
        draw_random_tiles(AOIS, len(everything) + 1, seed=1)


def test_stratified_draw_per_class() -> None:
    tiles = [Tile(32631, c, 100) for c in range(20)]
    classes = {t: (10 if t.col < 12 else 80 if t.col < 18 else None) for t in tiles}
    drawn = draw_stratified(tiles, 3, classes.__getitem__, seed=3)
    assert sorted(drawn) == [10, 80]
    assert all(len(v) == 3 for v in drawn.values())
    assert all(classes[t] == code for code, ts in drawn.items() for t in ts)
    assert drawn == draw_stratified(tiles, 3, classes.__getitem__, seed=3)
    rare = draw_stratified(tiles, 10, classes.__getitem__, seed=3, classes=[80, 50])
    assert len(rare[80]) == 6 and rare[50] == []  # all of a rare class; absent class empty


def test_majority_class_ignores_nodata_and_unknown_codes() -> None:
    values = np.array([0, 0, 0, 10, 10, 80, 7, 7, 7])
    assert majority_class(values, 0, (10, 80)) == 10
    assert majority_class(np.array([10, 80]), 0, (10, 80)) == 10  # tie -> lower code
    assert majority_class(np.zeros(4, np.uint8), 0, (10,)) is None


def test_worldcover_lookup_on_the_real_raster(fixtures_dir: Path) -> None:
    path = fixtures_dir / WORLDCOVER
    item = normalize_item(json.loads(path.read_text()), base_href=str(path))
    lookup = worldcover_class_lookup([item])
    forest = tile_at(6.6, 0.25)  # Sao Tome: ~94 % tree cover at 10 m
    ocean = tile_at(8.5, 2.5)  # open sea: nodata in this product
    outside = tile_at(20.0, 10.0)  # not covered by the item
    with rasterio.open(item.asset("map").href) as src:  # independent full-resolution check
        window = from_bounds(*forest.footprint_lonlat().bounds, src.transform)
        full = src.read(1, window=window)
    assert majority_class(full, 0, (10, 80)) == 10
    assert lookup(forest) == 10
    assert lookup(ocean) is None
    assert lookup(outside) is None
    drawn = draw_stratified([forest, ocean, outside], 1, lookup, seed=0)
    assert drawn == {10: [forest]}
