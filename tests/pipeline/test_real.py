"""Real rasters through the pipeline, compared with direct rasterio reads of the same files.

Fixtures (shared/fixtures/real, see each SOURCES.md): Major TOM Core-S2L2A
(CC-BY-SA-4.0, contains modified Copernicus Sentinel data 2022); ESA WorldCover
2021 v200 (CC-BY-4.0, (c) ESA WorldCover project 2021 / contains modified
Copernicus Sentinel data 2021); USGS Landsat 8 C2 L2 (public domain, courtesy
of the U.S. Geological Survey); SSL4EO-S12 (CC-BY-4.0, contains modified
Copernicus Sentinel data 2020).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from terracube.catalog.grid import Tile, tile_at
from terracube.catalog.registry import S2_GROUPS, band_group, modality
from terracube.catalog.stac.items import normalize_item
from terracube.pipeline.corpus.store import SampleState
from terracube.pipeline.read.reader import PasteOrWarpReader, ReadRequest
from terracube.pipeline.static_maps import class_map
from terracube.pipeline.tile import BuildParams, TileInputs, build_tile

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"
MAJOR_TOM = (
    FIXTURES / "major-tom-core/S2L2A/0U/0U_199R"
    / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
)  # fmt: skip
LANDSAT = FIXTURES / "landsat-c2l2-stactools"
LANDSAT_ID = "LC08_L2SP_008059_20191201_20200825_02_T1"
WORLDCOVER_ITEM = (
    FIXTURES / "esa-worldcover/examples/ESA_WorldCover_10m_2021_v200_N00E006"
    / "ESA_WorldCover_10m_2021_v200_N00E006.json"
)  # fmt: skip
SSL4EO = FIXTURES / "ssl4eo-s12"


@pytest.fixture(autouse=True)
def _fixtures_present() -> None:
    if not FIXTURES.is_dir():
        pytest.fail(
            f"real-data fixtures not found at {FIXTURES}: check out shared/ beside the repo"
        )


def _raster_asset(path: Path) -> dict:
    with rasterio.open(path) as ds:
        return {
            "href": str(path),
            "type": "image/tiff; application=geotiff",
            "proj:code": f"EPSG:{ds.crs.to_epsg()}",
            "proj:transform": list(ds.transform)[:6],
            "proj:shape": list(ds.shape),
            "raster:bands": [{"data_type": ds.dtypes[0]}],
        }


def _footprint(path: Path) -> dict:
    with rasterio.open(path) as ds:
        box = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return shapely.geometry.mapping(shapely.box(*box))


def major_tom_item() -> dict:
    """A STAC item dict from the files' own metadata; the baseline from the product name."""
    product = MAJOR_TOM.name
    baseline = product.split("_")[3]  # "N0400"
    bands = [b for g in S2_GROUPS for b in g.band_names]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": product,
        "collection": "sentinel-2-l2a",
        "geometry": _footprint(MAJOR_TOM / "B04.tif"),
        "bbox": list(shapely.geometry.shape(_footprint(MAJOR_TOM / "B04.tif")).bounds),
        "properties": {
            "datetime": "2022-07-06T08:56:11Z",
            "platform": "sentinel-2a",
            "s2:processing_baseline": baseline,
            "proj:code": "EPSG:32633",
        },
        "assets": {b: _raster_asset(MAJOR_TOM / f"{b}.tif") for b in bands},
        "links": [],
    }


def test_major_tom_off_grid_origin_equals_direct_read_minus_1000() -> None:
    item = normalize_item(major_tom_item(), require_mask=False)  # Major TOM has no SCL
    assert item.mask is None
    assert item.asset("B04").conversion.dn_offset == -1000.0
    with rasterio.open(MAJOR_TOM / "B04.tif") as ds:
        transform = ds.transform
    assert transform.c % 10 != 0  # the patch origin is off the 10 m lattice (819627.36)
    tile = Tile(32633, math.ceil(transform.c / 2560), math.floor(transform.f / 2560) - 1)
    inputs = TileInputs(
        tile=tile,
        period_starts=(date(2022, 7, 1),),
        temporal={"sentinel2_l2a": [[item]]},
    )
    result = build_tile(inputs, [g.name for g in S2_GROUPS], BuildParams(allow_unmasked=True))
    assert result.sample.states == {"sentinel2_l2a": SampleState.DONE}
    minx, _, _, maxy = tile.bounds
    for group in S2_GROUPS:
        res = group.resolution
        for b, band in enumerate(group.band_names):
            with rasterio.open(MAJOR_TOM / f"{band}.tif") as ds:
                src_res = ds.transform.a
                # nearest = the source pixel holding each target pixel centre
                cols = np.floor(
                    (minx + (np.arange(group.pixels) + 0.5) * res - ds.transform.c) / src_res
                )
                rows = np.floor(
                    (ds.transform.f - (maxy - (np.arange(group.pixels) + 0.5) * res)) / src_res
                )
                data = ds.read(1)
            expected = data[np.ix_(rows.astype(int), cols.astype(int))].astype(np.int64) - 1000
            expected = np.clip(expected, 1, None)
            np.testing.assert_array_equal(
                result.sample.groups[group.name][0, b], expected, err_msg=band
            )
    # 10 m bands are a pure shift of whole source pixels: no pixel duplicated or dropped
    with rasterio.open(MAJOR_TOM / "B04.tif") as ds:
        col0 = math.floor((minx + 5 - ds.transform.c) / 10)
        row0 = math.floor((ds.transform.f - (maxy - 5)) / 10)
        window = ds.read(1, window=rasterio.windows.Window(col0, row0, 256, 256))
    np.testing.assert_array_equal(result.sample.groups["s2_10m"][0, 2], window.astype(int) - 1000)
    assert result.sample.provenance["s2_10m"] == [[MAJOR_TOM.name]]


