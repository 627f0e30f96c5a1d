"""How `terracube embed` runs: killed and resumed, on a Dask cluster, under torchrun, from a
build config, and its command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from terracube.model.embed.spec import EmbedSpec
from terracube.workflows.cli.app import app
from terracube.workflows.embed import run_embed
from terracube.workflows.world.generate import WorldManifest
from typer.testing import CliRunner

from tests.embed.corpus import N_TILES, PER_SHARD, write_checkpoint
from tests.workflows.workflows_support import world_config

REPO = Path(__file__).resolve().parents[2]
ARRAYS = ("embedding", "tokens", "input_present", "state", "tile_id", "epsg", "x0", "y0")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from terracube.workflows.cli.app import main; main()", *args]


def embed_args(checkpoint: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return cli("embed", str(checkpoint), "--data", str(corpus), "--out", str(out), *extra)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def assert_same_outputs(a: Path, b: Path, exact: bool = True) -> None:
    za, zb = (
        zarr.open_group(a / "embeddings.zarr", mode="r"),
        zarr.open_group(b / "embeddings.zarr", mode="r"),
    )
    for name in ARRAYS:
        x, y = np.asarray(za[name][:]), np.asarray(zb[name][:])
        if exact or name != "embedding":
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)
    ta, tb = pq.read_table(a / "tiles.parquet"), pq.read_table(b / "tiles.parquet")
    assert ta.column_names == tb.column_names and ta.num_rows == tb.num_rows == N_TILES - 1
    for column in ta.column_names:
        if exact or column != "embedding":
            assert ta.column(column).to_pylist() == tb.column(column).to_pylist(), column
        else:
            np.testing.assert_allclose(
                np.stack(ta.column(column).to_numpy(zero_copy_only=False)),
                np.stack(tb.column(column).to_numpy(zero_copy_only=False)),
                rtol=1e-5,
                atol=1e-6,
            )


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(
    corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    slow = ("--windows-per-step", "1", "--tiles-per-read", "1", "--no-progress")
    reference = tmp_path / "reference"
    subprocess.run(embed_args(checkpoint, corpus, reference, *slow), env=ENV, check=True, cwd=REPO)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(embed_args(checkpoint, corpus, cut, *slow), env=ENV, cwd=REPO)
    first_states = cut / "embeddings.zarr" / "state" / "c" / "0"  # written last by shard 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if first_states.exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "tiles.parquet").exists()
    states = np.asarray(zarr.open_group(cut / "embeddings.zarr", mode="r")["state"][:])
    assert (states == 0).any(), "some shard must still be pending after the kill"
    again = subprocess.run(
        embed_args(checkpoint, corpus, cut, *slow, "--json"),
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    n_shards = N_TILES // PER_SHARD
    assert summary["shards_already_done"] >= 1
    assert summary["shards_run"] + summary["shards_already_done"] == n_shards
    assert_same_outputs(reference, cut)


@pytest.mark.slow
def test_a_dask_local_cluster_and_torchrun_ranks_give_the_serial_result(
    corpus: Path, checkpoint: Path, tmp_path: Path
) -> None:
    serial = tmp_path / "serial"
    run_embed(EmbedSpec(str(checkpoint), str(corpus), str(serial), device="cpu"), progress=False)
    dask = tmp_path / "dask"
    spec = EmbedSpec(str(checkpoint), str(corpus), str(dask), device="cpu")
    report = run_embed(spec, workers=2, progress=False)
    assert report.shards_run == N_TILES // PER_SHARD and report.table is not None
    assert_same_outputs(serial, dask, exact=False)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    ranks = tmp_path / "ranks"
    env = {k: v for k, v in ENV.items() if k not in ("WORLD_SIZE", "RANK")}
    code = "from terracube.workflows.cli.app import main; main()"
    script = tmp_path / "terracube_cli.py"
    script.write_text(code + "\n")
    args = embed_args(checkpoint, corpus, ranks, "--no-progress", "--device", "cpu")[3:]
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    if not (ranks / "tiles.parquet").exists():  # both ranks finished at once: neither saw all
        subprocess.run(
            embed_args(checkpoint, corpus, ranks, "--no-progress"), env=env, cwd=REPO, check=True
        )
    assert_same_outputs(serial, ranks, exact=False)


@pytest.mark.slow
def test_a_build_config_is_built_then_embedded(world: WorldManifest, tmp_path: Path) -> None:
    config = world_config(
        world, tmp_path, modalities=("sentinel1", "worldcover"), samples_per_shard=2
    )
    ckpt = write_checkpoint(tmp_path / "ckpt", patch=8, crop=64)
    result = CliRunner().invoke(
        app,
        [
            "embed",
            str(ckpt),
            "--data",
            str(config),
            "--out",
            str(tmp_path / "emb"),
            "--json",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["samples_done"] == len(world.tile_ids) and summary["window"] == 64
    prov = zarr.open_group(tmp_path / "emb" / "embeddings.zarr", mode="r").attrs[
        "terracube:embeddings"
    ]
    assert prov["groups"] == ["s1"] and prov["corpus"]["url"].endswith("corpus.zarr")


def test_cli_says_what_is_wrong_in_one_line(corpus: Path, checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "o")
    for args, expected in (
        (["--periods", "2"], "--periods '2': give START:STOP"),
        (["--window", "100"], "--window 100 px: a window must divide"),
        (["--groups", "s2_10m,osm"], "not encodable groups"),
    ):
        result = runner.invoke(
            app, ["embed", str(checkpoint), "--data", str(corpus), "--out", out, *args]
        )
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
    missing = runner.invoke(app, ["embed", "nope.pt", "--data", str(corpus), "--out", out])
    assert missing.exit_code == 2 and "checkpoint" in missing.output
    (tmp_path / "file").write_text("x")
    as_file = runner.invoke(
        app, ["embed", str(checkpoint), "--data", str(corpus), "--out", str(tmp_path / "file")]
    )
    assert as_file.exit_code == 2 and "is a file; pass a folder" in as_file.output
    (tmp_path / "leftover" / "embeddings.zarr").mkdir(parents=True)
    leftover = runner.invoke(
        app, ["embed", str(checkpoint), "--data", str(corpus), "--out", str(tmp_path / "leftover")]
    )
    assert leftover.exit_code == 2 and "is not an embedding store" in leftover.output
