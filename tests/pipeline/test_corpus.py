"""The corpus format: round trips, georeferencing, validation, atomic and concurrent writes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from terracube.catalog.registry import BAND_GROUPS, MODALITIES
from terracube.pipeline.corpus.geo import sample_dataset, sample_geobox
from terracube.pipeline.corpus.schema import DAYS_FILL
from terracube.pipeline.corpus.store import (
    Corpus,
    CorpusError,
    SampleData,
    SampleState,
    create_corpus,
)
from terracube.pipeline.corpus.validate import describe, validate

N_SAMPLES = 5
N_PERIODS = 3
PER_SHARD = 2
# One group per resolution plus a float group and a static map keeps the tests small.
GROUPS = ("s2_10m", "s2_20m", "s2_40m", "s1", "worldcover")
MODS = ("sentinel2_l2a", "sentinel1", "worldcover")


def make_sample(
    seed: int,
    epsg: int = 32631,
    x0: float = 399_360.0,
    y0: float = 5_002_240.0,
    groups: tuple[str, ...] = GROUPS,
) -> SampleData:
    """A deterministic synthetic sample for `seed`, all modalities of `groups` DONE."""
    rng = np.random.default_rng(seed)
    data_by_group: dict[str, np.ndarray] = {}
    for name in groups:
        g = BAND_GROUPS[name]
        t = (N_PERIODS,) if MODALITIES[g.modality].temporal else ()
        shape = (*t, len(g.bands), g.pixels, g.pixels)
        if g.dtype == "float32":
            data = rng.normal(-12, 4, shape).astype(np.float32)
            data[0, 0, :3, :3] = np.nan  # S1 nodata survives the round trip
        else:
            data = rng.integers(0, 12_000 if g.dtype == "uint16" else 100, shape).astype(g.dtype)
        data_by_group[name] = data
    return SampleData(
        tile_id=f"{epsg}_{int(x0) // 2560}_{int(y0) // 2560}",
        epsg=epsg,
        x0=x0,
        y0=y0,
        center_lon=3.0 + seed,
        center_lat=45.0 - seed,
        period_starts=np.array(["2023-01-01", "2023-02-01", "2023-03-01"], dtype="datetime64[D]")
        + seed,
        groups=data_by_group,
        valid_fraction={
            k: v
            for k, v in {
                "s2_10m": np.array([0.25, 1.0, 0.0], dtype=np.float32),
                "s1": np.array([1.0, 0.5, 0.75], dtype=np.float32),
                "worldcover": np.float32(1.0),
            }.items()
            if k in groups
        },
        provenance={
            k: v
            for k, v in {
                "s2_10m": [[f"S2A_{seed}_a", f"S2B_{seed}_b"], [f"S2A_{seed}_c"], []],
                "worldcover": [f"ESA_WorldCover_10m_2021_v200_{seed}"],
            }.items()
            if k in groups
        },
        states={BAND_GROUPS[g].modality: SampleState.DONE for g in groups},
        errors={},
    )


def new_corpus(path: Path) -> Corpus:
    return create_corpus(path, N_SAMPLES, N_PERIODS, PER_SHARD, groups=GROUPS)


def tree_hashes(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, SampleData]]:
    """Samples 0 (UTM 31N) and 3 (UTM 18S) written; 1, 2 and 4 pending."""
    path = tmp_path_factory.mktemp("corpus") / "c.zarr"
    corpus = new_corpus(path)
    samples = {
        0: make_sample(0, 32631, 399_360.0, 5_002_240.0),
        3: make_sample(3, 32718, 627_200.0, 8_590_080.0),
    }
    for i, s in samples.items():
        corpus.write_sample(i, s)
    return path, samples


# --------------------------------------------------------------------------- round trip


def test_plain_xarray_reads_back_exactly(written: tuple[Path, dict[int, SampleData]]) -> None:
    path, samples = written
    ds = xr.open_zarr(path)
    assert ds.attrs["terracube_format_version"] == 2
    assert list(ds["band_s2_20m"].values) == list(BAND_GROUPS["s2_20m"].band_names)
    assert ds["s2_10m"].dims == ("sample", "time", "band_s2_10m", "y10", "x10")
    assert ds["worldcover"].dims == ("sample", "band_worldcover", "y10", "x10")
    assert ds["s2_40m"].shape == (N_SAMPLES, N_PERIODS, 2, 64, 64)
    for i, s in samples.items():
        for g in GROUPS:
            np.testing.assert_array_equal(ds[g][i].values, s.groups[g])
            assert ds[g].dtype == np.dtype(BAND_GROUPS[g].dtype)
        assert ds["tile_id"][i].values.item() == s.tile_id
        assert int(ds["epsg"][i]) == s.epsg
        assert float(ds["x0"][i]) == s.x0 and float(ds["y0"][i]) == s.y0
        np.testing.assert_array_equal(
            ds["period_start"][i].values, s.period_starts.astype("datetime64[ns]")
        )
        np.testing.assert_array_equal(ds["s2_10m_valid_fraction"][i].values, [0.25, 1.0, 0.0])
        assert [json.loads(v) for v in ds["s2_10m_provenance"][i].values] == s.provenance["s2_10m"]
        assert (
            json.loads(ds["worldcover_provenance"][i].values.item()) == s.provenance["worldcover"]
        )
        assert ds["s1_provenance"][i, 0].values.item() == ""  # not given: fill
        for m in MODS:
            assert int(ds[f"{m}_state"][i]) == SampleState.DONE
    # Pending samples: state 0, no dates, nodata everywhere.
    assert int(ds["sentinel2_l2a_state"][1]) == SampleState.PENDING
    assert np.isnat(ds["period_start"][1].values).all()
    assert int(ds["s2_10m"][1].max()) == 0
    assert np.isnan(ds["s1"][4].values).all()
    assert ds["tile_id"][2].values.item() == ""


def test_read_record_inverts_write(written: tuple[Path, dict[int, SampleData]]) -> None:
    path, samples = written
    corpus = Corpus.open(path)
    got = corpus.read_record(3)
    want = samples[3]
    assert (got.tile_id, got.epsg, got.x0, got.y0) == (want.tile_id, want.epsg, want.x0, want.y0)
    assert (got.center_lon, got.center_lat) == (want.center_lon, want.center_lat)
    np.testing.assert_array_equal(got.period_starts, want.period_starts)
    for g in GROUPS:
        np.testing.assert_array_equal(got.groups[g], want.groups[g])
    assert got.provenance["s2_10m"] == want.provenance["s2_10m"]
    assert got.states == {m: SampleState.DONE for m in MODS}
    part = corpus.read_sample(3, groups=["s2_20m", "worldcover"], time=slice(1, 3))
    np.testing.assert_array_equal(part["s2_20m"], want.groups["s2_20m"][1:3])
    np.testing.assert_array_equal(part["worldcover"], want.groups["worldcover"])
    assert corpus.shards == [range(0, 2), range(2, 4), range(4, 5)]
    np.testing.assert_array_equal(corpus.states("sentinel1"), [1, 0, 0, 1, 0])


def test_georeferencing_recovered_in_two_utm_zones(
    written: tuple[Path, dict[int, SampleData]],
) -> None:
    path, samples = written
    for i, s in samples.items():
        view = sample_dataset(path, i)
        for g in ("s2_10m", "s2_20m", "s2_40m", "worldcover"):
            res = BAND_GROUPS[g].resolution
            want = Affine(res, 0.0, s.x0, 0.0, -res, s.y0)
            assert view[g].rio.crs.to_epsg() == s.epsg
            assert view[g].rio.transform() == want
            assert (
                view[g].rio.transform(recalc=True) == want
            )  # coordinates agree with the attribute
            assert view[g].rio.bounds() == (s.x0, s.y0 - 2560, s.x0 + 2560, s.y0)
            assert sample_geobox(path, i, g) == (f"EPSG:{s.epsg}", want, (2560 // res,) * 2)
        np.testing.assert_array_equal(view["s2_20m"].values, s.groups["s2_20m"])
    assert sample_geobox(Corpus.open(path), 3, "s1")[0] == "EPSG:32718"
    with pytest.raises(CorpusError, match="pending"):
        sample_dataset(path, 1)


# --------------------------------------------------------------------------- creation


def test_create_is_idempotent_and_names_a_differing_parameter(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    new_corpus(path)
    before = tree_hashes(path)
    assert new_corpus(path).n_samples == N_SAMPLES
    assert tree_hashes(path) == before
    with pytest.raises(CorpusError, match=r"samples_per_shard: store has 2, asked 3"):
        create_corpus(path, N_SAMPLES, N_PERIODS, 3, groups=GROUPS)
    with pytest.raises(KeyError, match="unknown band group 's2_60m'"):
        create_corpus(tmp_path / "d.zarr", 2, 3, 1, groups=("s2_60m",))


def test_every_array_is_sharded_by_whole_samples(
    written: tuple[Path, dict[int, SampleData]],
) -> None:
    path, _ = written
    root = zarr.open_group(path, mode="r")
    for name, arr in root.arrays():
        if arr.metadata.dimension_names[0] == "sample":
            assert arr.shards[0] == PER_SHARD, name
            assert arr.shards[1:] == arr.shape[1:], name
    # default inner chunks: one timestep of a 64 native-px square, capped at the tile side
    assert root["s2_10m"].chunks == (1, 1, 4, 64, 64)
    assert root["s2_40m"].chunks == (1, 1, 2, 64, 64)
    # Pending shard 2 (sample 4) has no files at all: nothing is written until samples are.
    assert not (path / "s2_10m" / "c" / "2").exists()


# --------------------------------------------------------------------------- writes


def test_same_sample_twice_gives_identical_bytes(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    corpus = new_corpus(path)
    corpus.write_sample(1, make_sample(1))
    first = tree_hashes(path)
    corpus.write_sample(1, make_sample(1))
    assert tree_hashes(path) == first
    corpus.write_shard(1, [make_sample(2), make_sample(3)])
    second = tree_hashes(path)
    corpus.write_shard(1, [make_sample(2), make_sample(3)])
    assert tree_hashes(path) == second


def test_wrong_input_raises_before_touching_the_store(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    corpus = new_corpus(path)
    corpus.write_sample(0, make_sample(0))
    before = tree_hashes(path)
    good = make_sample(1)
    bad_shape = {**good.groups, "s2_20m": good.groups["s2_20m"][:, :, :64]}
    with pytest.raises(
        CorpusError, match=r"group 's2_20m' must be uint16 of shape \(3, 6, 128, 128\)"
    ):
        corpus.write_sample(1, SampleData(**{**good.__dict__, "groups": bad_shape}))
    bad_dtype = {**good.groups, "s1": good.groups["s1"].astype(np.float64)}
    with pytest.raises(CorpusError, match=r"group 's1' must be float32"):
        corpus.write_shard(
            0, [make_sample(0), SampleData(**{**good.__dict__, "groups": bad_dtype})]
        )
    with pytest.raises(CorpusError, match="epsg=4"):
        corpus.write_sample(1, SampleData(**{**good.__dict__, "epsg": 4}))
    missing = {k: v for k, v in good.groups.items() if k != "s2_40m"}
    with pytest.raises(
        CorpusError, match=r"sentinel2_l2a is DONE but groups \['s2_40m'\] are missing"
    ):
        corpus.write_sample(1, SampleData(**{**good.__dict__, "groups": missing}))
    with pytest.raises(CorpusError, match=r"holds samples 4\.\.4"):
        corpus.write_shard(2, [good, None])
    assert tree_hashes(path) == before


def test_failed_and_empty_states_keep_their_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    corpus = new_corpus(path)
    s = make_sample(2)
    s = SampleData(
        **{
            **s.__dict__,
            "groups": {"worldcover": s.groups["worldcover"]},
            "states": {
                "sentinel2_l2a": SampleState.EMPTY,
                "sentinel1": SampleState.FAILED,
                "worldcover": SampleState.DONE,
            },
            "errors": {
                "sentinel2_l2a": "no scenes under 80% cloud",
                "sentinel1": "HTTP 503 after 5 retries",
            },
            "valid_fraction": {},
            "provenance": {},
        }
    )
    corpus.write_sample(2, s)
    ds = xr.open_zarr(path)
    assert [int(ds[f"{m}_state"][2]) for m in MODS] == [2, 3, 1]
    assert ds["sentinel1_error"][2].values.item() == "HTTP 503 after 5 retries"
    assert int(ds["s2_10m"][2].max()) == 0  # empty modality stored as nodata
    summary = describe(path)
    assert summary["states"]["sentinel1"] == {"pending": 4, "done": 0, "empty": 0, "failed": 1}
    assert summary["states"]["worldcover"]["done"] == 1
    assert summary["samples_all_done"] == 0
    assert summary["n_shards"] == 3
    assert validate(path) == []


# --------------------------------------------------------------------------- validation


def _edit_root_attrs(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Edit the root attributes by hand, in zarr.json and its consolidated copy."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"])
    meta_path.write_text(json.dumps(meta))


def _corrupt(path: Path, how: str) -> None:
    if how == "missing array":
        shutil.rmtree(path / "s2_20m_valid_fraction")
    elif how == "no format version":
        _edit_root_attrs(path, lambda a: a.pop("terracube_format_version"))
    elif how == "future format version":
        _edit_root_attrs(path, lambda a: a.update(terracube_format_version=99))
    elif how == "state code 7":
        arr = zarr.open_array(path / "sentinel1_state", mode="r+")
        arr[1] = 7
    elif how == "wrong dtype":
        root = zarr.open_group(path, mode="r+", use_consolidated=False)
        old = root["epsg"]
        root.create_array(
            "epsg",
            shape=old.shape,
            dtype="int64",
            shards=old.shards,
            chunks=old.chunks,
            dimension_names=("sample",),
            fill_value=0,
            overwrite=True,
        )
    elif how == "truncated shard":
        shard = path / "s2_10m" / "c" / "0" / "0" / "0" / "0" / "0"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "flipped byte in a chunk":  # inside a frame: only its checksum can tell
        shard = path / "s2_10m" / "c" / "0" / "0" / "0" / "0" / "0"
        raw = bytearray(shard.read_bytes())
        raw[1000] ^= 0x01
        shard.write_bytes(bytes(raw))
    elif how == "deleted data shard":
        (path / "s1" / "c" / "0" / "0" / "0" / "0" / "0").unlink()
    elif how == "deleted state shard":
        (path / "worldcover_state" / "c" / "0").unlink()
    elif how == "valid fraction above 1":
        arr = zarr.open_array(path / "s1_valid_fraction", mode="r+")
        arr[0, 1] = 1.5
    elif how == "done sample without tile id":
        arr = zarr.open_array(path / "tile_id", mode="r+")
        arr[0] = ""


@pytest.mark.parametrize(
    ("how", "path_part", "message_part"),
    [
        ("missing array", "s2_20m_valid_fraction", "array is missing"),
        ("no format version", "zarr.json", "terracube_format_version is missing"),
        ("future format version", "zarr.json", "terracube_format_version=99 is not supported"),
        ("state code 7", "sentinel1_state", "sample 1 has state code 7"),
        ("wrong dtype", "epsg", "dtype is int64, expected int32"),
        ("truncated shard", "s2_10m/c/0/0/0/0/0", "cannot be decoded"),
        ("flipped byte in a chunk", "s2_10m/c/0/0/0/0/0", "match checksum"),
        ("deleted data shard", "s1/c/0/0/0/0/0", "shard file is missing"),
        ("deleted state shard", "worldcover_state/c/0", "shard file is missing"),
        ("valid fraction above 1", "s1_valid_fraction", "sample 0 has values outside [0, 1]"),
        ("done sample without tile id", "tile_id", "sample 0 is written but has an empty tile_id"),
    ],
)
def test_validate_names_the_problem(
    tmp_path: Path, how: str, path_part: str, message_part: str
) -> None:
    path = tmp_path / "c.zarr"
    corpus = new_corpus(path)
    corpus.write_shard(0, [make_sample(0), None])
    assert validate(path) == []
    _corrupt(path, how)
    problems = validate(path)
    assert any(p.path == path_part and message_part in p.message for p in problems), problems


# --------------------------------------------------------------------------- concurrency


CONCURRENT_GROUPS = ("s2_40m", "worldcover")
CONCURRENT_SAMPLES = 16


def _write_in_child(path: str, indices: list[int], barrier: Any) -> None:
    corpus = Corpus.open(path, writable=True)
    samples = {i: make_sample(i, groups=CONCURRENT_GROUPS) for i in indices}
    barrier.wait(timeout=120)  # both processes start writing together
    for i, sample in samples.items():
        corpus.write_sample(i, sample)


@pytest.mark.parametrize("split", ["different shards", "same shard"])
def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path, split: str) -> None:
    """Interleaved indices make every write a read-modify-write racing the other process."""
    path = tmp_path / "c.zarr"
    n = CONCURRENT_SAMPLES
    create_corpus(path, n, N_PERIODS, PER_SHARD, groups=CONCURRENT_GROUPS)
    if split == "same shard":
        parts = [list(range(0, n, 2)), list(range(1, n, 2))]
    else:
        parts = [list(range(0, n // 2)), list(range(n // 2, n))]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_in_child, args=(str(path), part, barrier)) for part in parts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    corpus = Corpus.open(path)
    for m in ("sentinel2_l2a", "worldcover"):
        np.testing.assert_array_equal(corpus.states(m), np.full(n, int(SampleState.DONE)))
    for i in range(n):
        got, want = corpus.read_record(i), make_sample(i, groups=CONCURRENT_GROUPS)
        assert got.tile_id == want.tile_id
        np.testing.assert_array_equal(got.period_starts, want.period_starts)
        for g in CONCURRENT_GROUPS:
            np.testing.assert_array_equal(got.groups[g], want.groups[g])
    assert validate(path) == []


def _rewrite_forever(path: str, ready: str) -> None:
    corpus = Corpus.open(path, writable=True)
    sample = make_sample(5)
    corpus.write_sample(1, sample)
    Path(ready).touch()
    while True:
        corpus.write_sample(1, sample)


def test_killed_writer_never_corrupts_a_done_sample(tmp_path: Path) -> None:
    """SIGKILL a process mid-rewrite of a shard: its neighbour (already done) stays intact."""
    path = tmp_path / "c.zarr"
    corpus = new_corpus(path)
    corpus.write_sample(0, make_sample(0))
    ready = tmp_path / "ready"
    proc = multiprocessing.get_context("spawn").Process(
        target=_rewrite_forever, args=(str(path), str(ready))
    )
    proc.start()
    while not ready.exists() and proc.is_alive():
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into the middle of another rewrite; not an assertion
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    reopened = Corpus.open(path)
    got = reopened.read_record(0)
    for g in GROUPS:
        np.testing.assert_array_equal(got.groups[g], make_sample(0).groups[g])
    assert got.states == {m: SampleState.DONE for m in MODS}
    problems = validate(path)
    assert problems == [], problems
    # Either the killed rewrite had finished its data or left sample 1's old bytes; same sample both ways.
    np.testing.assert_array_equal(
        reopened.read_sample(1)["s2_10m"], make_sample(5).groups["s2_10m"]
    )


def test_period_fill_is_cf_missing_value(written: tuple[Path, dict[int, SampleData]]) -> None:
    path, _ = written
    raw = zarr.open_array(path / "period_start", mode="r")
    assert raw.fill_value == DAYS_FILL
    assert raw.attrs["units"] == "days since 1970-01-01"
    assert int(raw[0, 0]) == (np.datetime64("2023-01-01") - np.datetime64("1970-01-01")).astype(int)


def test_fsspec_url_store_round_trips(tmp_path: Path) -> None:
    """A non-local URL goes through zarr's FsspecStore (memory:// here, s3:// at scale)."""
    url = f"memory://{tmp_path.name}/corpus.zarr"
    corpus = create_corpus(url, 3, N_PERIODS, PER_SHARD, groups=GROUPS)
    corpus.write_sample(2, make_sample(2))
    assert validate(url) == []
    ds = xr.open_zarr(url)
    np.testing.assert_array_equal(ds["s2_20m"][2].values, make_sample(2).groups["s2_20m"])
    view = sample_dataset(corpus, 2)
    assert view["s2_10m"].rio.transform() == Affine(10.0, 0.0, 399_360.0, 0.0, -10.0, 5_002_240.0)
    with pytest.raises(CorpusError, match="storage_options were given for the local path"):
        create_corpus(tmp_path / "x.zarr", 3, 3, 2, storage_options={"anon": True})
