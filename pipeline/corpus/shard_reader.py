"""Partial shard reads: decode only the inner chunks a sample's window touches.

A loader sample needs a timestep window and a crop, not the whole tile history.
With the corpus's default layout — sharding with the index at the end ([bytes
little-endian, crc32c]) over [bytes little-endian, zstd] inner chunks of
(1, time, band, y, x) — `ShardReader.fetch` reads each shard's index once (one
suffix read) and lists the inner chunks each wanted window touches
(`shard_geometry`); from a remote store (S3, any fsspec URL) it also fetches their
byte ranges, adjacent ones in one request; a local shard file stays open
(`OpenShard`). `EncodedWindow.copy_to` then decodes, when the batch is assembled,
in one compiled call per window (`shard_kernel`): per chunk one positioned read
(local files) into a small reused buffer, one libzstd call (one reused context)
into a small reused scratch that stays in the CPU cache, and one copy of the
needed box straight into the batch's buffer. Without libzstd the same steps run
here in Python through numcodecs.

zarr-python can do the same selection, but its async codec pipeline costs ~2x
the zstd work on a loaded 2-core machine. Any other layout makes
`fast_path_supported` False and the caller uses zarr; any damaged index, short
read or failed chunk raises `ShardDecodeError` so the caller can fall back.
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import zarr
from terracube.pipeline.corpus.shard_format import (
    ShardDecodeError,
    ShardMissingError,
    fast_path_supported,
    index_error,
    locate,
    parse_index,
)
from terracube.pipeline.corpus.shard_geometry import (
    MAX_AXES,
    ShardChunks,
    ShardLayout,
    Window,
    byte_runs,
    shard_chunks,
)
from terracube.pipeline.corpus.shard_kernel import (
    NATIVE,
    SHORT_READ,
    decode_window,
    locate_chunks,
)
from terracube.pipeline.corpus.shard_window import EncodedWindow, LocatedChunks, OpenShard
from terracube.pipeline.corpus.zarr_adapter import (
    RangeByteRequest,
    SuffixByteRequest,
    default_buffer_prototype,
    run_sync,
)
from terracube.pipeline.corpus.zstd_into import ZstdFrameError, ZstdInto
from zarr.storage import LocalStore

COALESCE_GAP = 64 * 1024
"""Byte gap below which two needed chunks are fetched in one range request."""
MAX_OPEN_SHARDS = 64
"""Shard files a reader keeps open for pending windows; past it a window reopens its file
when decoded (a shuffle buffer of thousands of samples must not exhaust descriptors)."""
LOCAL_COALESCE_GAP = 0
"""Local files: only touching chunks share a read; copying a gap costs more than a syscall."""


class ShardReader:
    """Reads windows of one array's samples shard by shard (see the module doc).

    One per array per process: it keeps the array handle, the reused read and block
    buffers and the zstd context.
    """

    def __init__(
        self, arr: zarr.Array, zstd: ZstdInto | None = None, complete: bool = False
    ) -> None:
        if not fast_path_supported(arr):
            raise ValueError(
                f"{arr.path}: not the corpus's default shard layout; read it with zarr"
            )
        self.arr = arr
        assert arr.shards is not None  # fast_path_supported: a sharding codec
        self.layout = ShardLayout(tuple(arr.shards), tuple(arr.chunks))
        self.dtype = np.dtype(arr.dtype)
        self._chunk_nbytes = math.prod(self.layout.chunk_shape) * self.dtype.itemsize
        self._store = arr.store_path.store
        self._prefix = arr.store_path.path
        self._root = Path(self._store.root) if isinstance(self._store, LocalStore) else None
        self._root_prefix = f"{self._root}{os.sep}" if self._root is not None else ""
        """The root as a string: joining strings costs ~1 us, a pathlib join ~15 us."""
        self._zstd = zstd or ZstdInto()
        self._read_buffer = np.empty(0, dtype=np.uint8)
        self._scratch = np.empty(self.layout.chunk_shape[1:], dtype=self.dtype)
        self._read_decoder: tuple[np.ndarray, Callable[[int, int], None]] | None = None
        self._native = self._zstd.native and NATIVE
        """Windows decode in one compiled call (`shard_kernel`), else chunk by chunk here."""
        pad = (1,) * (MAX_AXES + 1 - len(self.layout.chunk_shape))
        self._scratch_bytes = self._scratch.reshape(pad + self._scratch.shape).view(np.uint8)
        self._fill_bytes = np.array(arr.fill_value, dtype=self.dtype).reshape(1).view(np.uint8)
        self._status = np.zeros(2, dtype=np.int64)
        self._index_buffer = np.empty(self.layout.index_bytes, dtype=np.uint8)
        self._held: weakref.WeakSet[OpenShard] = weakref.WeakSet()
        self.complete = complete
        """The store writes complete shards (format 2): a missing shard file or chunk raises
        `ShardMissingError` instead of reading as the fill value."""

    def _require(self, path: str, present: np.ndarray | None) -> None:
        """In a store of complete shards, refuse a missing file (None) or chunk."""
        if not self.complete:
            return
        if present is None:
            raise ShardMissingError(f"{self._root_prefix}{path}: shard file is missing")
        if not present.all():
            raise ShardMissingError(
                f"{self._root_prefix}{path}: {int((~present).sum())} inner chunk(s) missing"
            )

    # ------------------------------------------------------------------ bytes
    def _path(self, shard: int) -> str:
        key = self.arr.metadata.encode_chunk_key((shard, *([0] * (len(self.layout.grid) - 1))))
        return f"{self._prefix}/{key}" if self._prefix else key

    def _local_index(self, file: str, fd: int) -> tuple[np.ndarray, int]:
        size = os.fstat(fd).st_size
        data_end = size - self.layout.index_bytes
        if data_end < 0:
            raise ShardDecodeError(
                f"{file}: {size} bytes cannot hold a {self.layout.n_chunks}-chunk index"
            )
        return parse_index(
            file, os.pread(fd, self.layout.index_bytes, data_end), self.layout
        ), data_end

    def _locate_local(self, path: str, chunks: ShardChunks) -> LocatedChunks:
        """`_fetch` of a local shard's windows, compiled (`locate_chunks`): open the file
        (held open for decoding), read and check its index, locate every chunk."""
        file = self._root_prefix + path
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            return self._located(path, chunks, None)
        held = None
        if len(self._held) < MAX_OPEN_SHARDS:
            held = OpenShard(fd)  # closes fd when its windows are gone
            self._held.add(held)
        status = self._status
        try:
            found = locate_chunks(fd, self._index_buffer, chunks.flats, chunks.bounds, status)
        finally:
            if held is None:
                os.close(fd)
        if status[0]:
            raise ShardDecodeError(
                f"{file}: {index_error(int(status[0]), int(status[1]), self.layout)}"
            )
        present, offsets, sizes, written, largest = found
        self._require(path, present)
        self._reused(largest)  # decoding reads each chunk into the reused buffer
        return LocatedChunks(self, path, chunks, present, offsets, sizes, written, held)

    def _reused(self, nbytes: int) -> np.ndarray:
        """The reused read buffer, grown when needed (fresh memory faults in page by page)."""
        if self._read_buffer.nbytes < nbytes:
            self._read_buffer = np.empty(max(nbytes, 2 * self._read_buffer.nbytes), np.uint8)
        return self._read_buffer

    def _read_local(
        self, fd: int, file: str, offsets: np.ndarray, sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chunks at (offsets, sizes) of an open file: (buffer, their positions in it). One
        positioned read per run of touching chunks, none of zarr's event-loop and thread
        hops (milliseconds per call on a busy machine, more than a chunk's decode). Reads,
        not a memory map: decoding from freshly copied bytes is faster than faulting in
        mapped pages chunk by chunk."""
        run_starts, run_stops, positions = byte_runs(offsets, sizes, LOCAL_COALESCE_GAP)
        lengths = run_stops - run_starts
        total = int(lengths.sum())
        buffer = self._reused(total)
        view, at = buffer.data, 0  # memoryview(buffer); numpy types __buffer__ from 3.12 only
        for start, length in zip(run_starts.tolist(), lengths.tolist(), strict=True):
            if os.preadv(fd, [view[at : at + length]], start) != length:
                raise ShardDecodeError(f"{file}: short read at byte {start}")
            at += length
        return buffer, positions

    async def _fetch_store(
        self, path: str, flats: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Any zarr store (S3, fsspec): the index, then the runs of needed chunks (gaps up
        to COALESCE_GAP included) in concurrent range requests, into a buffer of its own:
        (buffer, written mask, positions, sizes), or None for a never-written shard."""
        proto = default_buffer_prototype()
        tail = await self._store.get(
            path, prototype=proto, byte_range=SuffixByteRequest(self.layout.index_bytes)
        )
        if tail is None:
            return None
        index = parse_index(path, tail.to_bytes(), self.layout)
        present, offsets, sizes = locate(path, index, flats, None)
        run_starts, run_stops, positions = byte_runs(offsets, sizes, COALESCE_GAP)
        parts = await asyncio.gather(
            *(
                self._store.get(path, prototype=proto, byte_range=RangeByteRequest(a, b))
                for a, b in zip(run_starts.tolist(), run_stops.tolist(), strict=True)
            )
        )
        buffer = np.empty(int((run_stops - run_starts).sum()), np.uint8)
        at = 0
        for a, b, part in zip(run_starts.tolist(), run_stops.tolist(), parts, strict=True):
            data = b"" if part is None else part.to_bytes()
            if len(data) != b - a:
                raise ShardDecodeError(f"{path}: bytes {a}..{b} asked, {len(data)} came back")
            buffer[at : at + len(data)] = np.frombuffer(data, dtype=np.uint8)
            at += len(data)
        return buffer, present, positions, sizes

    def _fetch(
        self, path: str, flats: np.ndarray, read_now: bool
    ) -> tuple[np.ndarray | OpenShard | None, np.ndarray, np.ndarray, np.ndarray] | None:
        """(buffer, written mask, positions, sizes) of chunks `flats`, or None for a shard
        never written. From a local file with `read_now` False only the index is read (the
        buffer is an `OpenShard` holding the file open, or None past MAX_OPEN_SHARDS;
        positions are file offsets), else the chunks are read into the reused buffer."""
        if self._root is None:
            return run_sync(self._fetch_store(path, flats))
        file = self._root_prefix + path
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            return None
        held = None
        if not read_now and len(self._held) < MAX_OPEN_SHARDS:
            held = OpenShard(fd)  # closes fd when its windows are gone
            self._held.add(held)
        try:
            index, data_end = self._local_index(file, fd)
            present, offsets, sizes = locate(file, index, flats, data_end)
            if not read_now:
                if len(sizes):  # decoding reads each chunk into the reused buffer
                    self._reused(int(sizes.max()))
                return held, present, offsets, sizes
            buffer, positions = self._read_local(fd, file, offsets, sizes)
            return buffer, present, positions, sizes
        finally:
            if held is None:
                os.close(fd)

    def fetch(self, shard: int, windows: Mapping[int, Window]) -> dict[int, EncodedWindow]:
        """{local sample: its window's chunks, located} of shard `shard`: one index read for
        all the windows, and (remote stores) the chunk bytes in coalesced range requests.
        Local chunks are read when decoded (see `EncodedWindow`)."""
        if not windows:
            return {}
        path, chunks = self._plan(shard, windows)
        if self._root is not None and self._native:
            located = self._locate_local(path, chunks)
        else:
            located = self._located(path, chunks, self._fetch(path, chunks.flats, False))
        return {local: EncodedWindow(located, w) for w, local in enumerate(windows)}

    def _plan(self, shard: int, windows: Mapping[int, Window]) -> tuple[str, ShardChunks]:
        """Shard path, and the chunks of every window in the mapping's order."""
        return self._path(shard), shard_chunks(self.layout, list(windows), list(windows.values()))

    async def fetch_async(
        self, shard: int, windows: Mapping[int, Window]
    ) -> dict[int, EncodedWindow]:
        """`fetch` of a remote shard as a coroutine on zarr's event loop, so that the loader
        can await every group and metadata array of a shard in one concurrent wave, ahead
        of use. Nothing here decodes: that stays on the caller's thread."""
        if self._root is not None:
            raise ValueError(f"{self.arr.path}: a local array is read with fetch()")
        if not windows:
            return {}
        path, chunks = self._plan(shard, windows)
        located = self._located(path, chunks, await self._fetch_store(path, chunks.flats))
        return {local: EncodedWindow(located, w) for w, local in enumerate(windows)}

    def _located(
        self,
        path: str,
        chunks: ShardChunks,
        fetched: tuple[np.ndarray | OpenShard | None, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> LocatedChunks:
        self._require(path, None if fetched is None else fetched[1])
        if fetched is None:
            buffer, present = None, np.zeros(len(chunks.flats), dtype=bool)
            positions = sizes = np.zeros(0, dtype=np.int64)
        else:
            buffer, present, positions, sizes = fetched
        written = np.zeros(len(present) + 1, dtype=np.int64)
        np.cumsum(present, out=written[1:])
        return LocatedChunks(
            self, path, chunks, present, positions, sizes, written[chunks.bounds], buffer
        )

    def _decode_rows(
        self,
        path: str,
        flats: np.ndarray,
        present: np.ndarray,
        source: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        blocks: np.ndarray,
    ) -> int:
        """Fill `blocks` (one row per chunk of `flats`): the fill value where never written,
        else the decoded chunk from source (buffer, positions, sizes); bytes decoded."""
        rows = None
        if not present.all():
            blocks[~present] = self.arr.fill_value
            rows = np.flatnonzero(present)
        if source is None or len(source[1]) == 0:
            return 0
        buffer, positions, sizes = source
        try:
            self._zstd.decode_rows(buffer, positions, sizes, blocks, rows)
        except ZstdFrameError as exc:
            position = exc.position if rows is None else int(rows[exc.position])
            chunk = int(flats[position])
            raise ShardDecodeError(f"{path}: chunk {chunk} fails to decode: {exc}") from exc
        return len(sizes) * self._chunk_nbytes

    def decode_into(self, window: EncodedWindow, out: np.ndarray) -> int:
        """Decode a fetched window into `out` (its shape), chunk by chunk; bytes decoded.
        Compiled (`shard_kernel`) where libzstd links, else the same steps in Python."""
        located, w = window.located, window.w
        if out.shape != window.shape:
            raise ValueError(f"window {window.shape} does not fit an output of {out.shape}")
        count = int(located.written[w + 1] - located.written[w])
        buffer = located.buffer
        if isinstance(buffer, np.ndarray):
            source, fd = buffer, -1
        else:  # local: read each chunk from the shard file, held open since its index read
            source = self._read_buffer  # sized for every located chunk (it only grows)
            if buffer is None and count:  # more shards pending than MAX_OPEN_SHARDS
                buffer = self._open(self._root_prefix + located.path, located.path)
            fd = buffer.fd if buffer is not None else -1
        if self._native and out.flags.c_contiguous:
            self._decode_compiled(located, w, fd, source, out)
        else:
            self._decode_python(window, fd, source, out)
        return count * self._chunk_nbytes

    def _open(self, file: str, path: str) -> OpenShard:
        try:
            return OpenShard(os.open(file, os.O_RDONLY))
        except FileNotFoundError as exc:
            raise ShardDecodeError(f"{path}: gone since its index was read") from exc

    def _decode_compiled(
        self, located: LocatedChunks, w: int, fd: int, source: np.ndarray, out: np.ndarray
    ) -> None:
        chunks, status = located.chunks, self._status
        pad = (1,) * (MAX_AXES - out.ndim)
        failed = decode_window(
            self._zstd._context(),
            fd,
            source,
            located.positions,
            located.sizes,
            located.present,
            chunks.piece_start,
            chunks.piece_stop,
            chunks.target_start,
            chunks.bounds[w],
            chunks.bounds[w + 1],
            located.written[w],
            self.dtype.itemsize,
            self._scratch_bytes,
            out.reshape(pad + out.shape).view(np.uint8),
            self._fill_bytes,
            status,
        )
        if failed < 0:
            return
        code, detail = int(status[0]), int(status[1])
        chunk = int(chunks.flats[failed])
        if code == SHORT_READ:
            raise ShardDecodeError(f"{located.path}: chunk {chunk}: short read ({detail} bytes)")
        reason = self._zstd.describe(detail % 2**64, self._chunk_nbytes)
        raise ShardDecodeError(f"{located.path}: chunk {chunk}: {reason}")

    def _decode_python(
        self, window: EncodedWindow, fd: int, source: np.ndarray, out: np.ndarray
    ) -> None:
        plan, scratch = window.plan, self._scratch
        present, fill = window.present.tolist(), self.arr.fill_value
        positions, sizes = window.positions.tolist(), window.sizes.tolist()
        view = source.data  # memoryview(source); numpy types __buffer__ from 3.12 only
        if source is self._read_buffer:  # the reused buffer: its decoder is reused too
            if self._read_decoder is None or self._read_decoder[0] is not source:
                self._read_decoder = (source, self._zstd.frame_decoder(source, scratch))
            decode = self._read_decoder[1]
        else:
            decode = self._zstd.frame_decoder(source, scratch)
        j = 0
        for k, ((piece, target), written) in enumerate(zip(plan.copies, present, strict=True)):
            if not written:
                out[target] = fill
                continue
            at, size = positions[j], sizes[j]
            if fd >= 0:
                if os.preadv(fd, [view[:size]], at) != size:
                    raise ShardDecodeError(f"{window.path}: short read at byte {at}")
                at = 0
            try:
                decode(at, size)
            except ZstdFrameError as exc:
                chunk = int(plan.flats[k])
                raise ShardDecodeError(f"{window.path}: chunk {chunk}: {exc}") from exc
            out[target] = scratch[piece]
            j += 1

    def read(self, shard: int, windows: Mapping[int, Window]) -> tuple[dict[int, np.ndarray], int]:
        """{local sample: its window's values} of shard `shard`, and the bytes decoded."""
        out, decoded = {}, 0
        for local, window in self.fetch(shard, windows).items():
            out[local] = np.empty(window.shape, dtype=self.dtype)
            decoded += window.copy_to(out[local])
        return out, decoded

    @property
    def local(self) -> bool:
        """Reads a local directory (positioned reads) rather than through zarr's store API."""
        return self._root is not None
