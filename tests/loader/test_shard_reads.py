"""Shard reads the loader relies on: chunk selection, compiled and Python decode,
damage named precisely, and window reads equal to zarr selections."""

from __future__ import annotations

import math
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from terracube.model.data.pixel_stats import (
    GroupNormalizer,
)
from terracube.pipeline.corpus import shard_kernel
from terracube.pipeline.corpus import shard_reader as loader_shard
from terracube.pipeline.corpus.shard_format import ShardDecodeError
from terracube.pipeline.corpus.shard_geometry import ShardLayout, byte_runs, window_chunks
from terracube.pipeline.corpus.shard_reader import ShardReader
from terracube.pipeline.corpus.shard_whole import WholeShardReader, read_shard
from terracube.pipeline.corpus.shard_window import OpenShard
from terracube.pipeline.corpus.store import InnerChunking
from terracube.pipeline.corpus.zstd_into import ZstdInto

from tests.loader.corpus_fixture import (
    write_loader_corpus,
)


def test_window_chunks_cover_a_window_exactly_once() -> None:
    whole = ShardLayout((2, 4, 4, 256, 256), (1, 1, 4, 256, 256))
    plan = window_chunks(whole, 1, ((1, 3), (0, 4), (10, 42), (20, 52)))
    assert plan.flats.tolist() == [5, 6]  # sample 1 x 4 periods + period 1, 2
    assert plan.copies[0][0] == (slice(0, 1), slice(0, 4), slice(10, 42), slice(20, 52))
    assert plan.copies[1][1] == (slice(1, 2), slice(0, 4), slice(0, 32), slice(0, 32))
    assert plan.extent == (2, 4, 32, 32)
    tiled = ShardLayout((2, 4, 4, 256, 256), (1, 1, 4, 64, 64))
    window = ((2, 3), (0, 4), (60, 130), (0, 64))
    plan = window_chunks(tiled, 0, window)
    assert plan.flats.tolist() == [2 * 16 + r * 4 for r in (0, 1, 2)]  # rows 0..2, column 0
    covered = np.zeros((1, 4, 70, 64), int)
    for _, target in plan.copies:
        covered[target] += 1
    assert (covered == 1).all()
    with pytest.raises(ValueError, match="leaves the shard"):
        window_chunks(whole, 0, ((3, 5), (0, 4), (0, 8), (0, 8)))


def test_byte_runs_merge_close_chunks_and_place_each_in_the_buffer() -> None:
    offsets = np.array([100, 0, 55, 10**6, 50])
    sizes = np.array([100, 50, 35, 5, 5])
    starts, stops, positions = byte_runs(offsets, sizes, gap=8)
    assert starts.tolist() == [0, 100, 10**6]
    assert stops.tolist() == [90, 200, 10**6 + 5]
    # runs lie back to back in the buffer: [0, 90) [90, 190) [190, 195)
    assert positions.tolist() == [90, 0, 55, 190, 50]
    assert len(byte_runs(offsets, sizes, gap=0)[0]) == 3  # 0..50, 50..55, 55..90 touch
    starts, stops, positions = byte_runs(offsets, sizes, gap=10)
    assert stops.tolist() == [200, 10**6 + 5]  # the 10-byte gap 90..100 is read too
    assert positions.tolist() == [100, 0, 55, 200, 50]


@pytest.mark.parametrize(("spatial", "native"), [(None, True), (32, True), (32, False)])
def test_window_reads_equal_zarr_selections(
    tmp_path: Path, spatial: int | None, native: bool
) -> None:
    """Fast-path windows equal zarr's own selections, through libzstd and through the
    numcodecs fallback alike."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, spatial))
    rng = np.random.default_rng(3)
    for group in corpus.params.groups:
        arr = corpus.array(group)
        reader = ShardReader(arr, ZstdInto(native=native))
        for k, span in enumerate(corpus.shards):
            windows = {}
            for local in range(len(span)):
                window = []
                for extent in arr.shape[1:]:
                    a = int(rng.integers(0, extent))
                    window.append((a, int(rng.integers(a + 1, extent + 1))))
                windows[local] = tuple(window)
            got, nbytes = reader.read(k, windows)
            assert nbytes > 0 or group == "landsat"  # landsat is never written: all fill
            for local, window in windows.items():
                want = np.asarray(arr[(span.start + local, *(slice(a, b) for a, b in window))])
                np.testing.assert_array_equal(got[local], want, err_msg=f"{group} {window}")
            np.testing.assert_array_equal(read_shard(arr, k), arr[span.start : span.stop])
    for name in [f"{g}_valid_fraction" for g in corpus.params.groups] + ["period_start"]:
        arr = corpus.array(name)  # one-chunk shards: the single-read path
        for k, span in enumerate(corpus.shards):
            np.testing.assert_array_equal(read_shard(arr, k), arr[span.start : span.stop])


def test_the_compiled_decode_never_reads_past_its_buffer(tmp_path: Path) -> None:
    """The read buffer is sized when chunks are located; should it be smaller at decode
    time, the kernel refuses the read instead of writing past it."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    reader = ShardReader(corpus.array("s2_10m"))
    if not reader._native:
        pytest.skip("libzstd cannot be linked here")
    (encoded,) = reader.fetch(0, {0: ((0, 1), (0, 4), (0, 40), (0, 40))}).values()
    reader._read_buffer = np.empty(1, np.uint8)
    with pytest.raises(ShardDecodeError, match="short read"):
        encoded.copy_to(np.empty(encoded.shape, dtype=encoded.dtype))


