"""A deleted and a corrupt shard: found by validate and status, refused by quicklook,
rebuilt by repair into exactly a clean build's bytes (issue 19, points 1 and 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from terracube.workflows.cli.app import app
from terracube.workflows.cli.common import EXIT_PROBLEMS, EXIT_USER_ERROR
from terracube.workflows.world import WorldManifest
from typer.testing import CliRunner

from tests.workflows.workflows_support import shard_files, store_hashes, world_config

runner = CliRunner()

DELETED = "s2_10m/c/1/0/0/0/0"
"""A done sample's 10 m Sentinel-2 shard (sample 1): zarr would read it as zeros."""
CORRUPT = "sentinel1_state/c/2"
"""A state shard (sample 2) with one flipped byte: its index checksum fails."""
FLIPPED = "s1/c/3/0/0/0/0"
"""A data shard (sample 3) with a flipped byte inside a frame: only the zstd checksum tells."""


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, world: WorldManifest) -> tuple[Path, Path]:
    """(config, clean copy of its store) of a 4-tile, one-sample-per-shard build."""
    folder = tmp_path_factory.mktemp("repair")
    config = world_config(world, folder, modalities=("sentinel2_l2a", "sentinel1", "worldcover"))
    result = runner.invoke(app, ["build", str(config), "--synchronous", "--no-progress"])
    assert result.exit_code == 0, result.output
    clean = folder / "clean.zarr"
    shutil.copytree(folder / "corpus.zarr", clean)
    return config, clean


def test_damage_is_found_refused_and_repaired_to_a_clean_build(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    config, clean = built
    store = config.parent / "corpus.zarr"
    (store / DELETED).unlink()
    again = runner.invoke(app, ["build", str(config), "--synchronous", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output and "terracube repair" in again.output
    assert DELETED in again.output
    _flip(store / CORRUPT, 0)
    _flip(store / FLIPPED, 2000)
    before = shard_files(store)
    refused = runner.invoke(app, ["build", str(config), "--synchronous", "--retry-failed"])
    assert refused.exit_code == EXIT_USER_ERROR, refused.output
    assert CORRUPT in refused.output and "terracube repair" in refused.output

    checked = runner.invoke(app, ["validate", str(config), "--json"])
    assert checked.exit_code == EXIT_PROBLEMS, checked.output
    report = json.loads(checked.output)
    named = {p["path"]: p for p in report["problems"]}
    assert DELETED in named and "missing" in named[DELETED]["message"]
    assert CORRUPT in named and FLIPPED in named
    assert "checksum" in named[FLIPPED]["message"]
    assert {p["shard"] for p in report["problems"]} == {1, 2, 3}

    status = runner.invoke(app, ["status", str(config), "--json"])
    assert status.exit_code == EXIT_PROBLEMS, status.output
    doc = json.loads(status.output)
    assert doc["complete"] is False
    assert {d["path"] for d in doc["damaged"]} >= {DELETED, CORRUPT}

    drawn = runner.invoke(app, ["quicklook", str(store), "1", "--out", str(tmp_path / "q.png")])
    assert drawn.exit_code == EXIT_USER_ERROR and DELETED in drawn.output, drawn.output
    assert not (tmp_path / "q.png").exists()

    scored = runner.invoke(
        app,
        ["evaluate", "none", "--task", "worldcover-classification", "--data", str(store),
         "--out", str(tmp_path / "eval")],
    )  # fmt: skip
    assert scored.exit_code == EXIT_USER_ERROR and "damaged shard" in scored.output, scored.output

    repaired = runner.invoke(app, ["repair", str(config), "--synchronous", "--no-progress"])
    assert repaired.exit_code == 0, repaired.output
    assert "in 3 shard(s): 1, 2, 3" in repaired.output and "valid" in repaired.output

    assert store_hashes(store) == store_hashes(clean)  # byte for byte a clean build
    after = shard_files(store)
    for path, mtime in before.items():  # every shard of sample 0 was never rewritten
        if "/c/0" in f"/{path}" or path.endswith("/c/0"):
            assert after[path] == mtime, path
    assert runner.invoke(app, ["validate", str(config)]).exit_code == 0
    assert runner.invoke(app, ["status", str(config)]).exit_code == 0

    nothing = runner.invoke(app, ["repair", str(config), "--synchronous"])
    assert nothing.exit_code == 0 and "nothing to repair" in nothing.output


def test_a_problem_no_shard_rebuild_can_fix_is_refused(
    built: tuple[Path, Path], tmp_path: Path, world: WorldManifest
) -> None:
    _, clean = built
    config = world_config(world, tmp_path, modalities=("sentinel2_l2a", "sentinel1", "worldcover"))
    store = tmp_path / "corpus.zarr"
    shutil.copytree(clean, store)
    shutil.rmtree(store / "s1_valid_fraction")
    result = runner.invoke(app, ["repair", str(config), "--synchronous"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "s1_valid_fraction" in result.output and "new store" in result.output
    assert "Traceback" not in result.output


def test_lost_index_shards_are_repaired_too(
    built: tuple[Path, Path], tmp_path: Path, world: WorldManifest
) -> None:
    """A deleted `epsg` or `period_start` shard reads as fill values (epsg 0, no dates):
    validate names the file and the impossible values, and repair rebuilds that shard."""
    _, clean = built
    config = world_config(world, tmp_path, modalities=("sentinel2_l2a", "sentinel1", "worldcover"))
    store = tmp_path / "corpus.zarr"
    shutil.copytree(clean, store)
    (store / "epsg" / "c" / "0").unlink()
    (store / "period_start" / "c" / "1" / "0").unlink()
    checked = runner.invoke(app, ["validate", str(store), "--json"])
    problems = json.loads(checked.output)["problems"]
    assert {p["shard"] for p in problems} == {0, 1}, problems
    assert any("not a known EPSG code" in p["message"] for p in problems)
    repaired = runner.invoke(app, ["repair", str(config), "--synchronous", "--no-progress"])
    assert repaired.exit_code == 0, repaired.output
    assert store_hashes(store) == store_hashes(clean)


def test_a_write_cut_off_before_its_states_is_pending_not_damage(
    built: tuple[Path, Path], tmp_path: Path, world: WorldManifest
) -> None:
    """`write_shard` writes the states last: a shard whose states were never written is
    pending (a build finishes it), not a damaged store."""
    _, clean = built
    config = world_config(world, tmp_path, modalities=("sentinel2_l2a", "sentinel1", "worldcover"))
    store = tmp_path / "corpus.zarr"
    shutil.copytree(clean, store)
    for state in store.glob("*_state"):
        (state / "c" / "3").unlink()
    status = json.loads(runner.invoke(app, ["status", str(store), "--json"]).output)
    assert status["damaged"] == [] and status["complete"] is False
    assert status["states"]["sentinel1"]["pending"] == 1
    assert runner.invoke(app, ["validate", str(store)]).exit_code == 0
    rebuilt = runner.invoke(app, ["build", str(config), "--synchronous", "--no-progress"])
    assert rebuilt.exit_code == 0 and "1 done" in rebuilt.output, rebuilt.output
    assert store_hashes(store) == store_hashes(clean)
