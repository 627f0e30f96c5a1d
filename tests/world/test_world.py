"""The synthetic world: determinism, STAC/COG consistency, readers, and truth exactness.

The world is generated once per session (the `world` fixture in tests/conftest.py);
the determinism test generates the same public size a second time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from rasterio.enums import Resampling
from rasterio.warp import reproject
from terracube.catalog.grid import Tile, cover
from terracube.catalog.registry import (
    S2_GROUPS,
    WORLDCOVER_CLASSES,
    band_group,
    modality,
)
from terracube.workflows.world import (
    WorldManifest,
    WorldTruth,
    generate_world,
    rewrite_hrefs,
)
from terracube.workflows.world.clouds import (
    CIRRUS,
    CLEAR,
    CLOUD_HIGH,
    CLOUD_MEDIUM,
    DILATED,
    SHADOW,
)
from terracube.workflows.world.config import BLOCK_M, planned_tiles, world_size, zone_grids
from terracube.workflows.world.landcover import block_classes

S2_INVALID = modality("sentinel2_l2a").mask.invalid
LANDSAT_INVALID_BITS = modality("landsat_c2l2").mask.invalid


def _items(manifest: WorldManifest, collection: str) -> list[dict]:
    lines = manifest.ndjson[collection].read_text().splitlines()
    return [json.loads(line) for line in lines]


def _read_tile(href: str, tile: Tile, resolution: float) -> np.ndarray:
    """Nearest-resample one COG onto the tile grid at `resolution` (the pipeline's rule)."""
    with rasterio.open(href) as src:
        rows, cols = tile.shape(resolution)
        out = np.zeros((rows, cols), dtype=src.dtypes[0])
        reproject(
            rasterio.band(src, 1),
            out,
            dst_transform=tile.transform(resolution),
            dst_crs=tile.crs,
            resampling=Resampling.nearest,
        )
    return out


def _hashes(root: Path) -> dict[str, str]:
    result = {}
    absolute = str((root / "stac").resolve())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".ndjson":  # absolute asset paths differ by output folder only
            data = data.replace(absolute.encode(), b"<ROOT>")
        result[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return result


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(world: WorldManifest, tmp_path: Path) -> None:
    again = generate_world(tmp_path / "again", seed=0, size="test")
    first, second = _hashes(world.root), _hashes(again.root)
    assert len(first) >= 790
    assert first.keys() == second.keys()
    differing = [k for k in first if first[k] != second[k]]
    assert differing == []


def test_seed_changes_the_landscape() -> None:
    grid = zone_grids(planned_tiles(world_size("test")))[0]
    assert not np.array_equal(block_classes(grid, 0), block_classes(grid, 1))


def test_bad_arguments_are_refused(world: WorldManifest, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test, demo"):
        generate_world(tmp_path / "x", size="huge")  # type: ignore[arg-type]
    with pytest.raises(FileExistsError, match="not empty"):
        generate_world(world.root)


# ----------------------------------------------------------------------------- layout, STAC, COGs


def test_manifest_and_build_yaml(world: WorldManifest) -> None:
    assert world.epsgs == (32631, 32632)
    assert world.period_starts == ("2022-01-01", "2022-02-01", "2022-03-01")
    config = yaml.safe_load(world.build_yaml.read_text())
    assert config["time"] == {"start": "2022-01-01", "periods": 3, "period": "month"}
    assert [t.id for t in cover(tuple(config["aoi"]["bbox"]))] == list(world.tile_ids)
    for name, spec in config["modalities"].items():
        modality(name)  # every key is a registry modality
        path = world.root / spec.get("catalog", spec.get("path"))
        assert path.is_file(), path
    catalog = pystac.Catalog.from_file(
        str(world.root / config["modalities"]["sentinel2_l2a"]["catalog"])
    )
    assert {c.id for c in catalog.get_children()} == set(world.item_ids)
    assert config["output"] == {"store": "corpus.zarr", "samples_per_shard": 1}


def test_items_round_trip_and_match_their_cogs(world: WorldManifest) -> None:
    catalog = pystac.Catalog.from_file(str(world.catalog))
    seen = 0
    for item in catalog.get_items(recursive=True):
        source = json.loads(Path(item.get_self_href()).read_text())
        kept = pystac.Item.from_dict(source, migrate=False).to_dict(include_self_link=False)
        assert kept["properties"] == source["properties"] and kept["assets"] == source["assets"]
        # pystac's default migration rewrites projection to v2.0 and drops proj:epsg
        migrated = pystac.Item.from_dict(source).to_dict()["properties"]
        assert migrated["proj:code"] == source["properties"]["proj:code"]
        assert source["properties"]["proj:epsg"] == int(migrated["proj:code"].split(":")[1])
        props = source["properties"]
        assert props["proj:code"] == f"EPSG:{props['proj:epsg']}"
        assert props["proj:epsg"] in world.epsgs
        for key, asset in item.assets.items():
            assert not asset.href.startswith("/"), "static catalog hrefs must be relative"
            band = asset.extra_fields["raster:bands"][0]
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.crs.to_epsg() == props["proj:epsg"], key
                assert list(src.transform)[:6] == asset.extra_fields["proj:transform"], key
                assert list(src.shape) == asset.extra_fields["proj:shape"], key
                assert src.dtypes[0] == band["data_type"], key
                assert src.nodata == band["nodata"], key
                # LAYOUT=COG is GDAL's own check of a valid COG (tiled, overviews first);
                # rasterio's profile["tiled"] reads False when the image is one block wide.
                structure = src.tags(ns="IMAGE_STRUCTURE")
                assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
                assert src.block_shapes[0] == (256, 256), key
                if max(src.shape) > 256:
                    assert src.overviews(1), f"{item.id}/{key} has no overviews"
                # every raster origin sits on the 120 m block lattice
                assert src.transform.c % BLOCK_M == 0 and src.transform.f % BLOCK_M == 0
            seen += 1
    assert seen == sum(len(item["assets"]) for c in world.item_ids for item in _items(world, c))
    assert seen >= 700


def test_s2_item_metadata_follows_earth_search(world: WorldManifest) -> None:
    items = _items(world, "sentinel-2-l2a")
    expected_keys = {b.aliases[1] for g in S2_GROUPS for b in g.bands} | {"scl"}
    baselines = []
    for item in items:
        assert set(item["assets"]) == expected_keys
        props = item["properties"]
        baselines.append(props["s2:processing_baseline"])
        offset = props["s2:processing_baseline"] >= "04.00"
        assert "earthsearch:boa_offset_applied" not in props  # ESA's DN: offset kept
        red = item["assets"]["red"]["raster:bands"][0]
        assert red["scale"] == 0.0001 and red["offset"] == pytest.approx(-0.1 if offset else 0.0)
        assert item["assets"]["red"]["proj:shape"] == [
            2 * s for s in item["assets"]["scl"]["proj:shape"]
        ]
        assert 0.0 <= props["eo:cloud_cover"] <= 100.0
        assert props["platform"] in ("sentinel-2a", "sentinel-2b")
        assert props["constellation"] == "sentinel-2"
    assert baselines.count("03.01") == len(baselines) // 2
    covers = [i["properties"]["eo:cloud_cover"] for i in items]
    assert min(covers) == 0.0 and 20.0 < max(c for c in covers if c < 100) <= 60.0


def test_s1_and_landsat_metadata(world: WorldManifest) -> None:
    for item in _items(world, "sentinel-1-rtc"):
        props = item["properties"]
        assert props["sar:instrument_mode"] == "IW" and props["sar:frequency_band"] == "C"
        assert props["sar:polarizations"] == ["VV", "VH"] and props["sar:product_type"] == "RTC"
        assert props["sat:orbit_state"] in ("ascending", "descending")
        assert item["assets"]["vv"]["raster:bands"][0] == {
            "nodata": -32768.0,
            "data_type": "float32",
            "spatial_resolution": 10,
        }
    landsat = _items(world, "landsat-c2-l2")
    assert {i["properties"]["platform"] for i in landsat} == {"landsat-8", "landsat-9"}
    for item in landsat:
        props = item["properties"]
        assert (
            props["landsat:correction"] == "L2SP" and props["landsat:collection_category"] == "T1"
        )
        assert item["assets"]["red"]["raster:bands"][0]["scale"] == 2.75e-05
        assert item["assets"]["lwir11"]["raster:bands"][0]["offset"] == 149.0
        assert item["assets"]["qa_pixel"]["raster:bands"][0]["nodata"] == 1


def test_rewrite_hrefs_serves_the_same_files(world: WorldManifest) -> None:
    item = _items(world, "sentinel-2-l2a")[0]
    served = rewrite_hrefs(item, world.root, "http://127.0.0.1:8123/")
    assert served["assets"]["red"]["href"] == (
        f"http://127.0.0.1:8123/stac/sentinel-2-l2a/{item['id']}/B04.tif"
    )
    assert item["assets"]["red"]["href"].startswith("/")  # the input is untouched
    with pytest.raises(ValueError, match="not under root"):
        rewrite_hrefs(item, world.root / "truth", "http://x")
    relative = json.loads(
        (world.catalog.parent / "sentinel-2-l2a" / item["id"] / f"{item['id']}.json").read_text()
    )
    with pytest.raises(ValueError, match="relative href"):
        rewrite_hrefs(relative, world.root, "http://x")


# ----------------------------------------------------------------------------- readers


def test_stackstac_loads_the_declared_geometry(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    import stackstac

    truth = world_truth
    tile = Tile.from_id(world.tile_ids[0])
    ids = truth.items(tile.id, "sentinel2_l2a", 0, native_only=True)[:2]
    items = [i for i in _items(world, "sentinel-2-l2a") if i["id"] in ids]
    stack = stackstac.stack(
        items,
        assets=["red", "nir"],
        epsg=tile.epsg,
        resolution=10,
        bounds=tile.bounds,
        fill_value=np.uint16(0),
        dtype=np.uint16,
        rescale=False,
        resampling=Resampling.nearest,
    ).compute(scheduler="synchronous")
    assert stack.shape == (2, 2, 256, 256)
    # stackstac 0.5.1 labels pixels by their top-left corner by default (xy_coords="topleft")
    assert float(stack.x[0]) == tile.bounds[0] and float(stack.y[0]) == tile.bounds[3]
    for t, item in enumerate(items):
        for b, key in enumerate(["red", "nir"]):
            expected = _read_tile(item["assets"][key]["href"], tile, 10)
            np.testing.assert_array_equal(stack.values[t, b], expected)


def test_odc_stac_loads_the_same_pixels(world: WorldManifest) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    tile = Tile.from_id(world.tile_ids[-1])
    item = next(
        i for i in _items(world, "landsat-c2-l2") if i["properties"]["proj:epsg"] == tile.epsg
    )
    from odc.geo.geobox import GeoBox

    geobox = GeoBox.from_bbox(tile.bounds, crs=tile.crs, resolution=20)
    data = odc_stac.load(
        [pystac.Item.from_dict(item)], bands=["red"], geobox=geobox, resampling="nearest"
    )
    np.testing.assert_array_equal(
        data["red"].values[0], _read_tile(item["assets"]["red"]["href"], tile, 20)
    )


# ----------------------------------------------------------------------------- truth


def test_worldcover_and_class_map_equal_the_truth(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    truth = world_truth
    items = {i["properties"]["proj:epsg"]: i for i in _items(world, "esa-worldcover")}
    shares: dict[int, int] = {}
    for tile_id in world.tile_ids:
        tile = Tile.from_id(tile_id)
        expected = truth.expected_worldcover(tile_id)
        assert expected.shape == (1, 256, 256) and expected.dtype == np.uint8
        np.testing.assert_array_equal(
            _read_tile(items[tile.epsg]["assets"]["map"]["href"], tile, 10), expected[0]
        )
        np.testing.assert_array_equal(
            _read_tile(str(truth.root / f"classes_{tile.epsg}.tif"), tile, 10), expected[0]
        )
        for code, count in zip(*np.unique(expected, return_counts=True), strict=True):
            shares[int(code)] = shares.get(int(code), 0) + int(count)
    assert set(shares) <= set(WORLDCOVER_CLASSES)
    assert {10, 30, 40, 50, 80} <= set(shares), shares
    assert max(shares, key=shares.get) in (10, 40)  # cropland or forest dominate, as at 47 N


def test_s2_pixels_follow_truth_and_median_composite_is_exact(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    truth = world_truth
    items = {i["id"]: i for i in _items(world, "sentinel-2-l2a")}
    tile_id, period = world.tile_ids[-1], 2
    tile = Tile.from_id(tile_id)
    scenes = truth.scenes_of("sentinel2_l2a", tile.epsg, period)
    assert {s.offset_dn for s in scenes} == {1000}  # period 2 is after baseline 04.00 here
    classes = truth.classes(tile_id, 20)
    for group in S2_GROUPS:
        stack, valid = [], []
        for scene in scenes:
            item = items[scene.item_id]
            scl = _read_tile(item["assets"]["scl"]["href"], tile, group.resolution)
            clear = truth.clear_mask(tile_id, scene.item_id, group.resolution)
            np.testing.assert_array_equal(clear, ~np.isin(scl, S2_INVALID))
            bands = [
                _read_tile(item["assets"][b.aliases[1]]["href"], tile, group.resolution)
                for b in group.bands
            ]
            stack.append(np.stack(bands).astype(np.int32) - scene.offset_dn)
            valid.append(clear)
        data = np.ma.masked_array(
            np.stack(stack), mask=~np.stack(valid)[:, None].repeat(len(group.bands), 1)
        )
        composite = np.ma.median(data, axis=0).filled(0).astype(np.uint16)
        np.testing.assert_array_equal(composite, truth.expected_s2(tile_id, period, group.name))
    # SCL at 20 m agrees with the block sky codes: clouds, shadow, cirrus where the truth says
    sky_codes = {CLOUD_HIGH: 9, CLOUD_MEDIUM: 8, SHADOW: 3, CIRRUS: 10}
    epsg_sky = np.load(truth.root / f"sky_sentinel2_l2a_{tile.epsg}.npy")
    _, rows, cols = truth.block_index(tile_id, 20)
    hits = 0
    for scene in scenes:
        scl = _read_tile(items[scene.item_id]["assets"]["scl"]["href"], tile, 20)
        sky = epsg_sky[scene.sky_index][np.ix_(rows, cols)]
        for code, scl_class in sky_codes.items():
            assert np.all(scl[sky == code] == scl_class)
            hits += int((sky == code).sum())
        water = (sky == CLEAR) & (classes == 80)
        assert np.all(scl[water] == 6)
    assert hits > 0


def test_all_cloud_period_is_recorded_and_empty(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    truth = world_truth
    (case,) = truth.all_cloud
    assert case["modality"] == "sentinel2_l2a" and case["period"] == 1
    for item in _items(world, "sentinel-2-l2a"):
        in_period = item["properties"]["datetime"].startswith("2022-02")
        assert (item["properties"]["eo:cloud_cover"] == 100.0) is in_period
    for tile_id in case["tiles"]:
        assert truth.items(tile_id, "sentinel2_l2a", 1), "items exist, all cloudy"
        for group in S2_GROUPS:
            assert not truth.expected_s2(tile_id, 1, group.name).any()
        assert truth.expected_s2(tile_id, 0, "s2_10m").all()  # other periods have data
    item = next(
        i
        for i in _items(world, "sentinel-2-l2a")
        if i["properties"]["datetime"].startswith("2022-02")
    )
    with rasterio.open(item["assets"]["scl"]["href"]) as src:
        assert np.all(src.read(1) == 9)


def test_landsat_qa_bits_and_values_follow_truth(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    truth = world_truth
    items = {i["id"]: i for i in _items(world, "landsat-c2-l2")}
    tile_id, period = world.tile_ids[0], 0
    tile = Tile.from_id(tile_id)
    group = band_group("landsat")
    sky_stack = np.load(truth.root / f"sky_landsat_c2l2_{tile.epsg}.npy")
    _, rows, cols = truth.block_index(tile_id, group.resolution)
    stack, valid = [], []
    for scene in truth.scenes_of("landsat_c2l2", tile.epsg, period):
        item = items[scene.item_id]
        qa = _read_tile(item["assets"]["qa_pixel"]["href"], tile, group.resolution)
        sky = sky_stack[scene.sky_index][np.ix_(rows, cols)]
        bit = {b: (qa >> b) & 1 for b in range(8)}
        assert np.all(bit[6][sky == CLEAR] == 1)
        assert np.all(bit[3][np.isin(sky, (CLOUD_HIGH, CLOUD_MEDIUM))] == 1)
        assert np.all(bit[4][sky == SHADOW] == 1) and np.all(bit[2][sky == CIRRUS] == 1)
        assert np.all(bit[1][sky == DILATED] == 1)
        invalid = np.zeros(qa.shape, dtype=bool)
        for b in LANDSAT_INVALID_BITS:
            invalid |= bit[b].astype(bool)
        np.testing.assert_array_equal(~invalid, sky == CLEAR)
        stack.append(
            np.stack(
                [
                    _read_tile(item["assets"][k]["href"], tile, 20)
                    for k in (
                        "coastal",
                        "blue",
                        "green",
                        "red",
                        "nir08",
                        "swir16",
                        "swir22",
                        "lwir11",
                    )
                ]
            )
        )
        valid.append(~invalid)
    data = np.ma.masked_array(np.stack(stack), mask=~np.stack(valid)[:, None].repeat(8, 1))
    composite = np.ma.median(data, axis=0).filled(0).astype(np.uint16)
    np.testing.assert_array_equal(composite, truth.expected_landsat(tile_id, period))
    # SR DN is (reflectance + 0.2) / 2.75e-5: a plausible cropland winter red near 0.13
    red = truth.landsat_values[40][0][3] * 2.75e-5 - 0.2
    assert 0.05 < red < 0.25


def test_landsat_fill_lies_outside_the_footprint(world: WorldManifest) -> None:
    item = _items(world, "landsat-c2-l2")[0]
    with rasterio.open(item["assets"]["qa_pixel"]["href"]) as src:
        qa = src.read(1)
    with rasterio.open(item["assets"]["red"]["href"]) as src:
        red = src.read(1)
    assert qa[0, 0] == 1 and qa[-1, -1] == 1 and red[0, 0] == 0
    np.testing.assert_array_equal(qa == 1, red == 0)
    assert 0.0 < float((qa == 1).mean()) < 0.2


def test_s1_class_means_match_truth(world: WorldManifest, world_truth: WorldTruth) -> None:
    truth = world_truth
    tile_id = world.tile_ids[0]
    tile = Tile.from_id(tile_id)
    scene = truth.scenes_of("sentinel1", tile.epsg, 0)[0]
    item = next(i for i in _items(world, "sentinel-1-rtc") if i["id"] == scene.item_id)
    vv = _read_tile(item["assets"]["vv"]["href"], tile, 10).astype(np.float64)
    expected = truth.expected_s1_mean(tile_id, 0, db=False)[0]
    classes = truth.signal(tile_id, 10)  # crop types differ in their season's backscatter
    for code in np.unique(classes):
        where = classes == code
        if where.sum() > 3000:
            assert vv[where].mean() == pytest.approx(float(expected[where][0]), rel=0.05)
    ratio = vv / expected
    assert ratio.var() == pytest.approx(1 / 4.4, rel=0.1)  # gamma speckle of ~4.4 looks


def test_items_by_tile_cover_every_planned_tile(
    world: WorldManifest, world_truth: WorldTruth
) -> None:
    truth = world_truth
    for tile_id in world.tile_ids:
        for period in range(3):
            for name in ("sentinel2_l2a", "sentinel1", "landsat_c2l2", "worldcover"):
                native = truth.items(tile_id, name, period, native_only=True)
                assert native, (tile_id, name, period)
                assert set(native) <= set(truth.items(tile_id, name, period))
        # tiles touching 6 E are also met by the neighbouring zone's scenes
        assert len(truth.items(tile_id, "sentinel2_l2a", 0)) > len(
            truth.items(tile_id, "sentinel2_l2a", 0, native_only=True)
        )
    with pytest.raises(KeyError, match="not planned"):
        truth.classes("32631_0001_00001")