def test_windows_past_the_open_file_cap_reopen_their_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holds at most MAX_OPEN_SHARDS files open for pending windows; the windows
    of later shards reopen their file when decoded, with the same values."""
    monkeypatch.setattr(loader_shard, "MAX_OPEN_SHARDS", 1)
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    arr = corpus.array("s2_10m")
    reader = ShardReader(arr)
    window = ((0, 2), (0, 4), (10, 70), (5, 37))
    pending = [reader.fetch(k, {0: window}) for k in range(len(corpus.shards))]
    assert len(pending) >= 2
    held = [isinstance(p[0].buffer, OpenShard) for p in pending]
    assert held == [True] + [False] * (len(pending) - 1)
    for k, span in enumerate(corpus.shards):
        want = arr[(span.start, *(slice(a, b) for a, b in window))]
        np.testing.assert_array_equal(np.asarray(pending[k][0]), want)


@pytest.mark.parametrize("native", [True, False])
def test_a_corrupt_chunk_names_its_shard_and_chunk(tmp_path: Path, native: bool) -> None:
    """A chunk whose bytes are damaged (its index intact) fails its window's decode with
    the shard file and chunk slot, in the compiled path and in the Python path."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    arr = corpus.array("s2_10m")
    reader = ShardReader(arr, ZstdInto(native=native))
    window = ((0, 1), (0, 4), (0, 64), (0, 64))
    (encoded,) = reader.fetch(0, {0: window}).values()
    shard_file = Path(reader._root_prefix + encoded.path)
    raw = bytearray(shard_file.read_bytes())
    first = int(encoded.positions[0])
    raw[first : first + 8] = b"\xff" * 8  # the first frame's magic number and header
    shard_file.write_bytes(bytes(raw))
    with pytest.raises(ShardDecodeError, match=rf"{encoded.path}: chunk {encoded.plan.flats[0]}"):
        encoded.copy_to(np.empty(encoded.shape, dtype=encoded.dtype))


