"""Compiled per-window decode: read, zstd-decode and place every chunk of a window in one call.

`ShardReader.decode_into` does the same chunk by chunk in Python; at ~50 chunks per
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

import numba
import numpy as np
from llvmlite import binding
from numba import types

SHORT_READ, ZSTD_ERROR, WRONG_SIZE = 1, 2, 3
"""`decode_window` status codes."""


def _load_libzstd() -> bool:
    try:
        binding.load_library_permanently(ctypes.util.find_library("zstd") or "libzstd.so.1")
    except RuntimeError:
        return False
    return True


NATIVE = _load_libzstd()

_decompress = types.ExternalFunction(
    "ZSTD_decompressDCtx",
    types.uintp(types.voidptr, types.voidptr, types.uintp, types.voidptr, types.uintp),
)
_memcpy = types.ExternalFunction("memcpy", types.voidptr(types.voidptr, types.voidptr, types.uintp))
_is_error = types.ExternalFunction("ZSTD_isError", types.uint32(types.uintp))
_pread = types.ExternalFunction(
    "pread", types.intp(types.int32, types.voidptr, types.uintp, types.int64)
)


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
    itemsize: int,
    scratch: np.ndarray,
    out: np.ndarray,
    fill: np.ndarray,
    status: np.ndarray,
) -> int:
    """Decode a window's chunks into `out`; -1, or the chunk that failed with `status` =
    (code, detail: bytes read or zstd's return value).

    `out` and `scratch` are uint8 4-axis views of the window and of one chunk (the last
    axis in bytes); boxes are in elements (`WindowChunks`). Written chunk j (in order of
    the `present` ones) has `sizes[j]` bytes at `positions[j]`: in the file `fd`, read
    into `source`, or in `source` itself when `fd` is negative."""
    capacity = np.uint64(scratch.size)
    out_base, scratch_base = out.ctypes.data, scratch.ctypes.data
    o0, o1, o2 = out.strides[0], out.strides[1], out.strides[2]
    s0, s1, s2 = scratch.strides[0], scratch.strides[1], scratch.strides[2]
    written = 0
    for k in range(present.shape[0]):
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
            start = source.ctypes.data
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
