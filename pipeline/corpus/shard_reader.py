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
from typing import Any

import google_crc32c
import numpy as np
import zarr
from terracube.pipeline.corpus.shard_geometry import (
    MAX_AXES,
    ShardChunks,
    ShardLayout,
    Window,
    WindowChunks,
    byte_runs,
    shard_chunks,
)
from terracube.pipeline.corpus.shard_kernel import (
    BAD_CHECKSUM,
    NATIVE,
    NO_INDEX,
    PAST_DATA,
    SHORT_READ,
    WRONG_SIZE,
    ZSTD_ERROR,
    decode_window,
    locate_chunks,
    read_lone_chunk,
)
from terracube.pipeline.corpus.zarr_adapter import (
    RangeByteRequest,
    SuffixByteRequest,
    codec_name,
    default_buffer_prototype,
    run_sync,
)
from terracube.pipeline.corpus.zstd_into import ZstdFrameError, ZstdInto
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore

_EMPTY = 2**64 - 1
COALESCE_GAP = 64 * 1024
"""Byte gap below which two needed chunks are fetched in one range request."""
WHOLE_READ_BYTES = 64 * 1024
"""A local one-chunk shard up to this size is read with one call."""
MAX_OPEN_SHARDS = 64
"""Shard files a reader keeps open for pending windows; past it a window reopens its file
when decoded (a shuffle buffer of thousands of samples must not exhaust descriptors)."""
LOCAL_COALESCE_GAP = 0
"""Local files: only touching chunks share a read; copying a gap costs more than a syscall."""


class ShardDecodeError(ValueError):
    """A shard object is missing bytes or fails its index checksum or a chunk decode."""


def _little(codec: object) -> bool:
    """Little-endian bytes (endian None: single-byte dtypes, where order does not apply)."""
    return isinstance(codec, BytesCodec) and codec_name(codec.endian) in (None, "little")


def fast_path_supported(arr: zarr.Array) -> bool:
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    shard = codecs[0]
    inner, index = shard.codecs, shard.index_codecs
    return (
        codec_name(shard.index_location) == "end"
        and len(inner) == 2
        and _little(inner[0])
        and isinstance(inner[1], ZstdCodec)
        and len(index) == 2
        and _little(index[0])
        and isinstance(index[1], Crc32cCodec)
        and np.dtype(arr.dtype).kind in "uif"
    )


