"""One tile of the synthetic world through the whole pipeline, checked against its truth.

The world's values are constant on 120 m blocks and every raster origin sits on
the 120 m lattice, so the answer is exact: for every pixel with a clear
observation the composite equals the truth DN, every other pixel is nodata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from terracube.catalog.grid import Tile
from terracube.catalog.osm.features import OsmFeatures
from terracube.catalog.registry import BAND_GROUPS, OSM_CATEGORIES, S2_GROUPS
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.pipeline.corpus.store import Corpus, SampleState, create_corpus
from terracube.pipeline.tile import BuildParams, TileInputs, TileResult, build_shard, build_tile
from terracube.workflows.world import WorldManifest, WorldTruth, load_truth

from tests.workflows.world_fixture import shared_world

TEMPORAL = ("sentinel2_l2a", "landsat_c2l2", "sentinel1")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    return shared_world(tmp_path_factory)


@pytest.fixture(scope="session")
def truth(world: WorldManifest) -> WorldTruth:
    return load_truth(world.root)


@pytest.fixture(scope="session")
def world_items(world: WorldManifest) -> dict[str, NormalizedItem]:
    items: dict[str, NormalizedItem] = {}
    for name, path in world.ndjson.items():
        if name == "collections":
            continue
        for line in Path(path).read_text().splitlines():
            item = normalize_item(json.loads(line))
            items[item.id] = item
    return items


@pytest.fixture(scope="session")
def osm(world: WorldManifest) -> OsmFeatures:
    return OsmFeatures.from_extract(world.osm)


def tile_inputs(
    truth: WorldTruth,
    items: dict[str, NormalizedItem],
    osm: OsmFeatures,
    tile_id: str,
    periods: range | None = None,
) -> TileInputs:
    """Candidates exactly as the world says they exist (all zones: the pipeline must choose)."""
    periods = periods or range(len(truth.period_starts))
    tile = Tile.from_id(tile_id)
    return TileInputs(
        tile=tile,
        period_starts=tuple(truth.period_starts[p] for p in periods),
        temporal={
            m: [[items[i] for i in truth.items(tile_id, m, p)] for p in periods] for m in TEMPORAL
        },
        static={"worldcover": [items[i] for i in truth.items(tile_id, "worldcover", 0)]},
        osm=osm.features_for_tile(tile),
    )


@pytest.fixture(scope="session")
def built(truth: WorldTruth, world_items, osm) -> tuple[str, TileResult]:
    tile_id = truth.tile_ids[-1]  # zone 32: the west-zone scenes overlap it too
    return tile_id, build_tile(tile_inputs(truth, world_items, osm, tile_id), list(BAND_GROUPS))


def test_every_modality_done(built) -> None:
    _, result = built
    assert result.sample.states == {
        "sentinel2_l2a": SampleState.DONE,
        "sentinel1": SampleState.DONE,
        "landsat_c2l2": SampleState.DONE,
        "worldcover": SampleState.DONE,
        "openstreetmap": SampleState.DONE,
    }
    assert result.sample.errors == {}


@pytest.mark.parametrize("group", [g.name for g in S2_GROUPS])
def test_s2_composite_equals_truth_exactly(built, truth: WorldTruth, group: str) -> None:
    tile_id, result = built
    for period in range(len(truth.period_starts)):
        expected = truth.expected_s2(tile_id, period, group)
        got = result.sample.groups[group][period]
        np.testing.assert_array_equal(got, expected, err_msg=f"{group} period {period}")


def test_clouded_pixels_never_leak(built, truth: WorldTruth) -> None:
    """Where a clear observation exists the value is the truth; where none exists, nodata."""
    tile_id, result = built
    for period in range(len(truth.period_starts)):
        clear = truth.clear_count(tile_id, "sentinel2_l2a", period, 10)
        got = result.sample.groups["s2_10m"][period]
        assert np.all(got[:, clear == 0] == 0)
        assert np.all(got[:, clear > 0] != 0)
        assert result.sample.valid_fraction["s2_10m"][period] == pytest.approx((clear > 0).mean())


def test_all_cloud_period_is_a_missing_timestep(built, truth: WorldTruth) -> None:
    _tile_id, result = built
    (case,) = truth.all_cloud
    period = case["period"]
    assert result.sample.valid_fraction["s2_10m"][period] == 0.0
    assert result.sample.provenance["s2_10m"][period] == []
    assert np.all(result.sample.groups["s2_10m"][period] == 0)


def test_landsat_equals_truth_and_provenance_is_own_zone(built, truth: WorldTruth) -> None:
    tile_id, result = built
    for period in range(len(truth.period_starts)):
        np.testing.assert_array_equal(
            result.sample.groups["landsat"][period], truth.expected_landsat(tile_id, period)
        )
        used = set(result.sample.provenance["landsat"][period])
        assert used and used <= set(truth.items(tile_id, "landsat_c2l2", period, native_only=True))


def test_s1_is_db_of_the_observed_linear_power(built, truth: WorldTruth) -> None:
    """S1 pixels carry speckle, so the median is near (not equal to) the class mean in dB."""
    tile_id, result = built
    for period in range(len(truth.period_starts)):
        got = result.sample.groups["s1"][period]
        assert got.dtype == np.float32 and not np.isnan(got).any()
        expected = truth.expected_s1_mean(tile_id, period)
        assert abs(float(np.median(got - expected))) < 1.5


def test_worldcover_equals_truth(built, truth: WorldTruth) -> None:
    tile_id, result = built
    np.testing.assert_array_equal(
        result.sample.groups["worldcover"], truth.expected_worldcover(tile_id)
    )


def test_every_osm_feature_is_in_its_raster(built, truth: WorldTruth) -> None:
    tile_id, result = built
    tile = Tile.from_id(tile_id)
    to_tile = Transformer.from_crs(4326, tile.epsg, always_xy=True)
    names = [c.name for c in OSM_CATEGORIES]
    raster = result.sample.groups["osm"]
    features = truth.osm_features(tile_id)
    assert features, "the world places OSM features in every planned tile"
    minx, _miny, _maxx, maxy = tile.bounds
    for feature in features:
        projected = shapely.transform(
            feature.geometry, lambda c: np.column_stack(to_tile.transform(c[:, 0], c[:, 1]))
        )
        inside = projected.intersection(shapely.box(*tile.bounds))
        if inside.is_empty:  # meets the lon/lat footprint only through densification
            continue
        layer = raster[names.index(feature.category)]
        # every 10 m pixel the clipped feature touches must be >= 1 at some point of it
        x, y = shapely.get_coordinates(shapely.point_on_surface(inside))[0]
        col = min(int((x - minx) // 10), 255)
        row = min(int((maxy - y) // 10), 255)
        window = layer[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
        assert window.max() >= 1, f"{feature.category} {feature.osm_type}/{feature.osm_id} lost"
        assert layer.sum() > 0


def test_shard_write_roundtrip_and_idempotent(tmp_path: Path, built, truth, world_items, osm):
    tile_id, result = built
    url = tmp_path / "corpus.zarr"
    corpus = create_corpus(
        url, n_samples=2, n_periods=len(truth.period_starts), samples_per_shard=2
    )
    inputs = {1: tile_inputs(truth, world_items, osm, tile_id)}
    build_shard(corpus, 0, inputs)
    record = Corpus.open(url).read_record(1)
    for name, values in result.sample.groups.items():
        np.testing.assert_array_equal(record.groups[name], values)
    assert record.states["sentinel2_l2a"] is SampleState.DONE
    assert Corpus.open(url).read_record(0).states["sentinel2_l2a"] is SampleState.PENDING
    shard_file = url / "s2_10m" / "c" / "0" / "0" / "0" / "0" / "0"
    first = shard_file.read_bytes()
    build_shard(corpus, 0, inputs)
    assert shard_file.read_bytes() == first


def test_only_the_all_cloud_period_gives_empty(truth: WorldTruth, world_items, osm) -> None:
    (case,) = truth.all_cloud
    period = case["period"]
    tile_id = truth.tile_ids[0]
    inputs = tile_inputs(truth, world_items, osm, tile_id, range(period, period + 1))
    result = build_tile(inputs, [g.name for g in S2_GROUPS], BuildParams(method="best"))
    assert result.sample.states == {"sentinel2_l2a": SampleState.EMPTY}
    assert "no clear sentinel2_l2a pixel" in result.sample.errors["sentinel2_l2a"]


def test_quicklook_png(tmp_path: Path, built, truth) -> None:
    from terracube.pipeline.quicklook import ATTRIBUTION, quicklook
    from terracube.pipeline.tile import write_tile

    _, result = built
    url = tmp_path / "q.zarr"
    corpus = create_corpus(
        url, n_samples=1, n_periods=len(truth.period_starts), samples_per_shard=1
    )
    write_tile(corpus, 0, result)
    out = quicklook(url, 0, tmp_path / "q.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "OpenStreetMap contributors" in ATTRIBUTION
    with pytest.raises(ValueError, match="no built"):
        create_corpus(tmp_path / "e.zarr", 1, 1, 1)
        quicklook(tmp_path / "e.zarr", 0, tmp_path / "e.png")
