"""Shard geometry, pure: which inner chunks a sample's window touches and which bytes to
read for them. No I/O here, so chunk selection is tested without a store and the
benchmark's decode floor selects exactly the chunks the loader decodes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np

Window = tuple[tuple[int, int], ...]
"""(start, stop) per stored axis after `sample`: [time,] band, y, x at the group's resolution."""

MAX_AXES = 4
"""Axes after the sample axis the compiled kernels handle (time, band, y, x)."""
_PAD_WINDOW = [((0, 1),) * n for n in range(MAX_AXES + 1)]


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

    @cached_property
    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """Inner chunk shape and grid strides after the sample axis, padded in front to
        MAX_AXES axes (size 1, stride 0), as the compiled kernels take them."""
        pad = MAX_AXES - (len(self.chunk_shape) - 1)
        chunk = np.array((1,) * pad + self.chunk_shape[1:], dtype=np.int64)
        return chunk, np.array((0,) * pad + self.strides[1:], dtype=np.int64)

    @cached_property
    def padded_extent(self) -> np.ndarray:
        """The shard's extent after the sample axis, padded like `padded`."""
        pad = MAX_AXES - (len(self.shard_shape) - 1)
        return np.array((1,) * pad + self.shard_shape[1:], dtype=np.int64)

    def full_window(self) -> Window:
        return tuple((0, s) for s in self.shard_shape[1:])


@dataclass(frozen=True)
class WindowChunks:
    """The inner chunks a sample's window touches and which piece of each lands where
    (pure geometry: testable without a store).

    Boxes are int64 (chunks, 4): axes after the sample axis, padded in front to four
    (start 0, stop 1) so one compiled copy loop serves every array."""

    flats: np.ndarray
    """int64: each touched chunk's slot in the shard index, C order over the touched grid."""
    window: Window
    """The window itself: (start, stop) per axis after the sample axis."""
    piece_start: np.ndarray
    piece_stop: np.ndarray
    """Per chunk: the box of the decoded chunk that the window needs."""
    target_start: np.ndarray
    """Per chunk: where that box starts in the window's array."""

    @cached_property
    def extent(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.window)

    @property
    def copies(self) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
        """Per chunk: (its piece of the decoded chunk, where that lands in the window's
        array) as slices over the array's own axes."""
        axes = len(self.window)
        out = []
        for lo, hi, at in zip(
            self.piece_start[:, -axes:].tolist(),
            self.piece_stop[:, -axes:].tolist(),
            self.target_start[:, -axes:].tolist(),
            strict=True,
        ):
            piece = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            target = tuple(slice(t, t + b - a) for a, b, t in zip(lo, hi, at, strict=True))
            out.append((piece, target))
        return out


def window_chunks(layout: ShardLayout, local: int, window: Window) -> WindowChunks:
    """The inner chunks sample `local` (position in its shard) needs for `window`."""
    return shard_window_chunks(layout, {local: window})[0][local]


class ShardChunks:
    """The chunks several windows of one shard touch, back to back: window w's are rows
    `bounds[w]:bounds[w + 1]` of every array (one compiled call per shard and array;
    `window(w)` cuts one window's `WindowChunks` out when it is needed). A plain slotted
    class: one is made per shard and array, where a frozen dataclass costs more."""

    __slots__ = ("bounds", "flats", "piece_start", "piece_stop", "target_start", "windows")

    def __init__(
        self,
        windows: tuple[Window, ...],
        bounds: np.ndarray,
        flats: np.ndarray,
        piece_start: np.ndarray,
        piece_stop: np.ndarray,
        target_start: np.ndarray,
    ) -> None:
        self.windows, self.bounds, self.flats = windows, bounds, flats
        self.piece_start, self.piece_stop, self.target_start = piece_start, piece_stop, target_start

    def window(self, w: int) -> WindowChunks:
        a, b = int(self.bounds[w]), int(self.bounds[w + 1])
        return WindowChunks(
            self.flats[a:b],
            self.windows[w],
            self.piece_start[a:b],
            self.piece_stop[a:b],
            self.target_start[a:b],
        )


