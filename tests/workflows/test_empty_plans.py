"""Empty results are said out loud: a plan or build in which a modality has no data in
any tile exits non-zero before anything is written, unless --allow-empty; `time.end`
(what stackstac / odc-stac users write first) plans the same periods as `periods`."""

from __future__ import annotations

import json
from pathlib import Path

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
