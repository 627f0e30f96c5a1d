"""The local S3 server (moto) as zarr, xarray and GDAL use it, and the service processes' hygiene."""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import numpy as np
import pytest
import rasterio
import s3fs
import xarray as xr
import zarr
from rasterio.windows import Window

from tests.conftest import enter_service
from tests.services.cog_fixture import write_test_cog
from tests.services.process import ServiceUnavailable, require_executable, spawn, wait_until
from tests.services.s3 import S3Store, patched_environ

# ------------------------------------------------------------------ S3 object store


def _sample_dataset() -> xr.Dataset:
    rng = np.random.default_rng(3)
    return xr.Dataset(
        {
            "reflectance": (("time", "y", "x"), rng.integers(0, 10000, (4, 64, 48), "uint16")),
            "valid_fraction": (("time",), np.array([1.0, 0.5, 0.0, 0.25], "float32")),
            "label": (("y", "x"), rng.integers(0, 11, (64, 48), "uint8")),
        },
        coords={
            "time": np.array(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"], "M8[ns]"),
            "y": np.arange(64, dtype="float64") * -10.0 + 5000000.0,
            "x": np.arange(48, dtype="float64") * 10.0 + 400000.0,
        },
        attrs={"format_version": 1, "note": "terracube s3 round trip"},
    ).chunk({"time": 2, "y": 32, "x": 24})


@pytest.mark.services
def test_xarray_zarr_v3_round_trip_on_s3(s3_store: S3Store) -> None:
    dataset = _sample_dataset()
    url = s3_store.url(f"rt-{uuid.uuid4().hex}.zarr")
    dataset.to_zarr(url, zarr_format=3, storage_options=s3_store.storage_options, mode="w")

    back = xr.open_zarr(url, storage_options=s3_store.storage_options)
    xr.testing.assert_identical(back.load(), dataset.load())
    assert back["reflectance"].encoding["chunks"] == (2, 32, 24)

    group = zarr.open_group(url, mode="r", storage_options=s3_store.storage_options)
    assert group.metadata.zarr_format == 3
    np.testing.assert_array_equal(group["reflectance"][:], dataset["reflectance"].values)
    assert group.attrs["note"] == "terracube s3 round trip"

    fs = s3fs.S3FileSystem(**s3_store.storage_options)
    keys = fs.ls(url.removeprefix("s3://"))
    assert any(key.endswith("zarr.json") for key in keys)


@pytest.mark.services
def test_zarr_api_writes_and_reads_on_s3(s3_store: S3Store) -> None:
    url = s3_store.url(f"arr-{uuid.uuid4().hex}.zarr")
    values = np.arange(100 * 80, dtype="int32").reshape(100, 80)
    array = zarr.create_array(
        url,
        shape=values.shape,
        chunks=(25, 40),
        dtype="int32",
        storage_options=s3_store.storage_options,
        zarr_format=3,
    )
    array[:] = values
    array[10:12, 5:7] = -1
    reopened = zarr.open_array(url, mode="r", storage_options=s3_store.storage_options)
    expected = values.copy()
    expected[10:12, 5:7] = -1
    np.testing.assert_array_equal(reopened[:], expected)
    fs = s3fs.S3FileSystem(**s3_store.storage_options)
    chunk_keys = [k for k in fs.find(url.removeprefix("s3://")) if "/c/" in k]
    assert len(chunk_keys) == 4 * 2


@pytest.mark.services
def test_gdal_reads_a_cog_from_the_local_s3(s3_store: S3Store, tmp_path: Path) -> None:
    data = write_test_cog(tmp_path / "s3.tif")
    key = f"cogs/{uuid.uuid4().hex}.tif"
    s3fs.S3FileSystem(**s3_store.storage_options).put(str(tmp_path / "s3.tif"), s3_store.url(key))
    with (
        s3_store.rasterio_env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"),
        rasterio.open(f"/vsis3/{s3_store.bucket}/{key}") as remote,
    ):
        window = Window(700, 800, 100, 100)
        np.testing.assert_array_equal(remote.read(1, window=window), data[800:900, 700:800])


@pytest.mark.services
def test_s3_environment_points_only_at_the_local_server(s3_store: S3Store) -> None:
    import os

    assert os.environ["AWS_ENDPOINT_URL"] == s3_store.endpoint_url
    assert os.environ["AWS_ACCESS_KEY_ID"] == "terracube-test-key"
    assert "AWS_PROFILE" not in os.environ
    assert s3_store.endpoint_url.startswith("http://127.0.0.1:")


def test_patched_environ_restores_previous_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("TERRACUBE_KEEP", "old")
    monkeypatch.delenv("TERRACUBE_NEW", raising=False)
    with patched_environ({"TERRACUBE_KEEP": "new", "TERRACUBE_NEW": "x"}, remove=("HOME",)):
        assert (os.environ["TERRACUBE_KEEP"], os.environ["TERRACUBE_NEW"]) == ("new", "x")
        assert "HOME" not in os.environ
    assert os.environ["TERRACUBE_KEEP"] == "old"
    assert "TERRACUBE_NEW" not in os.environ
    assert "HOME" in os.environ


# ------------------------------------------------------------------ process hygiene (pure)


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie awaiting its (new) parent's reaping is dead


def test_managed_process_stop_kills_the_whole_group(tmp_path: Path) -> None:
    script = "trap '' TERM; sleep 300 & echo $! > child.pid; wait"
    process = spawn("stubborn", ["sh", "-c", script], tmp_path / "log", cwd=tmp_path)
    pid_file = tmp_path / "child.pid"
    wait_until(process, lambda: pid_file.exists() and pid_file.read_text().strip() != "", 10, "")
    child = int(pid_file.read_text())
    process.stop(timeout_s=0.5)  # the leader ignores SIGTERM: the group kill must do it
    assert process.popen.returncode is not None
    deadline_polls = 200
    while not _pid_gone(child) and deadline_polls:
        deadline_polls -= 1
        time.sleep(0.05)
    assert _pid_gone(child)


def test_missing_package_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServiceUnavailable, match="apt-get install no-such-package"):
        require_executable("/nonexistent/bin/tool", "no-such-package")

    def missing() -> AbstractContextManager[None]:
        raise ServiceUnavailable("tool not found: install the Debian package 'x'")

    monkeypatch.delenv("CI", raising=False)
    with ExitStack() as stack, pytest.raises(pytest.skip.Exception, match="install the Debian"):
        enter_service(stack, missing)
    monkeypatch.setenv("CI", "true")
    with ExitStack() as stack, pytest.raises(pytest.fail.Exception, match="under CI"):
        enter_service(stack, missing)
