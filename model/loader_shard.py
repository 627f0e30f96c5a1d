"""Partial shard reads: decode only the inner chunks a sample's window touches.

A loader sample needs a timestep window and a crop, not the whole tile history.
With the corpus's default layout — sharding with the index at the end ([bytes
little-endian, crc32c]) over [bytes little-endian, zstd] inner chunks of
(1, time, band, y, x) — `ShardReader` fetches the shard index with one suffix
read, then only the byte ranges of the needed inner chunks (adjacent ones
coalesced into one request), through the array's own store (local, S3, any
fsspec URL). Each chunk is zstd-decoded into a reused scratch buffer (a fresh
512 KiB allocation per chunk costs page faults comparable to the decode itself)
and only its intersection with the window is copied out.

zarr-python can do the same selection, but its async codec pipeline costs ~2x
the zstd work on a loaded 2-core machine. Any other layout makes
`fast_path_supported` False and the caller uses zarr; any damaged index, short
read or failed chunk raises `ShardDecodeError` so the caller can fall back.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import google_crc32c
import numcodecs
import numpy as np
import zarr
from terracube.model.loader_plan import Window
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

_EMPTY = 2**64 - 1
_ZSTD = numcodecs.Zstd()
COALESCE_GAP = 64 * 1024
"""Byte gap below which two needed chunks are fetched in one range request."""
LOCAL_COALESCE_GAP = 0
"""Local files: only touching chunks share a read; copying a gap costs more than a syscall."""


class ShardDecodeError(ValueError):
    """A shard object is missing bytes or fails its index checksum or a chunk decode."""


def _little(codec: object) -> bool:
    """Little-endian bytes (endian None: single-byte dtypes, where order does not apply)."""
    return isinstance(codec, BytesCodec) and (
        codec.endian is None or codec.endian.value == "little"
    )


def fast_path_supported(arr: zarr.Array) -> bool:
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    shard = codecs[0]
    inner, index = shard.codecs, shard.index_codecs
    return (
        shard.index_location == ShardingCodecIndexLocation.end
        and len(inner) == 2
        and _little(inner[0])
        and isinstance(inner[1], ZstdCodec)
        and len(index) == 2
        and _little(index[0])
        and isinstance(index[1], Crc32cCodec)
        and np.dtype(arr.dtype).kind in "uif"
    )


@dataclass(frozen=True)
class ShardLayout:
    """Geometry of one array's shards; pure, so chunk selection is testable without a store."""

    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]

    @cached_property
    def grid(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape, strict=True))

    @cached_property
    def strides(self) -> tuple[int, ...]:
        """C-order strides of the chunk grid: a chunk's position -> its slot in the index."""
        return tuple(math.prod(self.grid[i + 1 :]) for i in range(len(self.grid)))

    @cached_property
    def n_chunks(self) -> int:
        return math.prod(self.grid)

    @property
    def index_bytes(self) -> int:
        """Index size at the end of a shard: (offset, nbytes) uint64 per chunk + crc32c."""
        return 16 * self.n_chunks + 4

    def full_window(self) -> Window:
        return tuple((0, s) for s in self.shard_shape[1:])


class ChunkHit(NamedTuple):
    """One inner chunk a window touches, and where its piece goes (a tuple: the loader
    makes tens of these per sample, and a frozen dataclass costs 2 us each to build)."""

    flat: int
    """C-order position in the shard index."""
    source: tuple[slice, ...]
    """Piece of the decoded chunk (axes after the sample axis)."""
    target: tuple[slice, ...]
    """Where that piece lands in the window's output array."""


