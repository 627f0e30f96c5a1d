"""The `terracube` command line: help texts, config errors before any work, and the
plan -> build -> status -> validate round trip on the synthetic world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from terracube.workflows.cli.app import EXIT_USER_ERROR, app
from terracube.workflows.world import WorldManifest
from typer.testing import CliRunner

from tests.services.process import free_port
from tests.workflows.workflows_support import world, world_config

__all__ = ["world"]

runner = CliRunner()

GOOD = """
name: t
aoi: {bbox: [5.99, 46.99, 6.01, 47.01]}
time: {start: "2022-01-01", periods: 3}
modalities:
  sentinel1: {source: static, catalog: CATALOG, collection: sentinel-1-rtc}
output: {store: corpus.zarr, samples_per_shard: 2}
"""


@pytest.mark.parametrize("command", ["world", "plan", "build", "status", "validate", "quicklook"])
def test_every_command_explains_itself(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert len(result.output) > 200


def test_top_level_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("world", "plan", "build", "status", "validate"):
        assert command in result.output


def _config(tmp_path: Path, world: WorldManifest, old: str = "", new: str = "") -> Path:
    text = GOOD.replace("CATALOG", str(world.catalog))
    assert old in text
    path = tmp_path / "build.yaml"
    path.write_text(text.replace(old, new, 1) if old else text)
    return path


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (("output: {", "output: {stroe: x, "), ["output.stroe", "unknown key"]),
        (('start: "2022-01-01"', 'start: "2022-02-30"'), ["time.start", "date"]),
        (("aoi: {bbox: [5.99, 46.99, 6.01, 47.01]}", "aoi: {tiles: []}"), ["aoi.tiles", "no tile"]),
        (
            ("aoi: {bbox: [5.99, 46.99, 6.01, 47.01]}", "aoi: {geojson: empty.geojson}"),
            ["aoi.geojson", "no features"],
        ),
        (("aoi: {bbox: [5.99, 46.99, 6.01, 47.01]}", "aoi: {tiles: [nope]}"), ["aoi.tiles"]),
        (
            ("{source: static, catalog: CATALOG_PATH, collection: sentinel-1-rtc}", ""),
            ["modalities.sentinel1.url", "cannot be reached"],
        ),
    ],
)
@pytest.mark.parametrize("command", ["plan", "build"])
def test_bad_configs_fail_before_any_work(
    tmp_path: Path, world: WorldManifest, edit: tuple[str, str], words: list[str], command: str
) -> None:
    old, new = edit
    if old.startswith("{source: static"):
        old = old.replace("CATALOG_PATH", str(world.catalog))
        new = (
            f"{{source: stac_api, url: 'http://127.0.0.1:{free_port()}/', "
            "collection: sentinel-1-rtc}"
        )
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    path = _config(tmp_path, world, old, new)
    args = [command, str(path)] + (["--dry-run"] if command == "plan" else ["--synchronous"])
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    for word in words:
        assert word in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "corpus.zarr").exists()
    assert not (tmp_path / "corpus.zarr.run").exists()


def test_world_command_rejects_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--size", "huge"])
    assert result.exit_code == EXIT_USER_ERROR and "unknown world size 'huge'" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    result = runner.invoke(app, ["world", "--out", str(tmp_path / "full")])
    assert result.exit_code == EXIT_USER_ERROR and "not empty" in result.output


def test_plan_dry_run_json_writes_nothing(tmp_path: Path, world: WorldManifest) -> None:
    path = world_config(world, tmp_path)
    result = runner.invoke(app, ["plan", str(path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["tiles"] == summary["samples"] == 4
    assert summary["periods"] == len(world.period_starts)
    assert summary["requests"]["search"] == 0  # a static catalog costs no request
    assert all(tiles == [] for tiles in summary["tiles_without_data"].values())
    assert set(summary["items"]) == {"sentinel2_l2a", "sentinel1", "landsat_c2l2", "worldcover"}
    for modality, collection in [("sentinel1", "sentinel-1-rtc"), ("worldcover", "esa-worldcover")]:
        assert 0 < summary["items"][modality] <= len(world.item_ids[collection])
    assert not (tmp_path / "corpus.zarr.run").exists()
    written = runner.invoke(app, ["plan", str(path)])
    assert (
        written.exit_code == 0 and (tmp_path / "corpus.zarr.run" / "plan" / "plan.json").is_file()
    )


def test_build_status_validate_round_trip(tmp_path: Path, world: WorldManifest) -> None:
    path = world_config(world, tmp_path, modalities=("worldcover",), samples_per_shard=2)
    built = runner.invoke(app, ["build", str(path), "--synchronous", "--no-progress"])
    assert built.exit_code == 0, built.output
    assert "built 4 tiles" in built.output and "4 done, 0 empty, 0 failed" in built.output
    again = runner.invoke(app, ["build", str(path), "--synchronous", "--no-progress"])
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output

    store = tmp_path / "corpus.zarr"
    status = runner.invoke(app, ["status", str(store), "--json"])
    assert status.exit_code == 0, status.output
    doc = json.loads(status.output)
    assert doc["states"] == {"worldcover": {"pending": 0, "done": 4, "empty": 0, "failed": 0}}
    assert doc["complete"] is True and doc["coverage"] == {}
    by_config = runner.invoke(app, ["status", str(path)])
    assert by_config.exit_code == 0 and "worldcover" in by_config.output

    assert runner.invoke(app, ["validate", str(store)]).exit_code == 0
    png = tmp_path / "s0.png"
    drawn = runner.invoke(app, ["quicklook", str(store), "0", "--out", str(png)])
    assert drawn.exit_code == 0, drawn.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outside = runner.invoke(app, ["quicklook", str(store), "9", "--out", str(png)])
    assert outside.exit_code == EXIT_USER_ERROR and "outside this corpus" in outside.output
    shard = store / "worldcover" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:50])
    broken = runner.invoke(app, ["validate", str(store)])
    assert broken.exit_code == 1
    assert "worldcover/c/0/0/0/0" in broken.output


def test_status_of_a_missing_store_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == EXIT_USER_ERROR
    assert "no corpus at" in result.output and "Traceback" not in result.output


def test_stratified_sampling_draws_per_worldcover_class(
    tmp_path: Path, world: WorldManifest
) -> None:
    from terracube.workflows.config import load_config
    from terracube.workflows.planning import plan_build

    def planned(n_per_class: int, seed: int) -> list[str]:
        sampling = {"mode": "stratified", "n_per_class": n_per_class, "seed": seed}
        path = world_config(world, tmp_path / f"{n_per_class}-{seed}", extra={"sampling": sampling})
        return plan_build(load_config(path)).samples.tile_id.tolist()

    # Every tile of the world has a WorldCover class, so asking for more per class than
    # there are tiles draws all of them; one per class draws one tile per class present.
    assert planned(10, 0) == list(world.tile_ids)
    one = planned(1, 0)
    assert one == planned(1, 0)  # seeded: the same draw every time
    assert 1 <= len(one) <= 4 and set(one) <= set(world.tile_ids)

    no_worldcover = world_config(
        world, tmp_path / "nowc", modalities=("sentinel1",),
        extra={"sampling": {"mode": "stratified", "n_per_class": 1}},
    )  # fmt: skip
    result = runner.invoke(app, ["plan", str(no_worldcover), "--dry-run"])
    assert result.exit_code == EXIT_USER_ERROR and "sampling.mode" in result.output


def test_a_changed_aoi_cannot_resume_into_the_old_store(
    tmp_path: Path, world: WorldManifest
) -> None:
    first, second = list(world.tile_ids[:2]), list(world.tile_ids[2:])
    path = world_config(world, tmp_path, modalities=("worldcover",), tiles=first)
    assert runner.invoke(app, ["build", str(path), "--synchronous", "--no-progress"]).exit_code == 0

    moved = world_config(world, tmp_path, modalities=("worldcover",), tiles=second)
    result = runner.invoke(app, ["build", str(moved), "--synchronous", "--no-progress"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert f"sample 0 holds tile {first[0]} but the plan puts {second[0]}" in result.output

    grown = world_config(world, tmp_path, modalities=("worldcover",), tiles=list(world.tile_ids))
    result = runner.invoke(app, ["build", str(grown), "--synchronous", "--no-progress"])
    assert (
        result.exit_code == EXIT_USER_ERROR and "n_samples: store has 2, asked 4" in result.output
    )
    assert "Traceback" not in result.output
