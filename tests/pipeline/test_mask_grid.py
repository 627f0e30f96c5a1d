"""The fast read paths give stackstac's own warped pixels, exactly.

Random rasters (so a wrong pixel choice cannot hide in constant blocks) that cover
the tile only partly, at offsets of odd and even pixel counts: the shared mask put
on the 10 m and 40 m grids in numpy, and NestedGridReader's shifted windows, are
compared with plain `stackstac.stack` (WarpedVRT for every asset).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import stackstac
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from terracube.catalog.grid import Tile
from terracube.catalog.registry import RadiometryKind, band_group, modality
from terracube.catalog.stac.items import AssetRef, Conversion, NormalizedItem
from terracube.pipeline.mask_grid import (
    mask_on_grid,
    scale_factor,
    shared_mask_resolution,
)
from terracube.pipeline.read.reader import PasteOrWarpReader
from terracube.pipeline.read.stackstac_adapter import TileStack, nested_offset, stack_tiles
from terracube.pipeline.tile import modality_requests

TILE = Tile(32631, 284, 2035)
SCL = modality("sentinel2_l2a").mask


def _write(path: Path, values: np.ndarray, origin: tuple[float, float], res: float) -> Affine:
    transform = from_origin(origin[0], origin[1], res, res)
    profile = {
        "driver": "GTiff",
        "width": values.shape[1],
        "height": values.shape[0],
        "count": 1,
        "dtype": values.dtype.name,
        "crs": f"EPSG:{TILE.epsg}",
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(values, 1)
    return transform


def _ref(band: str, path: Path, transform: Affine, shape: tuple[int, int]) -> AssetRef:
    return AssetRef(
        band, str(path), band, transform, shape, 0, "uint16", Conversion(RadiometryKind.IDENTITY)
    )


def _item(name: str, mask: AssetRef | None, epsg: int = TILE.epsg) -> NormalizedItem:
    footprint = TILE.footprint_lonlat()
    when = datetime(2022, 1, 1, tzinfo=UTC)
    return NormalizedItem(name, "c", "sentinel2_l2a", when, footprint, epsg, (), mask, 0.0, None)


def _stock_stackstac(assets: list[tuple[str, Affine, tuple]], res: float) -> np.ndarray:
    """stackstac 0.5.1 as shipped: every asset through its WarpedVRT, nearest."""
    items = [
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": f"i{n}",
            "bbox": [0, 0, 1, 1],
            "geometry": None,
            "properties": {"datetime": "2022-01-01T00:00:00Z", "proj:epsg": TILE.epsg},
            "assets": {
                "SCL": {
                    "href": path,
                    "type": "image/tiff",
                    "proj:transform": list(transform)[:6],
                    "proj:shape": list(shape),
                }
            },
        }
        for n, (path, transform, shape) in enumerate(assets)
    ]
    arr = stackstac.stack(
        items,
        assets=["SCL"],
        epsg=TILE.epsg,
        resolution=float(res),
        bounds=TILE.bounds,
        snap_bounds=False,
        resampling=Resampling.nearest,
        dtype=np.dtype("uint16"),
        fill_value=np.uint16(0),
        rescale=False,
        xy_coords="topleft",
        properties=False,
        band_coords=False,
    )
    return arr.data.compute(scheduler="synchronous")


@pytest.fixture(scope="module")
def scl_assets(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Affine, tuple]]:
    """Three 20 m SCL-like rasters: one covering the tile, two cut by it (odd/even offsets)."""
    root = tmp_path_factory.mktemp("scl")
    rng = np.random.default_rng(7)
    minx, _, _, maxy = TILE.bounds
    layouts = [  # (cols offset, rows offset from the tile corner in 20 m pixels, rows, cols)
        (-37, -11, 200, 200),
        (45, 31, 70, 90),  # inside the tile: right and bottom edges cut through it
        (-20, -50, 90, 61),  # top-left corner only, odd width
    ]
    out = []
    for n, (dc, dr, rows, cols) in enumerate(layouts):
        values = rng.integers(0, 12, (rows, cols), dtype=np.uint8)
        path = root / f"SCL_{n}.tif"
        transform = _write(path, values, (minx + 20 * dc, maxy - 20 * dr), 20)
        out.append((str(path), transform, (rows, cols)))
    return out


def test_shared_mask_on_10_20_40_m_equals_stackstac_warp(scl_assets) -> None:
    at20 = _stock_stackstac(scl_assets, 20)
    assert (at20 != 0).sum() > 1000  # the rasters really meet the tile
    for res in (10, 20, 40):
        want = _stock_stackstac(scl_assets, res)
        assert np.array_equal(mask_on_grid(at20, 20, res), want), res


def test_nested_grid_reader_equals_stackstac_warp(scl_assets) -> None:
    items = [
        _item(f"i{n}", _ref("SCL", Path(path), transform, shape))
        for n, (path, transform, shape) in enumerate(scl_assets)
    ]
    stacks = [TileStack(items, ["SCL"], TILE, res, "uint16", 0) for res in (20, 10, 40)]
    ours = stack_tiles(stacks)  # 20 m: shifted windows; 10/40 m: warped; one compute
    for stack, got in zip(stacks, ours, strict=True):
        assert got.dtype == np.uint16
        assert np.array_equal(got, _stock_stackstac(scl_assets, stack.resolution)), stack.resolution


def test_nested_offset_only_for_the_same_grid() -> None:
    spec = stackstac.raster_spec.RasterSpec(TILE.epsg, TILE.bounds, (20.0, 20.0))
    minx, _, _, maxy = TILE.bounds
    assert nested_offset(TILE.epsg, from_origin(minx - 60, maxy + 100, 20, 20), spec) == (5, 3)
    assert nested_offset(TILE.epsg, from_origin(minx - 50, maxy, 20, 20), spec) is None
    assert nested_offset(TILE.epsg, from_origin(minx, maxy, 10, 10), spec) is None
    assert nested_offset(32632, from_origin(minx, maxy, 20, 20), spec) is None


def test_scale_factor_and_refusals() -> None:
    assert [scale_factor(20, r) for r in (10, 20, 40, 60, 30)] == [2, 1, 2, 3, None]
    with pytest.raises(ValueError, match="does not nest"):
        mask_on_grid(np.zeros((1, 4, 4), np.uint16), 30, 20)
    with pytest.raises(ValueError, match="positive"):
        scale_factor(0, 20)


def test_mask_on_grid_picks_the_pixel_gdal_nearest_picks() -> None:
    mask = np.arange(16, dtype=np.uint16).reshape(4, 4)
    assert mask_on_grid(mask, 20, 40).tolist() == [[5, 7], [13, 15]]
    assert mask_on_grid(mask[:2, :2], 20, 10).tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [4, 4, 5, 5],
        [4, 4, 5, 5],
    ]


def _s2_item(name: str, mask_origin: tuple[float, float] | None, epsg: int = TILE.epsg):
    mask = None
    if mask_origin is not None:
        transform = from_origin(*mask_origin, 20, 20)
        mask = _ref("SCL", Path(f"{name}/SCL.tif"), transform, (5490, 5490))
    return _item(name, mask, epsg)


def test_shared_mask_resolution_needs_every_mask_on_the_tile_grid() -> None:
    minx, _, _, maxy = TILE.bounds
    aligned = _s2_item("a", (minx - 20 * 300, maxy + 20 * 7))
    no_mask = _s2_item("m", None)
    assert shared_mask_resolution([aligned, no_mask], SCL, TILE) == 20.0
    shifted = _s2_item("s", (minx - 10, maxy))
    assert shared_mask_resolution([aligned, shifted], SCL, TILE) is None
    other_zone = _s2_item("z", (minx, maxy), epsg=32632)
    assert shared_mask_resolution([aligned, other_zone], SCL, TILE) is None
    assert shared_mask_resolution([no_mask], SCL, TILE) is None
    assert shared_mask_resolution([aligned], None, TILE) is None


def test_modality_requests_read_the_mask_once_when_it_nests() -> None:
    minx, _, _, maxy = TILE.bounds
    items = [_s2_item("a", (minx, maxy)), _s2_item("b", (minx - 200, maxy + 40))]
    groups = [band_group(g) for g in ("s2_10m", "s2_20m", "s2_40m")]
    requests, mask_at, shared = modality_requests(items, groups, TILE)
    assert shared == 20.0
    assert [(r.resolution, r.bands) for r in requests] == [
        (10, groups[0].band_names),
        (20, groups[1].band_names),
        (40, groups[2].band_names),
        (20.0, ("SCL",)),
    ]
    assert mask_at == {"s2_10m": 3, "s2_20m": 3, "s2_40m": 3}

    shifted = [_s2_item("a", (minx - 10, maxy))]
    requests, mask_at, shared = modality_requests(shifted, groups, TILE)
    assert shared is None
    assert [r.bands[-1] for r in requests] == ["SCL", "SCL", "SCL"]
    assert mask_at == {"s2_10m": 0, "s2_20m": 1, "s2_40m": 2}


def test_stackstac_reader_read_equals_read_many(scl_assets) -> None:
    path, transform, shape = scl_assets[0]
    item = _item("x", _ref("SCL", Path(path), transform, shape))
    reader = PasteOrWarpReader()
    request = modality_requests([item], [band_group("s2_20m")], TILE)[0][-1]
    one = reader.read(request)
    many = reader.read_many([request, request])
    assert one.shape == (1, 1, 128, 128)
    assert np.array_equal(one, many[0]) and np.array_equal(one, many[1])
    assert np.array_equal(one, _stock_stackstac(scl_assets[:1], 20))