def chunk_hits(layout: ShardLayout, local: int, window: Window) -> list[ChunkHit]:
    """The inner chunks sample `local` (position in its shard) needs for `window`."""
    if layout.chunk_shape[0] != 1:
        raise ValueError(f"inner chunks {layout.chunk_shape} hold several samples; read whole")
    inner = layout.chunk_shape[1:]
    if len(window) != len(inner):
        raise ValueError(f"window {window} has {len(window)} axes; the array has {len(inner)}")
    for (start, stop), extent in zip(window, layout.shard_shape[1:], strict=True):
        if not 0 <= start < stop <= extent:
            raise ValueError(f"window {window} leaves the shard's extent {layout.shard_shape[1:]}")
    # per axis: (index offset, source slice, target slice) of every chunk the window touches
    axes = []
    for (start, stop), c, stride in zip(window, inner, layout.strides[1:], strict=True):
        pieces = []
        for p in range(start // c, (stop - 1) // c + 1):
            lo, hi = max(start, p * c), min(stop, (p + 1) * c)
            pieces.append(
                (p * stride, slice(lo - p * c, hi - p * c), slice(lo - start, hi - start))
            )
        axes.append(pieces)
    base = local * layout.strides[0]
    return [
        ChunkHit(
            base + sum(piece[0] for piece in combo),
            tuple(piece[1] for piece in combo),
            tuple(piece[2] for piece in combo),
        )
        for combo in itertools.product(*axes)
    ]


def coalesce(spans: Sequence[tuple[int, int]], gap: int = COALESCE_GAP) -> list[tuple[int, int]]:
    """Merge sorted (start, stop) byte spans whose gap is below `gap` into fewer requests."""
    runs: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if runs and start - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], max(runs[-1][1], stop))
        else:
            runs.append((start, stop))
    return runs


