"""Compiled shard reads: locate a shard's chunks, decode a window's, read a one-chunk shard.

`locate_chunks` reads and checks a local shard's index (size, crc32c, every chunk
inside the data) and looks up the chunks of all its wanted windows in one call: in
Python that was ~60 us per shard and array, most of it numpy calls on tiny arrays.
`read_lone_chunk` does the same for a one-chunk shard (per-sample metadata) and
decodes it.

`decode_window` replaces decoding chunk by chunk in Python; at ~50 chunks per
sample the per-chunk interpreter work (a read call, a decode call, a slice copy with
eight slice objects) adds up to ~0.2 ms per sample. Here one numba call per window
does, per chunk: one `pread` (local files) into a small reused buffer, one
`ZSTD_decompressDCtx` into a small reused scratch that stays in the CPU cache, and
the copy of the needed box into the window's array — or the fill value where the
chunk was never written.

libzstd is linked by name through llvmlite (so the compiled code is cached on disk
like any other); where it cannot be loaded `NATIVE` is False and callers use the
Python path with numcodecs.
"""

from __future__ import annotations

import ctypes.util
from typing import Any

import numba
import numpy as np
from llvmlite import binding
from numba import types

SHORT_READ, ZSTD_ERROR, WRONG_SIZE = 1, 2, 3
"""`decode_window` status codes (`locate_chunks` uses SHORT_READ too)."""
NO_INDEX, BAD_CHECKSUM, PAST_DATA = 4, 5, 6
"""`locate_chunks` status codes: the file is shorter than an index, the index fails its
crc32c, a chunk ends past the data (detail: file size, stored crc, chunk position)."""
EMPTY = np.uint64(2**64 - 1)
"""An index entry's offset for a chunk never written."""


def _load_libzstd() -> bool:
    try:
        binding.load_library_permanently(ctypes.util.find_library("zstd") or "libzstd.so.1")
    except RuntimeError:
        return False
    return True


NATIVE = _load_libzstd()

# numba's type objects make the signatures; its call overloads are not typed for these
# (mypy only sees `Type.__call__`), so the external functions are Any to the checker.
_decompress: Any = types.ExternalFunction(
    "ZSTD_decompressDCtx",
    types.uintp(types.voidptr, types.voidptr, types.uintp, types.voidptr, types.uintp),
)
_memcpy: Any = types.ExternalFunction(
    "memcpy", types.voidptr(types.voidptr, types.voidptr, types.uintp)
)
_is_error: Any = types.ExternalFunction("ZSTD_isError", types.uint32(types.uintp))
_pread: Any = types.ExternalFunction(
    "pread", types.intp(types.int32, types.voidptr, types.uintp, types.int64)
)
_lseek: Any = types.ExternalFunction("lseek", types.int64(types.int32, types.int64, types.int32))
_SEEK_END = 2


