"""The direct read path (grid_index + direct_read) gives stackstac's own warped pixels, exactly.

Every comparison is against plain `stackstac.stack` with its default reader (a
WarpedVRT, nearest) on the same item dicts. Random rasters (so a wrong pixel
choice cannot hide in constant blocks) at 3:2, 2:3, 3:1, 1:2, 2:1 and 1:1 ratios,
origins on 10, 5 and 2.5 m lattices so that target centres fall exactly on source
pixel edges, covering the tile wholly or partly; then the synthetic world's Landsat
(30 -> 20 m) and S2 B01/B09 (60 -> 40 m) assets, and the real fixtures
(shared/fixtures/real): the USGS Landsat 8 C2 L2 scene (public domain, courtesy of
the U.S. Geological Survey) on its own 444.79 x 453.57 m grid and its pixels put
on the native 30 m Landsat lattice, and the Major TOM Core-S2L2A patch
(CC-BY-SA-4.0, contains modified Copernicus Sentinel data 2022) whose origin is
off the 10 m lattice.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import stackstac
from affine import Affine
from rasterio.transform import from_origin
from terracube.catalog.grid import Tile
from terracube.catalog.registry import RadiometryKind, band_group
from terracube.catalog.stac.items import AssetRef, Conversion, NormalizedItem, normalize_item
from terracube.pipeline.read.direct import read_direct_many
from terracube.pipeline.read.grid_index import nearest_indices, plan_direct
from terracube.pipeline.read.nearest_probe import GdalNearestProbe
from terracube.pipeline.read.reader import PasteOrWarpReader, ReadRequest
from terracube.pipeline.read.stackstac_adapter import (
    TileStack,
    gdal_env,
    numpy_fill,
    stackstac_item,
)

from tests.pipeline.test_real import LANDSAT, MAJOR_TOM, landsat_item, major_tom_item
from tests.workflows.world_fixture import shared_world

TILE = Tile(32631, 284, 2035)


def stock_stackstac(request: ReadRequest) -> np.ndarray:
    """stackstac 0.5.1 as shipped (WarpedVRT unless the whole grid matches), same dicts."""
    dicts = [stackstac_item(item, request.bands) for item in request.items]
    asked = [b for b in request.bands if any(b in d["assets"] for d in dicts)]
    arr = stackstac.stack(
        dicts,
        assets=asked,
        epsg=request.tile.epsg,
        resolution=float(request.resolution),
        bounds=request.tile.bounds,
        snap_bounds=False,
        resampling=request.resampling,
        dtype=np.dtype(request.dtype),
        fill_value=numpy_fill(request.fill_value, request.dtype),
        rescale=False,
        sortby_date=False,
        xy_coords="topleft",
        properties=False,
        band_coords=False,
        errors_as_nodata=(),
    )
    out = np.full(request.shape, request.fill_value, request.dtype)
    out[:, [request.bands.index(b) for b in asked]] = arr.data.compute(scheduler="synchronous")
    return out  # bands no item has are fill, as in the pipeline


def assert_direct_equals_stock(request: ReadRequest) -> None:
    """Every asset of the request takes the direct path, and the result is stackstac's."""
    stack = TileStack(
        request.items, request.bands, request.tile, request.resolution,
        request.dtype, request.fill_value, request.resampling,
    )  # fmt: skip
    out = np.full(request.shape, request.fill_value, request.dtype)
    assert read_direct_many([stack], [out], gdal_env()) == [[]], "some asset was warped"
    ours = PasteOrWarpReader().read(request)
    np.testing.assert_array_equal(ours, out)
    want = stock_stackstac(request)
    assert ours.dtype == want.dtype and ours.shape == want.shape
    np.testing.assert_array_equal(ours, want)  # NaN == NaN here


# --------------------------------------------------------------------------- pure rule


def test_centres_off_every_edge_are_floored_and_ties_left_to_gdal() -> None:
    # 30 m source 7770 m west of a 20 m grid: centres at 259 1/3, 260, ... -> a tie
    assert nearest_indices(0.0, 30.0, 7770.0, 20.0, 3) is None
    # 7765 m: centres at 259 1/6, 259 5/6, 260 1/2 source pixels
    assert nearest_indices(0.0, 30.0, 7765.0, 20.0, 3).tolist() == [259, 259, 260]
    # rows run south: same arithmetic with negative steps
    assert nearest_indices(7765.0, -30.0, 0.0, -20.0, 3).tolist() == [259, 259, 260]
    # 60 -> 40 m with a 10 m offset: centres at 1/2, 7/6, 11/6 source pixels
    assert nearest_indices(0.0, 60.0, 10.0, 40.0, 3).tolist() == [0, 1, 1]
    # Major TOM: origin 0.36 m off the 10 m lattice, centres far from every edge
    assert nearest_indices(819627.36, 10.0, 819630.0, 10.0, 3).tolist() == [0, 1, 2]
    assert nearest_indices(0.1, 10.0, 5.1, 10.0, 4) is None  # 'exactly' on an edge
    with pytest.raises(ValueError, match="non-zero"):
        nearest_indices(0.0, 0.0, 0.0, 10.0, 1)


