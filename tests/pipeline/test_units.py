"""Pure pieces of the pipeline with exact expected values: masks, composites, OSM raster, compat."""

from __future__ import annotations

from datetime import UTC, datetime

import geopandas as gpd
import numpy as np
import pytest
import shapely
from terracube.catalog.grid import Tile
from terracube.catalog.registry import OSM_CATEGORIES, RadiometryKind, band_group, modality
from terracube.catalog.stac.items import AssetRef, Conversion, NormalizedItem
from terracube.pipeline.cloudmask import clear_from_mask, observation_valid
from terracube.pipeline.composite import composite
from terracube.pipeline.radiometry import RadiometryError, to_stored
from terracube.pipeline.read.stackstac_adapter import numpy_fill, stackstac_item
from terracube.pipeline.static_maps import OsmRasterParams, osm_raster

TILE = Tile(32631, 284, 2034)


def test_scl_classes_mask_exactly_the_registry_codes() -> None:
    scl = np.arange(12, dtype=np.uint16)
    clear = clear_from_mask(scl, modality("sentinel2_l2a").mask)
    assert np.flatnonzero(clear).tolist() == [2, 4, 5, 6, 7, 11]


def test_qa_pixel_bits() -> None:
    qa = np.array([0, 1, 2, 4, 8, 16, 32, 64, 21824, 21826], dtype=np.uint16)
    clear = clear_from_mask(qa, modality("landsat_c2l2").mask)
    # 21824 = clear land with the usual high-confidence bits; +2 = dilated cloud
    assert clear.tolist() == [True, False, False, False, False, False, True, True, True, False]


def test_outside_footprint_is_never_clear_even_if_qa_reads_zero() -> None:
    bands = np.zeros((1, 2, 1, 2), np.uint16)
    bands[0, :, 0, 1] = 900
    mask = np.zeros((1, 1, 2), np.uint16)
    valid = observation_valid(bands, 0, mask, modality("landsat_c2l2").mask)
    assert valid.tolist() == [[[False, True]]]


def test_median_even_count_rounds_half_to_even_and_ignores_clouds() -> None:
    values = np.array([100, 103, 9000, 101], dtype=np.uint16).reshape(4, 1, 1, 1)
    valid = np.array([True, True, False, True]).reshape(4, 1, 1)
    assert composite(values, valid, 0).values.item() == 101  # median of 100, 101, 103
    valid2 = np.array([True, True, False, False]).reshape(4, 1, 1)
    assert composite(values, valid2, 0).values.item() == 102  # (100 + 103) / 2 = 101.5 -> 102
    pair = np.array([100, 101], dtype=np.uint16).reshape(2, 1, 1, 1)
    assert composite(pair, np.ones((2, 1, 1), bool), 0).values.item() == 100  # 100.5 -> 100


def test_composite_valid_fraction_used_and_nodata() -> None:
    values = np.full((3, 1, 2, 2), 500, np.uint16)
    values[2] = 7000  # a cloud that must not leak
    valid = np.zeros((3, 2, 2), bool)
    valid[0, 0, 0] = valid[1, 0, 1] = True
    out = composite(values, valid, 0)
    assert out.values[0].tolist() == [[500, 500], [0, 0]]
    assert out.valid_fraction == 0.5 and out.used == (0, 1)


def test_best_prefers_the_clearest_scene() -> None:
    values = np.stack([np.full((1, 2, 2), v, np.uint16) for v in (10, 20)])
    valid = np.array([[[True, False], [False, False]], [[True, True], [True, False]]])
    out = composite(values, valid, 0, method="best")
    assert out.values[0].tolist() == [[20, 20], [20, 0]] and out.used == (1,)


def test_s1_float_median_keeps_nan_for_missing() -> None:
    values = np.array([[-10.0], [-12.0], [np.nan]], np.float32).reshape(3, 1, 1, 1)
    out = composite(values, ~np.isnan(values[:, 0]), float("nan"))
    assert out.values.item() == pytest.approx(-11.0)


