"""Sizing before searching: the default shard size, the estimate's counts against a real
store and the real region grouping, and `plan --dry-run` on a 2M-tile AOI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from terracube.catalog.grid import cover, cover_columns
from terracube.catalog.stac.search import RegionParams, group_regions
from terracube.pipeline.corpus.integrity import stored_keys
from terracube.pipeline.corpus.store import create_corpus
from terracube.workflows.cli.app import app
from terracube.workflows.sizing import (
    SHARDS_TARGET,
    count_regions,
    default_samples_per_shard,
    sizing,
)
from typer.testing import CliRunner

GROUPS = ("s2_10m", "s2_20m", "s2_40m", "landsat", "s1", "worldcover")


@pytest.mark.parametrize(
    ("samples", "per_shard"),
    [(1, 4), (80_000, 4), (80_001, 8), (100_000, 8), (300_000, 16), (3_000_000, 32)],
)
def test_the_default_shard_size_follows_the_corpus_size(samples: int, per_shard: int) -> None:
    assert default_samples_per_shard(samples) == per_shard
    shards = math.ceil(samples / per_shard)
    assert shards <= SHARDS_TARGET or per_shard == 32


def test_the_estimate_counts_what_a_store_holds(tmp_path: Path) -> None:
    """Objects per shard = the per-sample arrays of a real store, once each shard is
    written; the uncompressed bytes are those arrays' sample rows."""
    estimate = sizing(10, 3, GROUPS, 4, search_regions=2, collections=4)
    corpus = create_corpus(tmp_path / "c.zarr", 10, 3, 4, groups=GROUPS)
    per_sample = [
        name
        for name in corpus.group.array_keys()
        if corpus.array(name).shape and corpus.array(name).shape[0] == 10
    ]
    assert estimate.per_sample_arrays == len(per_sample)
    assert estimate.shards == 3 and estimate.search_calls == 8
    row_bytes = 0
    for name in per_sample:
        arr = corpus.array(name)
        itemsize = 8 if arr.dtype.kind in "OTU" else arr.dtype.itemsize
        row_bytes += itemsize * math.prod(arr.shape[1:])
    assert estimate.bytes_per_sample == row_bytes
    # a shard file per per-sample array and shard, a zarr.json per array, the root's
    arrays = len(list(corpus.group.array_keys()))
    assert estimate.store_objects == 3 * len(per_sample) + arrays + 1
    assert stored_keys(corpus.group, per_sample[0]) == {"zarr.json"}


def test_regions_are_counted_as_the_search_groups_them() -> None:
    bbox = (5.0, 45.0, 8.0, 47.0)
    for km in (100.0, 30.0):
        params = RegionParams(max_region_km=km)
        epsg, col, row = cover_columns(bbox)
        assert count_regions(epsg, col, row, params) == len(group_regions(cover(bbox), params))


def test_cover_columns_are_cover() -> None:
    bbox = (-1.0, 40.0, 13.0, 41.0)
    tiles = cover(bbox)
    epsg, col, row = cover_columns(bbox)
    assert [(t.epsg, t.col, t.row) for t in tiles] == list(zip(epsg, col, row, strict=True))


@pytest.mark.slow
def test_a_dry_run_of_two_million_tiles_estimates_without_searching(tmp_path: Path) -> None:
    """The contiguous US: its STAC URLs are not reachable from here, so an estimate
    that tried to search would fail; it must come from the tile columns alone."""
    config = tmp_path / "us.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "us",
                "aoi": {"bbox": [-124, 25, -67, 49]},
                "time": {"start": "2023-01-01", "periods": 12},
                "modalities": {
                    "sentinel2_l2a": {
                        "source": "stac_api",
                        "url": "http://127.0.0.1:9/x",
                        "collection": "s2",
                    },
                    "worldcover": {
                        "source": "stac_api",
                        "url": "http://127.0.0.1:9/x",
                        "collection": "wc",
                    },
                },
                "output": {"store": str(tmp_path / "us.zarr")},
            }
        )
    )
    result = CliRunner().invoke(app, ["plan", str(config), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output)
    epsg, _, _ = cover_columns((-124, 25, -67, 49))
    assert estimate["tiles"] == len(epsg) > 2_000_000
    assert estimate["samples_per_shard"] == 32
    assert estimate["shards"] == math.ceil(len(epsg) / 32)
    assert estimate["search_calls"] == 2 * estimate["search_regions"]
    assert not (tmp_path / "us.zarr").exists() and not (tmp_path / "us.run").exists()
    text = CliRunner().invoke(app, ["plan", str(config), "--dry-run"])
    assert text.exit_code == 0 and "an estimate, nothing searched" in text.output
    small = json.loads(config.read_text())
    small["aoi"] = {"bbox": [-124, 25, -67, 49]}
    small["sampling"] = {"mode": "random", "n": 60_000, "seed": 1}
    config.write_text(json.dumps(small))
    drawn = json.loads(CliRunner().invoke(app, ["plan", str(config), "--dry-run", "--json"]).output)
    assert drawn["tiles"] == 60_000 and "random draws 60000" in drawn["note"]
    assert np.isclose(drawn["corpus_bytes_uncompressed"] / 60_000,
                      estimate["corpus_bytes_uncompressed"] / estimate["tiles"])  # fmt: skip


def test_long_plans_report_progress_and_short_ones_stay_quiet() -> None:
    import io

    from terracube.workflows.progress import StagesProgress

    stream = io.StringIO()
    shown = StagesProgress(stream, min_searches=200, min_tiles=5000)
    for done in range(0, 301, 100):
        shown("search earth-search", done, 300)
    for done in (0, 4096, 8192, 10_000):
        shown("plan", done, 10_000)
    for done in range(0, 11):
        shown("search small", done, 10)
    shown("plan", 100, 100)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("search earth-search: 0/300 searches")
    assert any(line.startswith("search earth-search: 300/300 searches (100 %)") for line in lines)
    assert any(line.startswith("plan: 10000/10000 tiles (100 %)") for line in lines)
    assert not any("small" in line or "100/100" in line for line in lines)