class OpenShard:
    """A local shard file held open from its index read until its windows are decoded: one
    open per shard instead of one per window, and every window reads the very file whose
    index located its chunks. Closed when the last window referring to it is gone."""

    __slots__ = ("__weakref__", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:  # cheaper than a weakref.finalize per shard
        os.close(self.fd)


class LocatedChunks:
    """The chunks that several windows of one shard need, located by one index read: what
    each window's `EncodedWindow` refers to (nothing is cut per window until it is used).
    A plain slotted class: one is made per shard and array, where a dataclass costs more."""

    __slots__ = ("buffer", "chunks", "path", "positions", "present", "reader", "sizes", "written")

    def __init__(
        self,
        reader: ShardReader,
        path: str,
        chunks: ShardChunks,
        present: np.ndarray,
        positions: np.ndarray,
        sizes: np.ndarray,
        written: np.ndarray,
        buffer: np.ndarray | OpenShard | None,
    ) -> None:
        self.reader, self.path, self.chunks = reader, path, chunks
        self.present = present
        """bool per chunk of `chunks.flats`: written (else the fill value)."""
        self.positions, self.sizes = positions, sizes
        """Per written chunk: where its bytes start — in `buffer`, or in the open local file
        when `buffer` is an `OpenShard` — and how many there are."""
        self.written = written
        """Window w's written chunks are `positions[written[w]:written[w + 1]]`."""
        self.buffer = buffer


class EncodedWindow:
    """One sample's window as the compressed chunks it needs, located but not decoded.

    The loader holds these until a batch is assembled; then `copy_to` decodes the chunks
    one by one into a small reused scratch buffer (it stays in the CPU cache, which makes
    zstd ~30% faster than writing into a big buffer) and copies each piece straight into
    the batch's shared buffer. Local chunks are read only then, one positioned read each
    into another small reused buffer; remote ones were fetched with the index."""

    __slots__ = ("located", "w")

    def __init__(self, located: LocatedChunks, w: int) -> None:
        self.located, self.w = located, w

    @property
    def reader(self) -> ShardReader:
        return self.located.reader

    @property
    def path(self) -> str:
        return self.located.path

    @property
    def buffer(self) -> np.ndarray | OpenShard | None:
        return self.located.buffer

    @property
    def plan(self) -> WindowChunks:
        return self.located.chunks.window(self.w)

    @property
    def present(self) -> np.ndarray:
        bounds = self.located.chunks.bounds
        return self.located.present[bounds[self.w] : bounds[self.w + 1]]

    @property
    def positions(self) -> np.ndarray:
        written = self.located.written
        return self.located.positions[written[self.w] : written[self.w + 1]]

    @property
    def sizes(self) -> np.ndarray:
        written = self.located.written
        return self.located.sizes[written[self.w] : written[self.w + 1]]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.located.chunks.windows[self.w])

    @property
    def dtype(self) -> np.dtype:
        return self.located.reader.dtype

    def copy_to(self, out: np.ndarray) -> int:
        """Decode into `out` (the window's shape); the bytes decoded."""
        return self.located.reader.decode_into(self, out)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        self.copy_to(out)
        return out if dtype is None else out.astype(dtype, copy=False)