def shard_chunks(layout: ShardLayout, locals_: list[int], windows: list[Window]) -> ShardChunks:
    """The chunks of samples `locals_` (positions in their shard) for `windows`, in one
    compiled call."""
    if layout.chunk_shape[0] != 1:
        raise ValueError(f"inner chunks {layout.chunk_shape} hold several samples; read whole")
    axes = len(layout.chunk_shape) - 1
    if axes > MAX_AXES:
        raise ValueError(f"{layout}: at most {MAX_AXES} axes after the sample axis")
    for window in windows:
        if len(window) != axes:
            raise ValueError(f"window {window} has {len(window)} axes; the array has {axes}")
    pad = _PAD_WINDOW[MAX_AXES - axes]
    boxes = np.array([pad + tuple(w) for w in windows], dtype=np.int64).reshape(-1, MAX_AXES, 2)
    bases = np.array(locals_, dtype=np.int64) * layout.strides[0]
    chunk, strides = layout.padded
    bounds, flats, lo, hi, at = _chunk_boxes(boxes, chunk, strides, bases, layout.padded_extent)
    if bounds[0] < 0:
        bad = windows[-int(bounds[0]) - 1]
        raise ValueError(f"window {bad} leaves the shard's extent {layout.shard_shape[1:]}")
    return ShardChunks(tuple(windows), bounds, flats, lo, hi, at)


def shard_window_chunks(
    layout: ShardLayout, windows: Mapping[int, Window]
) -> tuple[dict[int, WindowChunks], np.ndarray]:
    """`window_chunks` of several samples of one shard {local: window} in one compiled call,
    and every window's index slots back to back in the mapping's order (what the shard
    index is read for)."""
    chunks = shard_chunks(layout, list(windows), list(windows.values()))
    plans = {local: chunks.window(w) for w, local in enumerate(windows)}
    return plans, chunks.flats


@numba.njit(cache=True, nogil=True)
def _chunk_boxes(
    windows: np.ndarray,
    chunk: np.ndarray,
    strides: np.ndarray,
    bases: np.ndarray,
    extent: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For 4-axis windows (W, 4, 2): (where each window's chunks start and end in the other
    arrays (W + 1), index slots, piece starts, piece stops, target starts) of the chunks
    each touches, in C order. A window outside `extent` gives bounds[0] = -(its index + 1).
    Compiled: this runs for every shard and group."""
    count = np.empty((windows.shape[0], 4), np.int64)
    bounds = np.zeros(windows.shape[0] + 1, np.int64)
    for w in range(windows.shape[0]):
        n = 1
        for axis in range(4):
            start, stop = windows[w, axis, 0], windows[w, axis, 1]
            if not (0 <= start < stop <= extent[axis]):
                bounds[0] = -(w + 1)
                return bounds, bounds[:0], count[:0], count[:0], count[:0]
            count[w, axis] = (stop - 1) // chunk[axis] - start // chunk[axis] + 1
            n *= count[w, axis]
        bounds[w + 1] = bounds[w] + n
    total = bounds[-1]
    flats = np.empty(total, np.int64)
    lo = np.empty((total, 4), np.int64)
    hi = np.empty((total, 4), np.int64)
    at = np.empty((total, 4), np.int64)
    for w in range(windows.shape[0]):
        k = bounds[w]
        for i0 in range(count[w, 0]):
            for i1 in range(count[w, 1]):
                for i2 in range(count[w, 2]):
                    for i3 in range(count[w, 3]):
                        flat = bases[w]
                        for axis, i in enumerate((i0, i1, i2, i3)):
                            start, stop, c = windows[w, axis, 0], windows[w, axis, 1], chunk[axis]
                            p = start // c + i
                            a, b = max(start, p * c), min(stop, (p + 1) * c)
                            lo[k, axis], hi[k, axis], at[k, axis] = a - p * c, b - p * c, a - start
                            flat += p * strides[axis]
                        flats[k] = flat
                        k += 1
    return bounds, flats, lo, hi, at


def byte_runs(
    offsets: np.ndarray, sizes: np.ndarray, gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunks at byte (offset, size) -> read runs and where each chunk lands in a buffer
    holding the runs back to back: (run starts, run stops, buffer position per chunk).
    Chunks whose gap is at most `gap` bytes share a run."""
    if len(offsets) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    order = np.argsort(offsets, kind="stable")
    starts, ends = offsets[order], offsets[order] + sizes[order]
    reach = np.maximum.accumulate(ends)
    new_run = np.empty(len(starts), dtype=bool)
    new_run[0] = True
    new_run[1:] = starts[1:] > reach[:-1] + gap
    first = np.flatnonzero(new_run)
    run_starts = starts[first]
    run_stops = np.maximum.reduceat(ends, first)
    run_buffer = np.concatenate([[0], np.cumsum(run_stops - run_starts)[:-1]])
    run_of = np.cumsum(new_run) - 1
    position = np.empty(len(offsets), dtype=np.int64)
    position[order] = run_buffer[run_of] + starts - run_starts[run_of]
    return run_starts, run_stops, position
