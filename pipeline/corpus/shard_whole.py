"""Whole-shard reads of the small per-sample arrays (valid fractions, period starts).

The loader needs every sample of such a shard at once, and most are one inner chunk:
a local one is read with one `pread` and decoded in one compiled call
(`read_lone_chunk`); a remote one is fetched with the shard's windows in one wave
(`fetch_whole_async`, then `whole_from`). Same format checks as the window reads
(`shard_format`), so a damaged shard fails the same way.
"""

from __future__ import annotations

import math
import os

import numpy as np
import zarr
from terracube.pipeline.corpus.shard_format import (
    ShardDecodeError,
    fast_path_supported,
    index_error,
    locate,
    parse_index,
)
from terracube.pipeline.corpus.shard_kernel import NO_INDEX, WRONG_SIZE, ZSTD_ERROR, read_lone_chunk
from terracube.pipeline.corpus.shard_reader import ShardReader
from terracube.pipeline.corpus.shard_window import OpenShard
from terracube.pipeline.corpus.zarr_adapter import default_buffer_prototype, run_sync
from terracube.pipeline.corpus.zstd_into import ZstdFrameError, ZstdInto

WHOLE_READ_BYTES = 64 * 1024
"""A local one-chunk shard up to this size is read with one call."""
_FIRST = np.zeros(1, dtype=np.int64)
"""The one inner chunk of a one-chunk shard."""