def _crc32c_tables() -> np.ndarray:
    """Slicing-by-8 tables of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    tables = np.zeros((8, 256), dtype=np.int64)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        tables[0, i] = crc
    for k in range(1, 8):
        for i in range(256):
            prev = int(tables[k - 1, i])
            tables[k, i] = (prev >> 8) ^ int(tables[0, prev & 0xFF])
    return tables


_CRC32C = _crc32c_tables()


@numba.njit(cache=True, nogil=True)
def crc32c(data: np.ndarray) -> int:
    """CRC-32C of a uint8 array, eight bytes per step (the shard index checksum)."""
    t = _CRC32C
    crc = 0xFFFFFFFF
    n = data.shape[0]
    i = 0
    while i + 8 <= n:
        one = crc ^ (
            np.int64(data[i])
            | (np.int64(data[i + 1]) << 8)
            | (np.int64(data[i + 2]) << 16)
            | (np.int64(data[i + 3]) << 24)
        )
        two = (
            np.int64(data[i + 4])
            | (np.int64(data[i + 5]) << 8)
            | (np.int64(data[i + 6]) << 16)
            | (np.int64(data[i + 7]) << 24)
        )
        crc = (
            t[7, one & 0xFF]
            ^ t[6, (one >> 8) & 0xFF]
            ^ t[5, (one >> 16) & 0xFF]
            ^ t[4, one >> 24]
            ^ t[3, two & 0xFF]
            ^ t[2, (two >> 8) & 0xFF]
            ^ t[1, (two >> 16) & 0xFF]
            ^ t[0, two >> 24]
        )
        i += 8
    while i < n:
        crc = (crc >> 8) ^ t[0, (crc ^ np.int64(data[i])) & 0xFF]
        i += 1
    return crc ^ 0xFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _index_checks(index: np.ndarray, status: np.ndarray) -> bool:
    """Whether a shard index (entries, then their crc32c little endian) passes its
    checksum; if not, `status` = (BAD_CHECKSUM, the stored crc)."""
    n = index.shape[0]
    stored: int | np.int64 = 0  # local annotations leave the compiled bytecode as is
    for b in range(4):
        stored |= np.int64(index[n - 4 + b]) << (8 * b)
    if crc32c(index[: n - 4]) == stored:
        return True
    status[0], status[1] = BAD_CHECKSUM, stored
    return False


@numba.njit(cache=True, nogil=True)
def locate_chunks(
    fd: int, index: np.ndarray, flats: np.ndarray, bounds: np.ndarray, status: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Read and check the index at the end of the open shard file `fd` into `index`
    (uint8, exactly the index's size) and look up chunks `flats` (window w's being
    `bounds[w]:bounds[w + 1]`): (written mask, byte offsets and sizes of the written ones
    in `flats` order, where each window's written ones start (W + 1), the largest size).
    On a failure `status` = (code, detail) and the arrays are empty."""
    n = flats.shape[0]
    present = np.zeros(n, np.bool_)
    offsets = np.empty(n, np.int64)
    sizes = np.empty(n, np.int64)
    written_at = np.zeros(bounds.shape[0], np.int64)
    status[0] = 0
    nbytes = index.shape[0]
    size = _lseek(fd, 0, _SEEK_END)
    data_end = size - nbytes
    if data_end < 0:
        status[0], status[1] = NO_INDEX, size
        return present[:0], offsets[:0], sizes[:0], written_at[:0], 0
    got = _pread(fd, index.ctypes.data, nbytes, data_end)
    if got != nbytes:
        status[0], status[1] = SHORT_READ, got
        return present[:0], offsets[:0], sizes[:0], written_at[:0], 0
    if not _index_checks(index, status):
        return present[:0], offsets[:0], sizes[:0], written_at[:0], 0
    entries = index[: nbytes - 4].view(np.uint64)
    written = largest = 0
    for w in range(bounds.shape[0] - 1):
        written_at[w] = written
        for k in range(bounds[w], bounds[w + 1]):
            offset = entries[2 * flats[k]]
            if offset == EMPTY:
                continue
            length = entries[2 * flats[k] + 1]
            if offset + length > np.uint64(data_end):
                status[0], status[1] = PAST_DATA, k
                return present[:0], offsets[:0], sizes[:0], written_at[:0], 0
            present[k] = True
            offsets[written], sizes[written] = np.int64(offset), np.int64(length)
            # numba types int and np.int64 alike (and returns a Python int); numpy stubs do not
            largest = max(largest, np.int64(length))  # type: ignore[assignment]
            written += 1
    if bounds.shape[0]:
        written_at[bounds.shape[0] - 1] = written
    return present, offsets[:written], sizes[:written], written_at, largest


