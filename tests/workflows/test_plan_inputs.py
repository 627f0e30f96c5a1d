"""Real inputs at plan and build time. Empty results are said out loud: a plan or build
in which a modality has no data in any tile exits non-zero before anything is written,
unless --allow-empty; `time.end` (what stackstac / odc-stac users write first) plans
the same periods as `periods`. A real clipped PBF extract builds, its OSM layers equal
an independent rasterisation, and an extract that misses the AOI is refused at plan time.

OSM data (c) OpenStreetMap contributors, ODbL 1.0 (tests/data/osm/SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
import yaml
from terracube.workflows.cli.app import EXIT_USER_ERROR, app
from terracube.workflows.world import WorldManifest
from typer.testing import CliRunner

from tests.workflows.workflows_support import world, world_config

__all__ = ["world"]

runner = CliRunner()
SWAPPED = {"bbox": [46.99, 5.99, 47.01, 6.01]}  # the world's bbox, lat/lon: valid, elsewhere


def _swapped_config(world: WorldManifest, folder: Path) -> Path:
    path = world_config(world, folder, modalities=("sentinel1", "worldcover"))
    document = yaml.safe_load(path.read_text())
    document["aoi"] = SWAPPED
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_a_swapped_bbox_plans_nothing_and_says_so(tmp_path: Path, world: WorldManifest) -> None:
    path = _swapped_config(world, tmp_path)
    result = runner.invoke(app, ["plan", str(path), "--dry-run"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "error: no data for sentinel1, worldcover in any of" in result.output
    assert "lon/lat in that order" in result.output and "--allow-empty" in result.output
    assert "Traceback" not in result.output

    as_json = runner.invoke(app, ["plan", str(path), "--dry-run", "--json", "--allow-empty"])
    assert as_json.exit_code == 0, as_json.output
    text = as_json.output
    summary = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert summary["modalities_without_data"] == ["sentinel1", "worldcover"]
    assert summary["items_total"] == 0
    assert "warning: no data for sentinel1, worldcover" in as_json.output


def test_a_build_without_data_writes_nothing_unless_allowed(
    tmp_path: Path, world: WorldManifest
) -> None:
    path = _swapped_config(world, tmp_path)
    args = ["build", str(path), "--synchronous", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "no data for sentinel1, worldcover" in result.output
    assert not (tmp_path / "corpus.zarr").exists()
    allowed = runner.invoke(app, [*args, "--allow-empty"])
    assert allowed.exit_code == 0, allowed.output
    assert "0 done" in allowed.output and (tmp_path / "corpus.zarr").exists()


def test_time_end_plans_the_same_periods_as_periods(tmp_path: Path, world: WorldManifest) -> None:
    by_periods = world_config(world, tmp_path / "a", modalities=("sentinel1",))
    document = yaml.safe_load(by_periods.read_text())
    assert document["time"]["periods"] == 3 and document["time"]["start"] == "2022-01-01"
    del document["time"]["periods"]
    document["time"]["end"] = "2022-03-31"
    by_end = tmp_path / "b" / "build.yaml"
    by_end.parent.mkdir()
    by_end.write_text(yaml.safe_dump(document, sort_keys=False))
    a = runner.invoke(app, ["plan", str(by_periods), "--dry-run", "--json"])
    b = runner.invoke(app, ["plan", str(by_end), "--dry-run", "--json"])
    assert a.exit_code == b.exit_code == 0, b.output
    sa, sb = json.loads(a.output), json.loads(b.output)
    assert sb["periods"] == 3 and sb["items"] == sa["items"] and sb["items"]["sentinel1"] > 0

    document["time"]["periods"] = 3
    by_end.write_text(yaml.safe_dump(document, sort_keys=False))
    both = runner.invoke(app, ["plan", str(by_end), "--dry-run"])
    assert both.exit_code == EXIT_USER_ERROR
    assert "give time.periods or time.end, not both" in both.output
    assert "Traceback" not in both.output


# --------------------------------------------------------------------------- OSM PBF


def _osm_config(folder: Path, extract: Path, bbox: tuple[float, ...]) -> Path:
    document = {
        "name": "monaco",
        "aoi": {"bbox": list(bbox)},
        "time": {"start": "2023-01-01", "periods": 1},
        "modalities": {"openstreetmap": {"source": "osm_file", "path": str(extract)}},
        "output": {"store": "corpus.zarr", "samples_per_shard": 2},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_a_clipped_pbf_extract_builds_and_equals_an_independent_rasterisation(
    tmp_path: Path,
) -> None:
    from terracube.catalog.grid import Tile
    from terracube.catalog.osm.features import OsmFeatures, read_osm_extract
    from terracube.pipeline.corpus.store import Corpus
    from terracube.pipeline.static_maps import osm_raster

    from tests.catalog.osm_clip import clip_simple
    from tests.catalog.test_osm_extract import CLIP_BOX, MONACO

    extract = clip_simple(MONACO, CLIP_BOX, tmp_path / "monaco-clip.osm.pbf")
    path = _osm_config(tmp_path, extract, CLIP_BOX)
    plan = runner.invoke(app, ["plan", str(path), "--dry-run"])
    assert plan.exit_code == 0, plan.output
    assert "reach beyond the extract monaco-clip.osm.pbf" in plan.output  # tiles overhang it
    built = runner.invoke(app, ["build", str(path), "--synchronous", "--no-progress"])
    assert built.exit_code == 0, built.output
    assert "2 done, 0 empty, 0 failed" in built.output
    assert "skipped 2 clipped relation(s)" in " ".join(built.output.split())

    # Independent: the whole extract's features that lie inside the clip box, rasterised.
    whole, _ = read_osm_extract(MONACO)
    expected = OsmFeatures(whole[whole.geometry.covered_by(shapely.box(*CLIP_BOX))])
    read = OsmFeatures.from_extract(extract)
    store = Corpus.open(str(tmp_path / "corpus.zarr"))
    buildings = 0
    for index in range(2):
        tile = Tile.from_id(store.read_record(index).tile_id)
        features = expected.features_for_tile(tile)
        stored = store.read_sample(index, ["osm"])["osm"]
        assert np.array_equal(stored, osm_raster(features, tile)), tile.id
        count = int((features.category == "building").sum())
        assert int((read.features_for_tile(tile).category == "building").sum()) == count
        buildings += count
    assert buildings > 100


def test_extract_problems_are_refused_at_plan_time(tmp_path: Path) -> None:
    from tests.catalog.test_osm_extract import MONACO

    far = _osm_config(tmp_path / "far", MONACO, (5.99, 46.99, 6.01, 47.01))
    result = runner.invoke(app, ["plan", str(far), "--dry-run"])
    assert result.exit_code == EXIT_USER_ERROR
    assert (
        "modalities.openstreetmap.path: the extract monaco-latest.osm.pbf covers" in result.output
    )
    assert "meets none of the 4 tile(s)" in result.output
    missing = _osm_config(
        tmp_path / "missing", tmp_path / "gone.osm.pbf", (7.41, 43.73, 7.42, 43.74)
    )
    result = runner.invoke(app, ["plan", str(missing), "--dry-run"])
    assert result.exit_code == EXIT_USER_ERROR and "gone.osm.pbf does not exist" in result.output
    garbage = tmp_path / "broken.osm.pbf"
    garbage.write_bytes(b"\x00\x01not a pbf" * 100)
    broken = _osm_config(tmp_path / "broken", garbage, (7.41, 43.73, 7.42, 43.74))
    result = runner.invoke(app, ["plan", str(broken), "--dry-run"])
    assert result.exit_code == EXIT_USER_ERROR and "broken.osm.pbf cannot be read" in result.output
    assert "Traceback" not in result.output