def _item(conversion: Conversion, bands: tuple[str, ...] = ("SR_B4",)) -> NormalizedItem:
    refs = tuple(AssetRef(b, f"/x/{b}.tif", b, None, None, 0, "uint16", conversion) for b in bands)
    return NormalizedItem(
        "it", "c", "landsat_c2l2", datetime(2022, 1, 1, tzinfo=UTC),
        shapely.box(0, 0, 1, 1), 32631, refs, None, None, None,
    )  # fmt: skip


def test_landsat_scale_disagreeing_with_the_corpus_is_refused() -> None:
    group = band_group("landsat")
    wrong = _item(Conversion(RadiometryKind.IDENTITY, 0, 1e-4, 0.0, "raster:bands"))
    with pytest.raises(RadiometryError, match="SR_B4"):
        to_stored(np.zeros((1, len(group.bands), 1, 1), np.uint16), [wrong], group, 0)


def test_missing_optional_band_stored_as_nodata() -> None:
    group = band_group("landsat")
    ok = _item(Conversion(RadiometryKind.IDENTITY, 0, 2.75e-5, -0.2, "raster:bands"))
    raw = np.full((1, len(group.bands), 1, 1), 8000, np.uint16)
    stored = to_stored(raw, [ok], group, 0)
    assert stored[0, group.band_names.index("SR_B4")].item() == 8000
    assert stored[0, group.band_names.index("ST_B10")].item() == 0


def _features(rows: list[tuple[str, shapely.Geometry]]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"category": [c for c, _ in rows], "osm_type": "node", "osm_id": range(len(rows))},
        geometry=[g for _, g in rows],
        crs=TILE.crs,
    )


def test_osm_percent_cover_points_lines_and_edges() -> None:
    minx, miny, maxx, maxy = TILE.bounds
    names = [c.name for c in OSM_CATEGORIES]
    features = _features(
        [
            ("building", shapely.box(minx, maxy - 10, minx + 10, maxy)),  # one whole pixel
            # x 20.5..23.5 m touches two of the five 2 m columns: 40 % (all_touched rounds up)
            ("building", shapely.box(minx + 20.5, maxy - 10, minx + 23.5, maxy)),
            ("flagpole", shapely.Point(minx + 15.3, maxy - 3.1)),
            ("flagpole", shapely.Point(maxx, miny)),  # on the closed corner of the tile
            ("highway", shapely.LineString([(minx + 1, maxy - 55), (minx + 1, maxy - 45)])),
        ]
    )
    out = osm_raster(features, TILE)
    building = out[names.index("building")]
    assert building[0, 0] == 100 and building[0, 2] == 40
    flag = out[names.index("flagpole")]
    assert flag[0, 1] == 4 and flag[255, 255] >= 1 and flag.astype(bool).sum() == 2
    highway = out[names.index("highway")]
    assert highway[4, 0] >= 1 and highway[5, 0] >= 1 and highway[:, 1:].sum() == 0
    assert out.sum(axis=(1, 2))[names.index("river")] == 0


def test_osm_rejects_wrong_crs_and_bad_fine_resolution() -> None:
    wrong = _features([("building", shapely.box(0, 0, 1, 1))]).set_crs(4326, allow_override=True)
    with pytest.raises(ValueError, match="features_for_tile"):
        osm_raster(wrong, TILE)
    with pytest.raises(ValueError, match="divide"):
        OsmRasterParams(fine_m=3)


def test_stackstac_item_carries_proj_epsg_and_absolute_hrefs() -> None:
    ref = AssetRef(
        "B04", "rel/B04.tif", "red", None, None, 0, "uint16", Conversion(RadiometryKind.IDENTITY)
    )
    item = NormalizedItem(
        "i", "c", "sentinel2_l2a", datetime(2022, 1, 1, tzinfo=UTC),
        shapely.box(0, 0, 1, 1), 32631, (ref,), None, None, None,
    )  # fmt: skip
    data = stackstac_item(item, ("B04", "SCL"))
    assert data["properties"]["proj:epsg"] == 32631
    assert data["assets"]["B04"]["proj:epsg"] == 32631
    assert data["assets"]["B04"]["href"].startswith("/") and "SCL" not in data["assets"]
    assert isinstance(numpy_fill(0, "uint16"), np.uint16)
    with pytest.raises(ValueError, match="uint16"):
        numpy_fill(float("nan"), "uint16")