def test_gdal_probe_settles_ties() -> None:
    minx, _, _, maxy = TILE.bounds
    # 30 m scene 7760 m west and 90 m north of the tile: centre 0 sits on column 259.0
    grid = tuple(from_origin(minx - 7760, maxy + 90, 30, 30))[:6]
    rows, cols = GdalNearestProbe()(grid, (600, 600), TILE, 20.0)
    assert cols[:6].tolist() == [259, 259, 260, 261, 261, 262]  # the upper pixel on this lattice
    assert rows[:6].tolist() == [3, 4, 4, 5, 6, 6]  # centres at 3 1/3, 4.0, 4 2/3 ...
    # 20 -> 40 m from the same corner: centre 2j+1 on an edge, GDAL takes 2j+1 (mask_grid)
    rows, cols = GdalNearestProbe()(tuple(TILE.transform(20))[:6], (128, 128), TILE, 40.0)
    assert cols[:3].tolist() == [1, 3, 5] and rows[:3].tolist() == [1, 3, 5]


def test_plan_refuses_what_only_a_warp_gets_right() -> None:
    minx, _, _, maxy = TILE.bounds
    on_lattice = from_origin(minx - 7760, maxy + 90, 30, 30)
    assert plan_direct(on_lattice, (600, 600), TILE.epsg, TILE, 20) is None  # ties, no oracle
    assert plan_direct(on_lattice, (600, 600), TILE.epsg, TILE, 20, GdalNearestProbe())
    assert plan_direct(on_lattice, (600, 600), 32632, TILE, 20) is None  # other CRS
    assert plan_direct(on_lattice, (600, 600), None, TILE, 20) is None  # unknown CRS
    rotated = on_lattice * Affine.rotation(10)
    assert plan_direct(rotated, (600, 600), TILE.epsg, TILE, 20) is None
    south_up = Affine(30, 0, minx, 0, 30, maxy - 2560)
    assert plan_direct(south_up, (600, 600), TILE.epsg, TILE, 20) is None
    far = from_origin(minx + 5000, maxy, 30, 30)  # misses the tile: nothing to read
    plan = plan_direct(far, (10, 10), TILE.epsg, TILE, 20)
    assert plan is not None and plan.window is None and (plan.rows == -1).all()


# --------------------------------------------------------------------------- synthetic