@numba.njit(cache=True, nogil=True)
def decode_window(
    ctx: int,
    fd: int,
    source: np.ndarray,
    positions: np.ndarray,
    sizes: np.ndarray,
    present: np.ndarray,
    piece_start: np.ndarray,
    piece_stop: np.ndarray,
    target_start: np.ndarray,
    first: int,
    last: int,
    written: int,
    itemsize: int,
    scratch: np.ndarray,
    out: np.ndarray,
    fill: np.ndarray,
    status: np.ndarray,
) -> int:
    """Decode chunks `first:last` (one window's) into `out`; -1, or the chunk that failed
    with `status` = (code, detail: bytes read or zstd's return value).

    `out` and `scratch` are uint8 4-axis views of the window and of one chunk (the last
    axis in bytes); boxes are in elements (`ShardChunks`). Written chunk j (in order of
    the `present` ones, the window's first being `written`) has `sizes[j]` bytes at
    `positions[j]`: in the file `fd`, read into `source`, or in `source` itself when `fd`
    is negative."""
    capacity = np.uint64(scratch.size)
    out_base, scratch_base = out.ctypes.data, scratch.ctypes.data
    o0, o1, o2 = out.strides[0], out.strides[1], out.strides[2]
    s0, s1, s2 = scratch.strides[0], scratch.strides[1], scratch.strides[2]
    for k in range(first, last):
        a0, a1, a2 = piece_start[k, 0], piece_start[k, 1], piece_start[k, 2]
        n0 = piece_stop[k, 0] - a0
        n1 = piece_stop[k, 1] - a1
        n2 = piece_stop[k, 2] - a2
        a3 = piece_start[k, 3] * itemsize
        n3 = piece_stop[k, 3] * itemsize - a3
        t0, t1, t2 = target_start[k, 0], target_start[k, 1], target_start[k, 2]
        t3 = target_start[k, 3] * itemsize
        if not present[k]:
            for i0 in range(n0):
                for i1 in range(n1):
                    for i2 in range(n2):
                        for e in range(n3):
                            out[t0 + i0, t1 + i1, t2 + i2, t3 + e] = fill[e % itemsize]
            continue
        size = sizes[written]
        if fd >= 0:
            if size > source.shape[0]:  # the caller sizes `source`; never read past it
                status[0], status[1] = SHORT_READ, -1
                return k
            got = _pread(fd, source.ctypes.data, size, positions[written])
            if got != size:
                status[0], status[1] = SHORT_READ, got
                return k
            start: int | np.uint64 = source.ctypes.data
        else:
            start = source.ctypes.data + np.uint64(positions[written])
        written += 1
        result = _decompress(ctx, scratch_base, capacity, start, size)
        if _is_error(result):
            status[0], status[1] = ZSTD_ERROR, np.int64(result)
            return k
        if result != capacity:
            status[0], status[1] = WRONG_SIZE, np.int64(result)
            return k
        for i0 in range(n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    to = (t0 + i0) * o0 + (t1 + i1) * o1 + (t2 + i2) * o2 + t3
                    at = (a0 + i0) * s0 + (a1 + i1) * s1 + (a2 + i2) * s2 + a3
                    _memcpy(out_base + np.uint64(to), scratch_base + np.uint64(at), n3)
    return -1


@numba.njit(cache=True, nogil=True)
def read_lone_chunk(ctx: int, fd: int, raw: np.ndarray, out: np.ndarray, status: np.ndarray) -> int:
    """A whole one-chunk shard file (per-sample metadata: a few hundred bytes) in one read
    into `raw` (uint8, one byte more than the largest file read this way), its 20-byte
    index checked, its chunk decoded into `out` (uint8, the chunk's bytes): 1 decoded,
    0 never written (the caller fills), -1 the file is larger than `raw` can tell (read
    it another way), -2 failed with `status` = (code, detail)."""
    status[0] = 0
    size = _pread(fd, raw.ctypes.data, raw.shape[0], 0)
    if size < 0:
        status[0], status[1] = SHORT_READ, size
        return -2
    if size == raw.shape[0]:
        return -1
    data_end = size - 20
    if data_end < 0:
        status[0], status[1] = NO_INDEX, size
        return -2
    if not _index_checks(raw[data_end:size], status):
        return -2
    entry = raw[data_end : size - 4].view(np.uint64)
    if entry[0] == EMPTY:
        return 0
    if entry[0] + entry[1] > np.uint64(data_end):
        status[0], status[1] = PAST_DATA, 0
        return -2
    capacity = np.uint64(out.shape[0])
    result = _decompress(ctx, out.ctypes.data, capacity, raw.ctypes.data + entry[0], entry[1])
    if _is_error(result):
        status[0], status[1] = ZSTD_ERROR, np.int64(result)
        return -2
    if result != capacity:
        status[0], status[1] = WRONG_SIZE, np.int64(result)
        return -2
    return 1
