"""Shard geometry, pure: which inner chunks a sample's window touches and which bytes to
read for them. No I/O here, so chunk selection is tested without a store and the
benchmark's decode floor selects exactly the chunks the loader decodes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from terracube.model.loader_plan import Window


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


@dataclass(frozen=True)
class WindowChunks:
    """The inner chunks a sample's window touches and which piece of each lands where
    (pure geometry: testable without a store)."""

    flats: np.ndarray
    """int64: each touched chunk's slot in the shard index, C order over the touched grid."""
    window: Window
    """The window itself: (start, stop) per axis after the sample axis."""
    copies: tuple[tuple[tuple[slice, ...], tuple[slice, ...]], ...]
    """Per chunk of `flats`: (its piece of the decoded chunk, where that lands in the
    window's array)."""

    @property
    def extent(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.window)


def window_chunks(layout: ShardLayout, local: int, window: Window) -> WindowChunks:
    """The inner chunks sample `local` (position in its shard) needs for `window`."""
    if layout.chunk_shape[0] != 1:
        raise ValueError(f"inner chunks {layout.chunk_shape} hold several samples; read whole")
    inner = layout.chunk_shape[1:]
    if len(window) != len(inner):
        raise ValueError(f"window {window} has {len(window)} axes; the array has {len(inner)}")
    for (start, stop), extent in zip(window, layout.shard_shape[1:], strict=True):
        if not 0 <= start < stop <= extent:
            raise ValueError(f"window {window} leaves the shard's extent {layout.shard_shape[1:]}")
    # (index slot, piece of the chunk, piece of the window), extended axis by axis in C order
    # (plain comprehensions: this runs for every sample and group)
    combos: list[tuple[int, tuple[slice, ...], tuple[slice, ...]]] = [
        (local * layout.strides[0], (), ())
    ]
    for (start, stop), c, stride in zip(window, inner, layout.strides[1:], strict=True):
        pieces = []
        for p in range(start // c, (stop - 1) // c + 1):
            lo, hi = max(start, p * c), min(stop, (p + 1) * c)
            pieces.append(
                (p * stride, slice(lo - p * c, hi - p * c), slice(lo - start, hi - start))
            )
        combos = [
            (flat + offset, (*src, piece), (*dst, target))
            for flat, src, dst in combos
            for offset, piece, target in pieces
        ]
    flats = np.array([flat for flat, _, _ in combos], dtype=np.int64)
    copies = tuple((src, dst) for _, src, dst in combos)
    return WindowChunks(flats, tuple(window), copies)


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
