"""zstd frames decoded straight into caller-owned memory, with one reused context.

The loader decodes ~100 inner chunks of 4-120 KiB per sample. `numcodecs.Zstd`
spends ~7 us per call before zstd starts (buffer-protocol checks in Python, a
fresh decompression context per frame): ~0.7 ms per sample, a quarter of the
decode itself. libzstd's `ZSTD_decompressDCtx` with one context per process,
called through ctypes with raw addresses, costs ~1 us per call. libzstd1 is part
of every Debian base system (dpkg needs it); where it cannot be loaded the same
calls go through numcodecs, identical in result and only slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache

import numcodecs
import numpy as np


class ZstdFrameError(ValueError):
    """A frame failed to decode or did not fill its destination exactly."""

    def __init__(self, position: int, detail: str) -> None:
        super().__init__(f"frame {position}: {detail}")
        self.position = position


@cache
def _libzstd() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.ZSTD_createDCtx.restype = ctypes.c_void_p
    lib.ZSTD_createDCtx.argtypes = []
    size_t, addr = ctypes.c_size_t, ctypes.c_void_p
    lib.ZSTD_decompressDCtx.restype = size_t
    lib.ZSTD_decompressDCtx.argtypes = [addr, addr, size_t, addr, size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    lib.ZSTD_getErrorName.argtypes = [size_t]
    return lib


class ZstdInto:
    """Decodes many frames from one source buffer into the rows of one destination array.

    One per process and thread (the context is per process: a forked worker makes its own).
    """

    def __init__(self, native: bool = True) -> None:
        self._lib = _libzstd() if native else None
        self._ctx: tuple[int, int] | None = None  # (pid, ZSTD_DCtx*)
        self._codec = numcodecs.Zstd()

    @property
    def native(self) -> bool:
        return self._lib is not None

    def _context(self) -> int:
        pid = os.getpid()
        if self._ctx is None or self._ctx[0] != pid:
            assert self._lib is not None
            ctx = self._lib.ZSTD_createDCtx()
            if not ctx:
                raise MemoryError("ZSTD_createDCtx returned NULL")
            self._ctx = (pid, ctx)  # one per process for its lifetime: never freed
        return self._ctx[1]

    def decode_rows(
        self,
        src: np.ndarray,
        starts: np.ndarray,
        sizes: np.ndarray,
        dst: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> None:
        """Frame k, bytes src[starts[k] : starts[k] + sizes[k]], fills row rows[k] of `dst`
        exactly (row k when `rows` is None).

        `src` is C-contiguous uint8, `dst` C-contiguous. Raises `ZstdFrameError` naming the
        first frame that fails or does not fill its row."""
        n = len(starts)
        targets = np.arange(n) if rows is None else rows
        if len(sizes) != n or len(targets) != n:
            raise ValueError(f"{n} frames, {len(sizes)} sizes, {len(targets)} destination rows")
        if not (src.flags.c_contiguous and dst.flags.c_contiguous and src.dtype == np.uint8):
            raise ValueError("decode_rows needs a C-contiguous uint8 source and destination")
        if n == 0:
            return
        ends = starts + sizes
        if int(starts.min()) < 0 or int(ends.max()) > src.nbytes:
            raise ValueError(f"a frame lies outside the {src.nbytes}-byte source")
        if int(targets.min()) < 0 or int(targets.max()) >= dst.shape[0]:
            raise ValueError(f"a destination row lies outside the {dst.shape[0]} rows")
        row = dst.nbytes // dst.shape[0]
        if self._lib is None:
            flat = dst.reshape(dst.shape[0], -1).view(np.uint8)
            for k, (a, b, r) in enumerate(
                zip(starts.tolist(), ends.tolist(), targets.tolist(), strict=True)
            ):
                flat[r] = self._fallback(src[a:b], row, k)
            return
        decompress, ctx = self._lib.ZSTD_decompressDCtx, self._context()
        base_src, base_dst = src.ctypes.data, dst.ctypes.data
        jobs = zip(starts.tolist(), sizes.tolist(), targets.tolist(), strict=True)
        for k, (a, size, r) in enumerate(jobs):
            got = decompress(ctx, base_dst + r * row, row, base_src + a, size)
            if got != row:
                raise ZstdFrameError(k, self.describe(got, row))

    def _fallback(self, frame: np.ndarray, row: int, position: int) -> np.ndarray:
        """One frame through numcodecs, checked to hold exactly `row` bytes (decoding into a
        given buffer would not say when the frame is shorter)."""
        try:
            values = np.frombuffer(self._codec.decode(frame), dtype=np.uint8)
        except Exception as exc:
            raise ZstdFrameError(position, str(exc)) from exc
        if values.nbytes != row:
            raise ZstdFrameError(position, f"decoded {values.nbytes} bytes, not {row}")
        return values

    def describe(self, got: int, row: int) -> str:
        """What ZSTD_decompressDCtx returning `got` for a `row`-byte frame means."""
        assert self._lib is not None
        if self._lib.ZSTD_isError(got):
            return self._lib.ZSTD_getErrorName(got).decode()
        return f"decoded {got} bytes, not {row}"

    def decode_frame(self, src: bytes, offset: int, size: int, dst: np.ndarray) -> None:
        """The frame at src[offset : offset + size] fills all of C-contiguous `dst` (raises
        `ZstdFrameError` otherwise): one call, for a lone frame such as a metadata chunk."""
        if offset < 0 or offset + size > len(src):
            raise ValueError(f"frame {offset}+{size} outside the {len(src)}-byte source")
        if not dst.flags.c_contiguous:
            raise ValueError("decode_frame needs a C-contiguous destination")
        if self._lib is None:
            values = self._fallback(np.frombuffer(src, np.uint8, size, offset), dst.nbytes, 0)
            dst.reshape(-1).view(np.uint8)[:] = values
            return
        # ctypes accepts bytes for a c_void_p argument; the stubs only list ctypes objects.
        start = ctypes.cast(src, ctypes.c_void_p).value or 0  # type: ignore[arg-type]
        got = self._lib.ZSTD_decompressDCtx(
            self._context(), dst.ctypes.data, dst.nbytes, start + offset, size
        )
        if got != dst.nbytes:
            raise ZstdFrameError(0, self.describe(got, dst.nbytes))

    def frame_decoder(self, src: np.ndarray, dst: np.ndarray) -> Callable[[int, int], None]:
        """decode(offset, size): the frame at src[offset : offset + size] fills all of `dst`
        (raises `ZstdFrameError` otherwise). Addresses are taken once, so a call costs a
        bounds check and one C call; both arrays must outlive the function."""
        if not (src.flags.c_contiguous and dst.flags.c_contiguous and src.dtype == np.uint8):
            raise ValueError("frame_decoder needs a C-contiguous uint8 source and destination")
        limit, row = src.nbytes, dst.nbytes
        if self._lib is None:
            out = dst.reshape(-1).view(np.uint8)

            def decode_numcodecs(offset: int, size: int) -> None:
                if offset < 0 or offset + size > limit:
                    raise ValueError(f"frame {offset}+{size} outside the {limit}-byte source")
                out[:] = self._fallback(src[offset : offset + size], row, offset)

            return decode_numcodecs
        decompress, ctx = self._lib.ZSTD_decompressDCtx, self._context()
        base_src, base_dst = src.ctypes.data, dst.ctypes.data

        def decode_native(offset: int, size: int) -> None:
            if offset < 0 or offset + size > limit:
                raise ValueError(f"frame {offset}+{size} outside the {limit}-byte source")
            got = decompress(ctx, base_dst, row, base_src + offset, size)
            if got != row:
                raise ZstdFrameError(offset, self.describe(got, row))

        return decode_native