class ShardReader:
    """Reads windows of one array's samples shard by shard (see the module doc).

    One per array per process: it keeps the array handle and the scratch buffer.
    """

    def __init__(self, arr: zarr.Array) -> None:
        if not fast_path_supported(arr):
            raise ValueError(
                f"{arr.path}: not the corpus's default shard layout; read it with zarr"
            )
        self.arr = arr
        self.layout = ShardLayout(tuple(arr.shards), tuple(arr.chunks))
        self.dtype = np.dtype(arr.dtype)
        self._scratch = np.empty(self.layout.chunk_shape[1:], dtype=self.dtype)
        self._store = arr.store_path.store
        self._prefix = arr.store_path.path

    def _path(self, shard: int) -> str:
        key = self.arr.metadata.encode_chunk_key((shard, *([0] * (len(self.layout.grid) - 1))))
        return f"{self._prefix}/{key}" if self._prefix else key

    def _fetch(
        self, path: str, needed: set[int]
    ) -> tuple[np.ndarray | None, list[tuple[int, Any]]]:
        """The shard index and the coalesced byte runs holding the `needed` chunks."""
        if isinstance(self._store, LocalStore):
            return self._fetch_local(Path(self._store.root) / path, needed)
        return sync(self._fetch_store(path, needed))

    def _fetch_local(
        self, file: Path, needed: set[int]
    ) -> tuple[np.ndarray | None, list[tuple[int, Any]]]:
        """The same bytes with positioned reads of a local file: the index, then one read per
        coalesced run of needed chunks, none of zarr's event-loop and thread hops
        (milliseconds per call on a busy machine, more than a chunk's decode). Reads, not a
        memory map: decoding from freshly copied bytes is faster than faulting in mapped
        pages chunk by chunk."""
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            return None, []
        try:
            size = os.fstat(fd).st_size
            data_end = size - self.layout.index_bytes
            if data_end < 0:
                raise ShardDecodeError(
                    f"{file}: {size} bytes cannot hold a {self.layout.n_chunks}-chunk index"
                )
            index = self._parse_index(str(file), os.pread(fd, self.layout.index_bytes, data_end))
            runs = coalesce(self._spans(index, needed), gap=LOCAL_COALESCE_GAP)
            if runs and runs[-1][1] > data_end:
                raise ShardDecodeError(f"{file}: a chunk ends past the data, before the index")
            return index, [(a, os.pread(fd, b - a, a)) for a, b in runs]
        finally:
            os.close(fd)

    def _parse_index(self, path: str, raw: bytes) -> np.ndarray:
        if len(raw) != self.layout.index_bytes:
            raise ShardDecodeError(
                f"{path}: {len(raw)} bytes cannot hold a {self.layout.n_chunks}-chunk index"
            )
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise ShardDecodeError(f"{path}: shard index checksum mismatch (truncated or corrupt)")
        return np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)

    @staticmethod
    def _spans(index: np.ndarray, needed: set[int]) -> list[tuple[int, int]]:
        rows = index[np.fromiter(needed, dtype=np.int64, count=len(needed))]
        rows = rows[rows[:, 0] != _EMPTY]
        return list(zip(rows[:, 0].tolist(), (rows[:, 0] + rows[:, 1]).tolist(), strict=True))

    async def _fetch_store(
        self, path: str, needed: set[int]
    ) -> tuple[np.ndarray | None, list[tuple[int, Any]]]:
        proto = default_buffer_prototype()
        tail = await self._store.get(
            path, prototype=proto, byte_range=SuffixByteRequest(self.layout.index_bytes)
        )
        if tail is None:
            return None, []
        index = self._parse_index(path, tail.to_bytes())
        runs = coalesce(self._spans(index, needed))
        parts = await asyncio.gather(
            *(
                self._store.get(path, prototype=proto, byte_range=RangeByteRequest(a, b))
                for a, b in runs
            )
        )
        fetched = []
        for (a, b), part in zip(runs, parts, strict=True):
            data = b"" if part is None else part.to_bytes()
            if len(data) != b - a:
                raise ShardDecodeError(f"{path}: bytes {a}..{b} asked, {len(data)} came back")
            fetched.append((a, data))
        return index, fetched

    def read(self, shard: int, windows: Mapping[int, Window]) -> tuple[dict[int, np.ndarray], int]:
        """{local sample: its window's values} of shard `shard`, and the bytes decoded."""
        hits = {local: chunk_hits(self.layout, local, w) for local, w in windows.items()}
        needed = {h.flat for hs in hits.values() for h in hs}
        path = self._path(shard)
        index, runs = self._fetch(path, needed)
        out = {
            local: np.empty(tuple(b - a for a, b in w), dtype=self.dtype)
            for local, w in windows.items()
        }
        if index is None:  # never written: every value is the fill
            for arr in out.values():
                arr.fill(self.arr.fill_value)
            return out, 0
        entries = index.tolist()  # Python ints: per-chunk numpy scalar access costs more
        starts = [a for a, _ in runs]
        views = [memoryview(data) for _, data in runs]
        decode, scratch, decoded = _ZSTD.decode, self._scratch, 0
        for local, chunk_list in hits.items():
            target_array = out[local]
            for flat, source, target in chunk_list:
                offset, nbytes = entries[flat]
                if offset == _EMPTY:
                    target_array[target] = self.arr.fill_value
                    continue
                run = 0 if len(starts) == 1 else bisect.bisect_right(starts, offset) - 1
                begin = offset - starts[run]
                try:
                    decode(views[run][begin : begin + nbytes], out=scratch)
                except Exception as exc:
                    raise ShardDecodeError(f"{path}: chunk {flat} fails to decode: {exc}") from exc
                decoded += scratch.nbytes
                target_array[target] = scratch[source]
        return out, decoded

    def read_whole(self, shard: int) -> np.ndarray:
        """Every chunk of shard `shard`, trimmed to the array's extent (any inner chunking)."""
        layout = self.layout
        path = self._path(shard)
        index, runs = self._fetch(path, set(range(layout.n_chunks)))
        out = np.full(layout.shard_shape, self.arr.fill_value, dtype=self.dtype)
        if index is not None:
            starts = [a for a, _ in runs]
            for flat, (offset, nbytes) in enumerate(index):
                if offset == _EMPTY:
                    continue
                base, data = runs[int(np.searchsorted(starts, offset, side="right")) - 1]
                view = memoryview(data)[offset - base : offset - base + nbytes]
                position = np.unravel_index(flat, layout.grid)
                sel = tuple(
                    slice(p * c, (p + 1) * c)
                    for p, c in zip(position, layout.chunk_shape, strict=True)
                )
                try:
                    out[sel] = np.frombuffer(_ZSTD.decode(view), self.dtype).reshape(
                        layout.chunk_shape
                    )
                except Exception as exc:
                    raise ShardDecodeError(f"{path}: chunk {flat} fails to decode: {exc}") from exc
        stop = min(layout.shard_shape[0], self.arr.shape[0] - shard * layout.shard_shape[0])
        return out[:stop]


def read_shard(arr: zarr.Array, shard: int) -> np.ndarray:
    """Shard `shard` along axis 0 (other axes whole), trimmed to the array's extent."""
    return ShardReader(arr).read_whole(shard)