class WholeShardReader(ShardReader):
    """A `ShardReader` that also reads whole shards of a per-sample array."""

    def __init__(
        self, arr: zarr.Array, zstd: ZstdInto | None = None, complete: bool = False
    ) -> None:
        super().__init__(arr, zstd, complete)
        self._lone_raw: np.ndarray | None = None
        """One-chunk shards' whole-file reads (`read_lone_chunk`); allocated on first use."""

    def read_whole(self, shard: int) -> np.ndarray:
        """Every chunk of shard `shard`, trimmed to the array's extent (any inner chunking)."""
        layout = self.layout
        path = self._path(shard)
        if self._root is None:
            return self._whole_from(shard, path, run_sync(self.fetch_whole_async(shard)))
        if layout.n_chunks == 1:
            single = self._read_single_chunk_local(path)
            if single is not None:
                return single[: self._shard_stop(shard)]
        flats = np.arange(layout.n_chunks, dtype=np.int64)
        return self._whole_from(shard, path, self._fetch(path, flats, read_now=True))

    async def fetch_whole_async(
        self, shard: int
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray] | None:
        """The bytes of every chunk of a remote shard, fetched but not decoded (decoding
        stays on the thread that owns the zstd context); `whole_from` finishes the read.
        A one-chunk shard (per-sample metadata) comes in one request for the whole object
        instead of an index request and a range request."""
        path = self._path(shard)
        flats = np.arange(self.layout.n_chunks, dtype=np.int64)
        if self.layout.n_chunks != 1:
            return await self._fetch_store(path, flats)
        whole = await self._store.get(path, prototype=default_buffer_prototype())
        if whole is None:
            return None
        raw = whole.to_bytes()
        data_end = len(raw) - self.layout.index_bytes
        if data_end < 0:
            raise ShardDecodeError(f"{path}: {len(raw)} bytes cannot hold a shard index")
        index = parse_index(path, raw[data_end:], self.layout)
        present, offsets, sizes = locate(path, index, flats, data_end)
        return np.frombuffer(raw, dtype=np.uint8), present, offsets, sizes

    def whole_from(
        self,
        shard: int,
        fetched: tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        """`read_whole` of shard `shard` from what `fetch_whole_async` returned."""
        return self._whole_from(shard, self._path(shard), fetched)

    def _shard_stop(self, shard: int) -> int:
        rows = self.layout.shard_shape[0]
        return min(rows, self.arr.shape[0] - shard * rows)

    def _whole_from(
        self,
        shard: int,
        path: str,
        fetched: tuple[np.ndarray | OpenShard | None, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        layout = self.layout
        flats = np.arange(layout.n_chunks, dtype=np.int64)
        blocks = np.empty((layout.n_chunks, *layout.chunk_shape), dtype=self.dtype)
        if fetched is None:
            self._require(path, None)
        else:  # the last shard of an array has no chunks past its extent: not damage
            rows = -(-self._shard_stop(shard) // layout.chunk_shape[0])
            inside = flats // max(1, math.prod(layout.grid[1:])) < rows
            self._require(path, fetched[1][inside])
        if fetched is None:
            blocks.fill(self.arr.fill_value)
        else:
            buffer, present, positions, sizes = fetched
            assert isinstance(buffer, np.ndarray)  # fetched with the bytes (read_now=True)
            self._decode_rows(path, flats, present, (buffer, positions, sizes), blocks)
        dims = len(layout.grid)
        interleave = [a for i in range(dims) for a in (i, dims + i)]
        out = blocks.reshape(*layout.grid, *layout.chunk_shape).transpose(interleave)
        return out.reshape(layout.shard_shape)[: self._shard_stop(shard)]

    def _read_single_chunk_local(self, path: str) -> np.ndarray | None:
        """A local shard of one inner chunk (per-sample metadata: a few hundred bytes) in
        one read of the whole file and one decode; None when it is large (then the general
        path reads it). Spelled out because numpy calls cost more here than the I/O."""
        file = self._root_prefix + path
        out = np.empty(self.layout.chunk_shape, dtype=self.dtype)
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            self._require(path, None)
            out.fill(self.arr.fill_value)
            return out
        if self._native:
            return self._read_lone_compiled(file, fd, out)
        try:
            raw = os.pread(fd, WHOLE_READ_BYTES + 1, 0)  # the whole file when it is small
        finally:
            os.close(fd)
        size = len(raw)
        if size > WHOLE_READ_BYTES:
            return None
        data_end = size - self.layout.index_bytes
        if data_end < 0:
            raise ShardDecodeError(f"{file}: {size} bytes cannot hold a shard index")
        index = parse_index(file, raw[data_end:], self.layout)  # one entry and its crc32c
        present, offsets, sizes = locate(file, index, _FIRST, data_end)
        self._require(path, present)
        if not present[0]:
            out.fill(self.arr.fill_value)
            return out
        offset, nbytes = int(offsets[0]), int(sizes[0])
        try:
            self._zstd.decode_frame(raw, offset, nbytes, out)
        except ZstdFrameError as exc:
            raise ShardDecodeError(f"{file}: fails to decode: {exc}") from exc
        return out

    def _read_lone_compiled(self, file: str, fd: int, out: np.ndarray) -> np.ndarray | None:
        """`_read_single_chunk_local` in one compiled call (`read_lone_chunk`); closes fd."""
        if self._lone_raw is None:
            self._lone_raw = np.empty(WHOLE_READ_BYTES + 1, dtype=np.uint8)
        status = self._status
        try:
            done = read_lone_chunk(
                self._zstd._context(), fd, self._lone_raw, out.reshape(-1).view(np.uint8), status
            )
        finally:
            os.close(fd)
        if done == 1:
            return out
        if done == 0:
            self._require(file.removeprefix(self._root_prefix), np.zeros(1, dtype=bool))
            out.fill(self.arr.fill_value)
            return out
        if done == -1:
            return None
        code, detail = int(status[0]), int(status[1])
        if code == NO_INDEX:
            raise ShardDecodeError(f"{file}: {detail} bytes cannot hold a shard index")
        if code in (ZSTD_ERROR, WRONG_SIZE):
            reason = self._zstd.describe(detail % 2**64, out.nbytes)
            raise ShardDecodeError(f"{file}: fails to decode: frame 0: {reason}")
        raise ShardDecodeError(f"{file}: {index_error(code, detail, self.layout)}")


def read_shard(arr: zarr.Array, shard: int) -> np.ndarray:
    """Shard `shard` along axis 0 (other axes whole), trimmed to the array's extent."""
    return WholeShardReader(arr).read_whole(shard)


def read_array(arr: zarr.Array) -> np.ndarray:
    """The whole of a small per-sample array (states, valid fractions, period starts).

    Local arrays of the corpus layout are read shard by shard through the compiled
    whole-shard path: one `pread` and one decode per shard file, where zarr's selection
    of the same array spends ~1 ms of Python per shard (status and resume read a dozen
    such arrays of every shard). Anything else is zarr's own read. A missing shard file
    reads as the fill value either way (that it is missing is `integrity`'s to say); an
    undecodable one raises."""
    if not fast_path_supported(arr) or arr.ndim == 0:
        return np.asarray(arr[...])
    reader = WholeShardReader(arr)
    if not reader.local:
        return np.asarray(arr[...])
    rows = reader.layout.shard_shape[0]
    out = np.empty(arr.shape, dtype=arr.dtype)
    for k in range(-(-arr.shape[0] // rows)):
        out[k * rows : (k + 1) * rows] = reader.read_whole(k)
    return out