def test_worldcover_epsg4326_onto_utm_keeps_classes_and_histogram() -> None:
    item = normalize_item(json.loads(WORLDCOVER_ITEM.read_text()), base_href=str(WORLDCOVER_ITEM))
    tile = tile_at(6.62, 0.30)  # Sao Tome: forest, built-up, water, grassland
    assert item.epsg == 4326 and tile.epsg == 32632
    group = band_group("worldcover")
    values, used = class_map(
        [item], tile, PasteOrWarpReader(), group, modality("worldcover").classes
    )
    assert used == [item.id]
    codes = set(np.unique(values).tolist())
    assert codes <= {0, *range(10, 101, 10), 95}
    direct = np.zeros((256, 256), np.uint8)
    with rasterio.open(item.asset("map").href) as ds:
        reproject(
            rasterio.band(ds, 1),
            direct,
            dst_transform=tile.transform(10),
            dst_crs=tile.crs,
            resampling=Resampling.nearest,
        )
    classes = sorted(set(np.unique(direct).tolist()) - {0})
    assert len(classes) >= 2, "pick a tile with several classes"
    for code in classes:
        ours, theirs = (float((a == code).mean()) for a in (values[0], direct))
        assert abs(ours - theirs) <= 0.02 + 0.1 * theirs, (code, ours, theirs)
    assert set(np.unique(values).tolist()) - {0} <= set(classes) | {0}


def landsat_item() -> dict:
    data = json.loads((LANDSAT / f"{LANDSAT_ID}_SR_stac.json").read_text())
    assets = {}
    for key, asset in data["assets"].items():
        local = LANDSAT / f"{LANDSAT_ID}_{key}"
        if local.exists():
            assets[key] = {**asset, "href": str(local)}
    return {**data, "assets": assets}


