"""Faults end in the right per-modality state and never corrupt the sample or its neighbours.

Assets are the real Major TOM patch (CC-BY-SA-4.0, contains modified Copernicus
Sentinel data 2022) served from disk and over the HTTP asset server.
"""

from __future__ import annotations

import math
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from terracube.catalog.grid import Tile
from terracube.catalog.registry import S2_GROUPS
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.pipeline.corpus.store import Corpus, SampleState, create_corpus
from terracube.pipeline.tile import BuildParams, TileInputs, build_tile, write_tile

from tests.pipeline.test_real import MAJOR_TOM, major_tom_item
from tests.services.faults import Fault
from tests.services.http_assets import AssetServer

GROUPS = [g.name for g in S2_GROUPS]
PARAMS = BuildParams(allow_unmasked=True)


def _normalize_without_mask(data: dict) -> NormalizedItem:
    """Major TOM patches publish no SCL mask."""
    return normalize_item(data, require_mask=False)


def _tile() -> Tile:
    with rasterio.open(MAJOR_TOM / "B04.tif") as ds:
        t = ds.transform
    return Tile(32633, math.ceil(t.c / 2560), math.floor(t.f / 2560) - 1)


def _inputs(item) -> TileInputs:
    return TileInputs(_tile(), (date(2022, 7, 1),), {"sentinel2_l2a": [[item]]})


def _with_hrefs(data: dict, href_of) -> dict:
    return {**data, "assets": {k: {**a, "href": href_of(k, a)} for k, a in data["assets"].items()}}


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return create_corpus(
        tmp_path / "c.zarr", n_samples=2, n_periods=1, samples_per_shard=2, groups=GROUPS
    )


def _good_neighbour(corpus: Corpus) -> np.ndarray:
    result = build_tile(_inputs(_normalize_without_mask(major_tom_item())), GROUPS, PARAMS)
    write_tile(corpus, 0, result)
    return Corpus.open(corpus.url).read_record(0).groups["s2_10m"].copy()


def _assert_failed_and_neighbour_intact(corpus: Corpus, before: np.ndarray, words: str) -> None:
    record = Corpus.open(corpus.url).read_record(1)
    assert record.states["sentinel2_l2a"] is SampleState.FAILED
    assert words in record.errors["sentinel2_l2a"]
    assert np.all(record.groups["s2_10m"] == 0)  # nothing half-written
    neighbour = Corpus.open(corpus.url).read_record(0)
    assert neighbour.states["sentinel2_l2a"] is SampleState.DONE
    np.testing.assert_array_equal(neighbour.groups["s2_10m"], before)


def test_truncated_cog_fails_with_reason(tmp_path: Path, corpus: Corpus) -> None:
    before = _good_neighbour(corpus)
    broken = tmp_path / "B04.tif"
    data = (MAJOR_TOM / "B04.tif").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    item = _normalize_without_mask(
        _with_hrefs(major_tom_item(), lambda k, a: str(broken) if k == "B04" else a["href"])
    )
    result = build_tile(_inputs(item), GROUPS, PARAMS)
    assert result.sample.states["sentinel2_l2a"] is SampleState.FAILED
    # stackstac wraps the GDAL error in a RuntimeError naming the file and window
    assert "RasterioIOError" in result.sample.errors["sentinel2_l2a"]
    write_tile(corpus, 1, result)
    _assert_failed_and_neighbour_intact(corpus, before, "B04.tif")


def _serve(asset_server: AssetServer, name: str) -> dict:
    """Serve the patch under a per-test folder: GDAL caches /vsicurl responses per URL for
    the whole process, so a file deleted under a URL read before would still 'exist'."""
    folder = asset_server.root / name
    folder.mkdir()
    for path in MAJOR_TOM.glob("B*.tif"):
        shutil.copy(path, folder / path.name)
    return _with_hrefs(
        major_tom_item(), lambda k, a: asset_server.url_for(f"{name}/{Path(a['href']).name}")
    )


def test_http_reads_equal_local_reads(asset_server: AssetServer) -> None:
    remote = build_tile(
        _inputs(_normalize_without_mask(_serve(asset_server, "same"))), ["s2_10m"], PARAMS
    )
    local = build_tile(_inputs(_normalize_without_mask(major_tom_item())), ["s2_10m"], PARAMS)
    np.testing.assert_array_equal(remote.sample.groups["s2_10m"], local.sample.groups["s2_10m"])
    size = (asset_server.root / "same/B04.tif").stat().st_size
    assert 0 < asset_server.stats("same/B04.tif").bytes_sent < size  # a windowed read


def test_404_asset_fails_instead_of_silent_nodata(asset_server: AssetServer, corpus) -> None:
    before = _good_neighbour(corpus)
    data = _serve(asset_server, "gone")
    (asset_server.root / "gone/B08.tif").unlink()
    result = build_tile(_inputs(_normalize_without_mask(data)), GROUPS, PARAMS)
    assert result.sample.states["sentinel2_l2a"] is SampleState.FAILED
    assert "B08.tif" in result.sample.errors["sentinel2_l2a"]
    write_tile(corpus, 1, result)
    _assert_failed_and_neighbour_intact(corpus, before, "RasterioIOError")


def test_transient_5xx_is_retried(asset_server: AssetServer) -> None:
    data = _serve(asset_server, "flaky")
    asset_server.faults.add("/flaky/B02.tif", Fault.error(503, times=1))
    result = build_tile(_inputs(_normalize_without_mask(data)), ["s2_10m"], PARAMS)
    assert result.sample.states["sentinel2_l2a"] is SampleState.DONE, result.sample.errors
    assert asset_server.faults.injected("/flaky/B02.tif") == 1


def test_footprint_missing_the_tile_is_empty() -> None:
    data = major_tom_item()
    data["geometry"] = shapely.geometry.mapping(shapely.box(100.0, 10.0, 100.1, 10.1))
    result = build_tile(_inputs(_normalize_without_mask(data)), GROUPS, PARAMS)
    assert result.sample.states == {"sentinel2_l2a": SampleState.EMPTY}
    assert "footprint" in result.sample.errors["sentinel2_l2a"]


def test_missing_mask_fails_unless_allowed() -> None:
    item = _normalize_without_mask(major_tom_item())
    result = build_tile(_inputs(item), ["s2_10m"])
    assert result.sample.states["sentinel2_l2a"] is SampleState.FAILED
    assert "no SCL mask" in result.sample.errors["sentinel2_l2a"]
