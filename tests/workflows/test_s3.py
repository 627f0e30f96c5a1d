"""Building into object storage works exactly like a local path (local moto S3 server).

The same config, once with a local store and once with s3://, gives the same bytes
in every object; `terracube status` and plain `xarray.open_zarr` read the S3 corpus
back, a re-run resumes (nothing left to submit), and the credentials, which come from
the environment, appear in no log.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import s3fs
import xarray as xr
from terracube.workflows.build.runner import BuildOptions, build_corpus
from terracube.workflows.cli.app import app
from terracube.workflows.config import load_config
from terracube.workflows.world import WorldManifest
from typer.testing import CliRunner

from tests.services.s3 import ACCESS_KEY, SECRET_KEY, S3Store
from tests.workflows.workflows_support import store_hashes, world, world_config

__all__ = ["world"]

pytestmark = pytest.mark.services

SYNC = BuildOptions(synchronous=True, show_progress=False)
FAST = ("sentinel1", "worldcover")


def test_build_into_s3_equals_local_and_reads_back(
    world: WorldManifest, s3_store: S3Store, tmp_path: Path
) -> None:
    local = load_config(
        world_config(world, tmp_path / "local", modalities=FAST, samples_per_shard=2)
    )
    assert build_corpus(local, SYNC).tiles["done"] == 4

    url = s3_store.url(f"corpora/{tmp_path.name}/corpus.zarr")
    options = {
        "key": "${AWS_ACCESS_KEY_ID}",
        "secret": "${AWS_SECRET_ACCESS_KEY}",
        "client_kwargs": {"endpoint_url": s3_store.endpoint_url, "region_name": "us-east-1"},
    }
    path = world_config(
        world, tmp_path / "s3", store=url, modalities=FAST, samples_per_shard=2,
        storage_options=options,
    )  # fmt: skip
    remote = load_config(path)
    assert remote.output.storage_options["secret"] == SECRET_KEY
    report = build_corpus(remote, SYNC)
    assert report.tiles == {"done": 4, "empty": 0, "failed": 0}
    assert report.run_dir == tmp_path / "s3" / f"{remote.name}.run"

    fs = s3fs.S3FileSystem(**s3_store.storage_options)
    root = url.removeprefix("s3://")
    objects = {
        key.removeprefix(root + "/"): hashlib.sha256(fs.cat_file(key)).hexdigest()
        for key in fs.find(root)
    }
    assert objects == store_hashes(Path(local.store_url))

    runner = CliRunner()
    status = runner.invoke(app, ["status", str(path), "--json"])
    assert status.exit_code == 0, status.output
    doc = json.loads(status.output)
    assert doc["states"]["sentinel1"] == {"pending": 0, "done": 4, "empty": 0, "failed": 0}
    assert doc["url"] == url

    remote_ds = xr.open_zarr(url, storage_options=s3_store.storage_options)
    local_ds = xr.open_zarr(local.store_url)
    assert set(remote_ds.variables) == set(local_ds.variables)
    for name in local_ds.variables:
        a, b = remote_ds[name].values, local_ds[name].values
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype.kind == "f":
            assert np.array_equal(a, b, equal_nan=True), name
        else:
            assert (a == b).all(), name

    again = build_corpus(remote, SYNC)
    assert again.shards_submitted == 0
    logs = "".join(p.read_text() for p in report.run_dir.glob("*.jsonl"))
    plan_config = (report.run_dir / "plan" / "config.json").read_text()
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in logs and secret not in plan_config