def test_landsat_qa_pixel_clouds_become_missing_pixels() -> None:
    item = normalize_item(
        landsat_item(), required_bands=["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"]
    )
    assert item.mask is not None and "SR_B1" in item.missing_bands
    with rasterio.open(item.mask.href) as ds:
        qa = ds.read(1)
        bounds, crs = ds.bounds, ds.crs.to_epsg()
    # A tile in the scene centre (the stactools rasters are ~445 m resamples of the scene).
    cx, cy = (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2
    tile = Tile(crs, int(cx // 2560), int(cy // 2560))
    group = band_group("landsat")
    inputs = TileInputs(
        tile=tile,
        period_starts=(date(2019, 12, 1),),
        temporal={"landsat_c2l2": [[item]]},
    )
    result = build_tile(inputs, ["landsat"])
    raw = PasteOrWarpReader().read(
        ReadRequest((item,), (*group.band_names, "QA_PIXEL"), tile, 20, "uint16", 0)
    )[0]
    cloud_bits = sum(1 << b for b in (0, 1, 2, 3, 4))
    cloudy = (raw[-1] & cloud_bits) != 0
    assert 0 < cloudy.mean() < 1 or qa.size  # the tile exists in the scene
    if result.sample.states["landsat_c2l2"] is SampleState.EMPTY:
        assert cloudy.all()
        return
    got = result.sample.groups["landsat"][0]
    assert np.all(got[:, cloudy] == 0)  # clouds are missing, never values
    b2 = group.band_names.index("SR_B2")
    np.testing.assert_array_equal(got[b2, ~cloudy], raw[b2, ~cloudy])  # clear = DN as published
    assert result.sample.valid_fraction["landsat"][0] == pytest.approx(
        float((~cloudy & (raw[b2] != 0)).mean())
    )


def test_landsat_tile_with_clouds_and_clear_pixels() -> None:
    """Search the scene for a tile holding both, so the masking is exercised both ways."""
    item = normalize_item(
        landsat_item(), required_bands=["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"]
    )
    with rasterio.open(item.mask.href) as ds:  # type: ignore[union-attr]
        qa, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    clear = (qa & 0b11111) == 0
    rows, cols = np.nonzero(clear)
    assert rows.size, "the fixture scene has clear pixels"
    x, y = transform * (cols[len(cols) // 2] + 0.5, rows[len(rows) // 2] + 0.5)
    tile = Tile(epsg, int(x // 2560), int(y // 2560))
    inputs = TileInputs(tile, (date(2019, 12, 1),), {"landsat_c2l2": [[item]]})
    result = build_tile(inputs, ["landsat"])
    assert result.sample.states["landsat_c2l2"] is SampleState.DONE
    got = result.sample.groups["landsat"][0]
    raw = PasteOrWarpReader().read(
        ReadRequest((item,), ("SR_B4", "QA_PIXEL"), tile, 20, "uint16", 0)
    )[0]
    cloudy = (raw[1] & 0b11111) != 0
    red = band_group("landsat").band_names.index("SR_B4")
    assert np.all(got[red][cloudy] == 0)
    np.testing.assert_array_equal(got[red][~cloudy], raw[0][~cloudy])
    assert (~cloudy).any()


def _ssl4eo_item(folder: Path, collection: str, when: datetime, files: dict[str, str]) -> dict:
    first = folder / next(iter(files.values()))
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": folder.name,
        "collection": collection,
        "geometry": _footprint(first),
        "bbox": list(shapely.geometry.shape(_footprint(first)).bounds),
        "properties": {"datetime": when.isoformat(), "s2:processing_baseline": "02.14"},
        "assets": {band: _raster_asset(folder / name) for band, name in files.items()},
        "links": [],
    }


def test_ssl4eo_s1_s2_pair_lands_on_one_grid() -> None:
    s2_dir = SSL4EO / "s2a/0000200/20200813T054639_20200813T054952_T43RCP"
    s1_dir = (
        SSL4EO / "s1/0000200/S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457"
    )
    s2_files = {
        **{b: f"B{int(b[1:])}.tif" for b in ("B02", "B03", "B04", "B08", "B05", "B06", "B07",
                                                "B11", "B12", "B01", "B09")},
        "B8A": "B8A.tif",
    }  # fmt: skip
    s2 = normalize_item(  # SSL4EO S2 patches carry no SCL
        _ssl4eo_item(s2_dir, "sentinel-2-l2a", datetime(2020, 8, 13, tzinfo=UTC), s2_files),
        require_mask=False,
    )
    s1_data = _ssl4eo_item(
        s1_dir, "sentinel-1-rtc", datetime(2020, 6, 7, tzinfo=UTC), {"VV": "VV.tif", "VH": "VH.tif"}
    )
    s1 = normalize_item(s1_data)
    assert s2.epsg == s1.epsg == 4326
    lon, lat = shapely.geometry.shape(s2_data_geometry(s2_dir)).centroid.coords[0]
    tile = tile_at(lon, lat)
    reader = PasteOrWarpReader()
    s2_grid = reader.read(ReadRequest((s2,), ("B04",), tile, 10, "uint16", 0))[0, 0]
    s1_grid = reader.read(ReadRequest((s1,), ("VV",), tile, 10, "float32", math.nan))[0, 0]
    assert s2_grid.shape == s1_grid.shape == tile.shape(10)
    for path, got, dtype, fill in (
        (s2_dir / "B4.tif", s2_grid, np.uint16, 0),
        (s1_dir / "VV.tif", s1_grid, np.float32, np.nan),
    ):
        direct = np.full(tile.shape(10), fill, dtype=dtype)
        with rasterio.open(path) as ds:
            reproject(
                rasterio.band(ds, 1),
                direct,
                dst_transform=tile.transform(10),
                dst_crs=tile.crs,
                dst_nodata=fill,
                resampling=Resampling.nearest,
            )
        # Cross-CRS nearest: GDAL's warper approximates the transform (0.125 px error
        # threshold), so a handful of pixel centres on a source pixel edge pick the
        # neighbour. Anything beyond that would be a shifted grid.
        same = (got == direct) | (np.isnan(got) & np.isnan(direct))
        assert same.mean() > 0.999, f"{path.name}: {(~same).sum()} pixels differ"
    # The co-registered pair covers the same ground: their footprints on the grid coincide.
    s2_there, s1_there = s2_grid != 0, ~np.isnan(s1_grid)
    overlap = (s2_there & s1_there).sum() / (s2_there | s1_there).sum()
    assert s2_there.any() and overlap > 0.95


def s2_data_geometry(folder: Path) -> dict:
    return _footprint(folder / "B4.tif")