def _write(path: Path, values: np.ndarray, transform: Affine, nodata: float | None) -> None:
    profile = {
        "driver": "GTiff",
        "width": values.shape[1],
        "height": values.shape[0],
        "count": 1,
        "dtype": values.dtype.name,
        "crs": f"EPSG:{TILE.epsg}",
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(values, 1)


def _item(name: str, ref: AssetRef, epsg: int = TILE.epsg) -> NormalizedItem:
    when = datetime(2022, 1, 1, tzinfo=UTC)
    footprint = TILE.footprint_lonlat()
    return NormalizedItem(name, "c", "landsat_c2l2", when, footprint, epsg, (ref,), None, 0.0, None)


RATIOS = [  # (source m, target m, lattice step of the source origins in m)
    (30.0, 20.0, 10.0),
    (30.0, 20.0, 5.0),
    (60.0, 40.0, 10.0),
    (60.0, 40.0, 20.0),
    (20.0, 40.0, 10.0),
    (20.0, 10.0, 10.0),
    (60.0, 20.0, 10.0),
    (15.0, 10.0, 2.5),
    (10.0, 10.0, 2.5),
    (300.0, 10.0, 5.0),  # grids where centres on the raster's first edge went
    (42.0, 20.0, 1.0),  # either way in GDAL: no closed tie rule holds there
    (455.5, 20.0, 0.5),
]
VALUES = [  # (dtype, file nodata, fill value)
    ("uint16", 0, 0),
    ("uint16", None, 0),
    ("uint16", 65535, 0),
    ("float32", math.nan, math.nan),
]


@pytest.mark.parametrize(("src", "dst", "step"), RATIOS)
@pytest.mark.parametrize(("dtype", "nodata", "fill"), VALUES)
def test_direct_equals_stackstac_warp_on_lattice_grids(
    tmp_path: Path, src: float, dst: float, step: float, dtype: str, nodata, fill
) -> None:
    rng = np.random.default_rng(int(src * 1000 + dst * 10 + step * 7))
    minx, _, _, maxy = TILE.bounds
    items = []
    # one raster covering the tile, two cut by it (their edges land inside the tile)
    for n, (dx, dy, rows, cols) in enumerate([(-41, 37, 400, 400), (53, -29, 61, 47), (-7, 3, 33, 70)]):  # fmt: skip
        transform = from_origin(minx + dx * step, maxy + dy * step, src, src)
        if dtype == "float32":
            values = rng.normal(-12, 4, (rows, cols)).astype(np.float32)
            values[rng.random((rows, cols)) < 0.05] = np.nan
        else:
            values = rng.integers(1, 65535, (rows, cols), dtype=np.uint16)
            if nodata is not None:
                values[rng.random((rows, cols)) < 0.05] = nodata
        path = tmp_path / f"a{n}.tif"
        _write(path, values, transform, nodata)
        ref = AssetRef("x", str(path), "x", transform, (rows, cols), nodata, dtype, Conversion(RadiometryKind.IDENTITY))  # fmt: skip
        items.append(_item(f"i{n}", ref))
    request = ReadRequest(tuple(items), ("x",), TILE, dst, dtype, fill)
    assert_direct_equals_stock(request)
    got = PasteOrWarpReader().read(request)
    filled = np.isnan(got) if dtype == "float32" else got == fill
    assert 0.0 < filled.mean() < 1.0  # partial coverage and nodata really exercised


def test_file_disagreeing_with_its_metadata_is_warped_from_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    minx, _, _, maxy = TILE.bounds
    true = from_origin(minx - 90, maxy + 60, 30, 30)
    values = rng.integers(1, 65535, (200, 200), dtype=np.uint16)
    _write(tmp_path / "a.tif", values, true, 0)
    claimed = from_origin(minx - 60, maxy + 60, 30, 30)  # one pixel off
    ref = AssetRef("x", str(tmp_path / "a.tif"), "x", claimed, (200, 200), 0, "uint16", Conversion(RadiometryKind.IDENTITY))  # fmt: skip
    request = ReadRequest((_item("i", ref),), ("x",), TILE, 20, "uint16", 0)
    assert_direct_equals_stock(request)


# --------------------------------------------------------------------------- synthetic world


@pytest.fixture(scope="module")
def world_items(tmp_path_factory: pytest.TempPathFactory) -> list[NormalizedItem]:
    import json

    world = shared_world(tmp_path_factory)
    items = []
    for name, path in world.ndjson.items():
        if name in ("sentinel-2-l2a", "landsat-c2-l2"):
            items += [normalize_item(json.loads(line)) for line in Path(path).read_text().splitlines()]  # fmt: skip
    return items


def _world_tiles(items: list[NormalizedItem]) -> list[Tile]:
    """Tiles under the first scene of each zone, a few in from its corner."""
    tiles = []
    for epsg in sorted({i.epsg for i in items}):
        ref = next(i for i in items if i.epsg == epsg).assets[0]
        x, y = ref.transform * (ref.shape[1] * 0.5, ref.shape[0] * 0.5)
        tiles.append(Tile(epsg, int(x // 2560), int(y // 2560)))
    return tiles


@pytest.mark.parametrize(
    ("collection", "group", "bands"),
    [
        ("landsat_c2l2", "landsat", None),  # 30 m -> 20 m, QA_PIXEL included
        ("sentinel2_l2a", "s2_40m", None),  # B01/B09 60 m -> 40 m
    ],
)
def test_world_assets_equal_stackstac_warp(world_items, collection, group, bands) -> None:
    grp = band_group(group)
    for tile in _world_tiles(world_items):
        items = tuple(i for i in world_items if i.modality == collection and i.epsg == tile.epsg)
        items = tuple(i for i in items if i.geometry.intersects(tile.footprint_lonlat()))[:6]
        assert items, tile
        names = grp.band_names + ((items[0].mask.band,) if items[0].mask is not None else ())
        request = ReadRequest(items, names, tile, grp.resolution, grp.dtype, grp.nodata)
        assert_direct_equals_stock(request)


# --------------------------------------------------------------------------- real fixtures


def _landsat() -> NormalizedItem:
    bands = ["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"]
    return normalize_item(landsat_item(), required_bands=bands)


def _scene_tiles(transform: Affine, shape: tuple[int, int], epsg: int) -> list[Tile]:
    """Tiles at the scene centre and at a third of the way in (both inside its footprint)."""
    points = [transform * (shape[1] * f, shape[0] * f) for f in (0.5, 0.33)]
    return [Tile(epsg, int(x // 2560), int(y // 2560)) for x, y in points]


def test_real_landsat_on_its_own_grid_equals_stackstac_warp() -> None:
    """444.79 x 453.57 m pixels: no centre sits on an edge, so the float floor decides."""
    item = _landsat()
    assert item.asset("SR_B4").transform is None  # no proj metadata: planned from the file
    with rasterio.open(item.asset("SR_B4").href) as ds:
        transform, shape, epsg = ds.transform, ds.shape, ds.crs.to_epsg()
    group = band_group("landsat")
    names = (*group.band_names, item.mask.band)  # type: ignore[union-attr]
    for tile in _scene_tiles(transform, shape, epsg):
        request = ReadRequest((item,), names, tile, 20, group.dtype, group.nodata)
        assert_direct_equals_stock(request)


def test_real_landsat_pixels_on_the_native_30m_lattice(tmp_path: Path) -> None:
    """The fixture's pixels written on a 30 m grid at the scene's own origin (UTM
    coordinates ending in 285/715 m, i.e. on the 15 m Landsat lattice) -> 20 m."""
    item = _landsat()
    refs = []
    for band in ("SR_B4", "QA_PIXEL"):
        src = item.mask if band == "QA_PIXEL" else item.asset(band)
        with rasterio.open(src.href) as ds:  # type: ignore[union-attr]
            values, nodata, epsg = ds.read(1), ds.nodata, ds.crs.to_epsg()
            origin = (ds.transform.c, ds.transform.f)
        transform = from_origin(*origin, 30, 30)
        _write_crs(tmp_path / f"{band}.tif", values, transform, nodata, epsg)
        refs.append(AssetRef(band, str(tmp_path / f"{band}.tif"), band, transform, values.shape, nodata, "uint16", Conversion(RadiometryKind.IDENTITY)))  # fmt: skip
    when = datetime(2019, 12, 1, tzinfo=UTC)
    native = NormalizedItem("native", "c", "landsat_c2l2", when, item.geometry, epsg, (refs[0],), refs[1], 0.0, None)  # fmt: skip
    for tile in _scene_tiles(refs[0].transform, refs[0].shape, epsg):
        request = ReadRequest((native,), ("SR_B4", "QA_PIXEL"), tile, 20, "uint16", 0)
        assert_direct_equals_stock(request)
        assert (PasteOrWarpReader().read(request) != 0).any()


def _write_crs(path: Path, values, transform, nodata, epsg: int) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
        dtype=values.dtype.name, crs=f"EPSG:{epsg}", transform=transform, nodata=nodata,
        tiled=True, blockxsize=64, blockysize=64,
    ) as ds:  # fmt: skip
        ds.write(values, 1)


def test_real_major_tom_off_lattice_origin_equals_stackstac_warp() -> None:
    item = normalize_item(major_tom_item(), require_mask=False)
    with rasterio.open(MAJOR_TOM / "B04.tif") as ds:
        t = ds.transform
    tile = Tile(32633, math.ceil(t.c / 2560), math.floor(t.f / 2560) - 1)
    for group in ("s2_10m", "s2_40m"):
        grp = band_group(group)
        request = ReadRequest((item,), grp.band_names, tile, grp.resolution, grp.dtype, grp.nodata)
        assert_direct_equals_stock(request)


def test_fixtures_present() -> None:
    assert LANDSAT.is_dir() and MAJOR_TOM.is_dir()


@pytest.mark.parametrize("nodata", [0, None])
def test_internal_mask_is_honoured_like_the_warp(tmp_path: Path, nodata) -> None:
    """GDAL's warper honours a per-dataset (internal) mask even when nodata is set; so must
    the direct path, or masked pixels would come back as values."""
    rng = np.random.default_rng(11)
    minx, _, _, maxy = TILE.bounds
    values = rng.integers(1, 65535, (300, 300), dtype=np.uint16)
    mask = np.where(rng.random((300, 300)) < 0.3, 0, 255).astype(np.uint8)
    transform = from_origin(minx - 600, maxy + 600, 60, 60)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        _write(tmp_path / "m.tif", values, transform, nodata)
        with rasterio.open(tmp_path / "m.tif", "r+") as ds:
            ds.write_mask(mask)
    ref = AssetRef("x", str(tmp_path / "m.tif"), "x", transform, (300, 300), nodata, "uint16", Conversion(RadiometryKind.IDENTITY))  # fmt: skip
    request = ReadRequest((_item("i", ref),), ("x",), TILE, 40, "uint16", 0)
    assert_direct_equals_stock(request)
    got = PasteOrWarpReader().read(request)[0, 0]
    assert 0.2 < (got == 0).mean() < 0.4  # the mask's 30 %, not the values' 0 %