class ShardReader:
    """Reads windows of one array's samples shard by shard (see the module doc).

    One per array per process: it keeps the array handle, the reused read and block
    buffers and the zstd context.
    """

    def __init__(self, arr: zarr.Array, zstd: ZstdInto | None = None) -> None:
        if not fast_path_supported(arr):
            raise ValueError(
                f"{arr.path}: not the corpus's default shard layout; read it with zarr"
            )
        self.arr = arr
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
        self._lone_raw: np.ndarray | None = None
        """One-chunk shards' whole-file reads (`read_lone_chunk`); allocated on first use."""
        self._held: weakref.WeakSet[OpenShard] = weakref.WeakSet()

    # ------------------------------------------------------------------ bytes
    def _path(self, shard: int) -> str:
        key = self.arr.metadata.encode_chunk_key((shard, *([0] * (len(self.layout.grid) - 1))))
        return f"{self._prefix}/{key}" if self._prefix else key

    def _parse_index(self, path: str, raw: bytes) -> np.ndarray:
        if len(raw) != self.layout.index_bytes:
            raise ShardDecodeError(
                f"{path}: {len(raw)} bytes cannot hold a {self.layout.n_chunks}-chunk index"
            )
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise ShardDecodeError(f"{path}: shard index checksum mismatch (truncated or corrupt)")
        return np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)

    def _locate(
        self, path: str, index: np.ndarray, flats: np.ndarray, data_end: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(written mask, byte offsets, byte sizes) of chunks `flats` (the last two of the
        written ones only, in `flats` order)."""
        entries = index[flats]
        present = entries[:, 0] != _EMPTY
        offsets = entries[present, 0].astype(np.int64)
        sizes = entries[present, 1].astype(np.int64)
        if data_end is not None and len(offsets) and int((offsets + sizes).max()) > data_end:
            raise ShardDecodeError(f"{path}: a chunk ends past the data, before the index")
        return present, offsets, sizes

    def _local_index(self, file: str, fd: int) -> tuple[np.ndarray, int]:
        size = os.fstat(fd).st_size
        data_end = size - self.layout.index_bytes
        if data_end < 0:
            raise ShardDecodeError(
                f"{file}: {size} bytes cannot hold a {self.layout.n_chunks}-chunk index"
            )
        return self._parse_index(file, os.pread(fd, self.layout.index_bytes, data_end)), data_end

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
            raise ShardDecodeError(f"{file}: {self._index_error(int(status[0]), int(status[1]))}")
        present, offsets, sizes, written, largest = found
        self._reused(largest)  # decoding reads each chunk into the reused buffer
        return LocatedChunks(self, path, chunks, present, offsets, sizes, written, held)

    def _index_error(self, code: int, detail: int) -> str:
        if code == NO_INDEX:
            return f"{detail} bytes cannot hold a {self.layout.n_chunks}-chunk index"
        if code == BAD_CHECKSUM:
            return "shard index checksum mismatch (truncated or corrupt)"
        if code == PAST_DATA:
            return "a chunk ends past the data, before the index"
        assert code == SHORT_READ, code
        return f"short read of the shard index ({detail} bytes)"

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
        view, at = memoryview(buffer), 0
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
        index = self._parse_index(path, tail.to_bytes())
        present, offsets, sizes = self._locate(path, index, flats, None)
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
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray] | None:
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
            present, offsets, sizes = self._locate(file, index, flats, data_end)
            if not read_now:
                if len(sizes):  # decoding reads each chunk into the reused buffer
                    self._reused(int(sizes.max()))
                return held, present, offsets, sizes
            buffer, positions = self._read_local(fd, file, offsets, sizes)
            return buffer, present, positions, sizes
        finally:
            if held is None:
                os.close(fd)

    def _read_single_chunk_local(self, path: str) -> np.ndarray | None:
        """A local shard of one inner chunk (per-sample metadata: a few hundred bytes) in
        one read of the whole file and one decode; None when it is large (then the general
        path reads it). Spelled out because numpy calls cost more here than the I/O."""
        file = self._root_prefix + path
        out = np.empty(self.layout.chunk_shape, dtype=self.dtype)
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
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
        index = raw[data_end:]  # one (offset, nbytes) entry and its crc32c
        if google_crc32c.value(index[:-4]) != int.from_bytes(index[-4:], "little"):
            raise ShardDecodeError(f"{file}: shard index checksum mismatch (truncated or corrupt)")
        offset, nbytes = int.from_bytes(index[:8], "little"), int.from_bytes(index[8:16], "little")
        if offset == _EMPTY:
            out.fill(self.arr.fill_value)
            return out
        if offset + nbytes > data_end:
            raise ShardDecodeError(f"{file}: a chunk ends past the data, before the index")
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
        raise ShardDecodeError(f"{file}: {self._index_error(code, detail)}")

    # ------------------------------------------------------------------ windows
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
        fetched: tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> LocatedChunks:
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
        view = memoryview(source)
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

    @property
    def local(self) -> bool:
        """Reads a local directory (positioned reads) rather than through zarr's store API."""
        return self._root is not None

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
        index = self._parse_index(path, raw[data_end:])
        present, offsets, sizes = self._locate(path, index, flats, data_end)
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
        fetched: tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        layout = self.layout
        flats = np.arange(layout.n_chunks, dtype=np.int64)
        blocks = np.empty((layout.n_chunks, *layout.chunk_shape), dtype=self.dtype)
        if fetched is None:
            blocks.fill(self.arr.fill_value)
        else:
            buffer, present, positions, sizes = fetched
            assert buffer is not None
            self._decode_rows(path, flats, present, (buffer, positions, sizes), blocks)
        dims = len(layout.grid)
        interleave = [a for i in range(dims) for a in (i, dims + i)]
        out = blocks.reshape(*layout.grid, *layout.chunk_shape).transpose(interleave)
        return out.reshape(layout.shard_shape)[: self._shard_stop(shard)]


def read_shard(arr: zarr.Array, shard: int) -> np.ndarray:
    """Shard `shard` along axis 0 (other axes whole), trimmed to the array's extent."""
    return ShardReader(arr).read_whole(shard)
