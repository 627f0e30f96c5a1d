"""The context task's truth: crop types under cropland, their label rasters, and the
raw-pixel ceiling the docs claim (chance for any time-order-blind feature)."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from rasterio.windows import from_bounds
from terracube.catalog.grid import Tile
from terracube.workflows.world import WorldManifest, WorldTruth
from terracube.workflows.world.crops import CROP_TYPE_CODES, CROP_TYPES, LABELS_DIR
from terracube.workflows.world.landcover import CROP
from terracube.workflows.world.scenes import ALL_CLOUD_PERIOD
from terracube.workflows.world.spectra import (
    landsat_dn,
    reflectance,
    s1_mean_linear,
    s2_stored,
)

YEAR = list(range(1, 13))


def test_label_rasters_are_the_truth_on_every_tile(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    folder = world.truth_dir / LABELS_DIR
    classes = json.loads((folder / "classes.json").read_text())
    assert classes["classes"] == {"1": "spring crop", "2": "summer crop", "3": "autumn crop"}
    seen = set()
    for tile_id in world.tile_ids:
        tile = Tile.from_id(tile_id)
        with rasterio.open(folder / f"crop_types_{tile.epsg}.tif") as src:
            assert src.crs.to_epsg() == tile.epsg and src.res == (10.0, 10.0)
            labels = src.read(1, window=from_bounds(*tile.bounds, transform=src.transform))
        np.testing.assert_array_equal(labels, world_truth.crop_type_labels(tile_id))
        cropland = world_truth.expected_worldcover(tile_id)[0] == CROP
        # labelled exactly where WorldCover says cropland, and nowhere else
        np.testing.assert_array_equal(labels > 0, cropland)
        seen |= set(np.unique(labels[labels > 0]).tolist())
    assert seen == {1, 2, 3}


def test_crop_types_drive_every_sensor(world: WorldManifest, world_truth: WorldTruth) -> None:
    """The signal map puts each crop type's own values where its label is."""
    tile_id = world.tile_ids[0]
    signal = world_truth.signal(tile_id, 10)
    labels = world_truth.crop_type_labels(tile_id)
    for kind in CROP_TYPES:
        np.testing.assert_array_equal(signal == kind.code, labels == kind.label)
    assert not np.any(signal == CROP)


def test_a_year_of_values_is_the_same_multiset_for_every_crop_type() -> None:
    """Time-order-blind raw features (mean, std, any statistic of the monthly values) are
    identical across crop types in every band of every sensor: their ceiling is chance."""
    tables = {
        "s2": s2_stored(YEAR),
        "landsat": landsat_dn(YEAR),
        "s1": s1_mean_linear(YEAR),
    }
    for name, table in tables.items():
        reference = np.sort(table[CROP_TYPE_CODES[0]], axis=0)
        for code in CROP_TYPE_CODES[1:]:
            np.testing.assert_array_equal(np.sort(table[code], axis=0), reference, err_msg=name)
            assert not np.array_equal(table[code], table[CROP_TYPE_CODES[0]]), name
            # so mean and std over the year are equal too (to the float summation order)
            first = table[CROP_TYPE_CODES[0]].astype(np.float64)
            mine = table[code].astype(np.float64)
            np.testing.assert_allclose(mine.mean(0), first.mean(0), rtol=1e-12)
            np.testing.assert_allclose(mine.std(0), first.std(0), rtol=1e-12)


def test_peak_season_spectra_are_equal_and_timing_differs() -> None:
    nir = {code: [reflectance(code, m)["B08"] for m in YEAR] for code in CROP_TYPE_CODES}
    assert len({max(values) for values in nir.values()}) == 1  # one peak spectrum
    for kind in CROP_TYPES:  # the peak is the middle month of the type's own season
        assert YEAR[int(np.argmax(nir[kind.code]))] == kind.season_start + 1
        peak = reflectance(kind.code, kind.season_start + 1)
        assert peak == reflectance(CROP_TYPES[0].code, CROP_TYPES[0].season_start + 1)
    # February, the all-cloud Sentinel-2 month, is bare soil for every type
    feb = {tuple(reflectance(code, ALL_CLOUD_PERIOD + 1).values()) for code in CROP_TYPE_CODES}
    assert len(feb) == 1