def _damage_index(raw: bytes, index_bytes: int, how: str) -> bytes:
    """A shard file's bytes with its index damaged one way."""
    data_end = len(raw) - index_bytes
    if how == "too short":
        return raw[: index_bytes - 1]
    if how == "checksum":
        flipped = bytearray(raw)
        flipped[data_end] ^= 0x01
        return bytes(flipped)
    entries = np.frombuffer(raw[data_end:-4], "<u8").reshape(-1, 2).copy()
    assert entries[0, 0] != 2**64 - 1  # the window's first chunk is written
    entries[0, 1] = data_end - entries[0, 0] + 1  # one byte into the index; crc32c valid
    body = entries.tobytes()
    return raw[:data_end] + body + google_crc32c.value(body).to_bytes(4, "little")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("too short", "8195 bytes cannot hold a 512-chunk index"),
        ("checksum", "shard index checksum mismatch"),
        ("past the data", "a chunk ends past the data"),
    ],
)
def test_a_damaged_shard_index_names_the_file_and_the_damage(
    tmp_path: Path, native: bool, how: str, message: str
) -> None:
    """Locating chunks checks the index (compiled and Python paths alike): its size, its
    crc32c and every located chunk's extent, and says which file failed how."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4, chunking=InnerChunking(1, 32))
    reader = ShardReader(corpus.array("s2_10m"), ZstdInto(native=native))
    shard_file = Path(reader._root_prefix + reader._path(0))
    assert reader.layout.n_chunks == 512
    raw = shard_file.read_bytes()
    shard_file.write_bytes(_damage_index(raw, reader.layout.index_bytes, how))
    window = ((0, 2), (0, 4), (0, 64), (0, 64))
    with pytest.raises(ShardDecodeError, match=rf"{shard_file}: {message}"):
        reader.fetch(0, {0: window, 1: window})


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("too short", "19 bytes cannot hold a shard index"),
        ("checksum", "shard index checksum mismatch"),
        ("past the data", "a chunk ends past the data"),
        ("frame", "fails to decode"),
    ],
)
def test_a_damaged_metadata_shard_names_the_file_and_the_damage(
    tmp_path: Path, native: bool, how: str, message: str
) -> None:
    """One-chunk shards (per-sample metadata, read whole in one call) are checked the same
    way, and a damaged frame is reported, not decoded into garbage."""
    path = tmp_path / "corpus.zarr"
    corpus = write_loader_corpus(path, n_samples=4)
    reader = WholeShardReader(corpus.array("period_start"), ZstdInto(native=native))
    assert reader.layout.n_chunks == 1
    shard_file = Path(reader._root_prefix + reader._path(0))
    raw = shard_file.read_bytes()
    if how == "frame":
        damaged = b"\xff" * 8 + raw[8:]  # the frame's magic number and header
    else:
        damaged = _damage_index(raw, reader.layout.index_bytes, how)
    shard_file.write_bytes(damaged)
    with pytest.raises(ShardDecodeError, match=rf"{shard_file}: {message}"):
        reader.read_whole(0)


def test_compiled_crc32c_equals_google_crc32c() -> None:
    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 8, 9, 16, 100, 1540, 12_292):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert shard_kernel.crc32c(data) == google_crc32c.value(data.tobytes()), n


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [("uint16", (0.0, 0.0, 7.0)), ("uint8", (0.0, 0.0, 0.0)), ("float32", (math.nan, -1.5, 0.0))],
)
def test_compiled_pixel_validity_equals_the_numpy_comparison(
    dtype: str, nodata: tuple[float, ...]
) -> None:
    """The compiled pass (contiguous input) and numpy's comparisons (any other layout) agree,
    per band nodata and NaN included, and both clear absent rows."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (3, 2, 3, 9, 9)).astype(dtype)
    for band, value in enumerate(nodata):
        hit = rng.random((3, 2, 9, 9)) < 0.1
        x[:, :, band][hit] = value
    norm = GroupNormalizer("test", "standard", np.zeros(3), np.ones(3), nodata)
    present = np.broadcast_to((rng.random((3, 2)) < 0.7)[..., None, None], (3, 2, 9, 9))
    compiled = norm.pixel_valid(x, present[..., 0, 0])
    fortran = np.asfortranarray(x)  # not C-contiguous: numpy's path
    assert not fortran.flags.c_contiguous
    strided = norm.pixel_valid(fortran, present[..., 0, 0])
    want = present.copy()
    for band, value in enumerate(nodata):
        want &= ~np.isnan(x[:, :, band]) if math.isnan(value) else x[:, :, band] != value
    np.testing.assert_array_equal(compiled, want)
    np.testing.assert_array_equal(strided, want)
    assert 0 < want.sum() < want.size


def test_window_reads_through_a_non_local_store_equal_zarr() -> None:
    """The store path (range requests through zarr's async store API, as on S3) on a
    MemoryStore array with the corpus's codecs, including a never-written shard."""
    import zarr
    from zarr.codecs import ZstdCodec
    from zarr.storage import MemoryStore

    arr = zarr.create_array(
        MemoryStore(),
        shape=(6, 3, 2, 16, 16),
        chunks=(1, 1, 2, 8, 8),
        shards=(2, 3, 2, 16, 16),
        dtype="uint16",
        fill_value=7,
        compressors=(ZstdCodec(level=3),),
    )
    values = np.arange(arr.size, dtype=np.uint16).reshape(arr.shape)
    arr[:4] = values[:4]  # shard 2 (samples 4, 5) stays unwritten
    reader = ShardReader(arr)
    window = ((1, 3), (0, 2), (5, 13), (0, 9))
    for k in range(3):
        got, nbytes = reader.read(k, {0: window, 1: window})
        for local in (0, 1):
            want = arr[(2 * k + local, *(slice(a, b) for a, b in window))]
            np.testing.assert_array_equal(got[local], want)
        assert (nbytes > 0) == (k < 2)
        np.testing.assert_array_equal(read_shard(arr, k), arr[2 * k : 2 * k + 2])
    assert (got[0] == 7).all()
    # a one-chunk shard (per-sample metadata) comes whole, in one request
    meta = zarr.create_array(
        MemoryStore(),
        shape=(5, 3),
        chunks=(2, 3),
        shards=(2, 3),
        dtype="float32",
        fill_value=-1,
        compressors=(ZstdCodec(level=3),),
    )
    meta[:2] = np.arange(6, dtype=np.float32).reshape(2, 3)  # shards 1, 2 stay unwritten
    for k in range(3):
        np.testing.assert_array_equal(read_shard(meta, k), meta[2 * k : 2 * k + 2])
