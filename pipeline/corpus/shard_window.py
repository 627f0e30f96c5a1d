"""What a shard read hands the loader before decoding: located chunks and windows.

`ShardReader.fetch` reads a shard's index once and returns one `EncodedWindow` per
wanted sample, all referring to one `LocatedChunks`; nothing is decoded or cut per
window until the batch is assembled and `copy_to` asks the reader to decode it. These
are plain slotted classes: one is made per shard and array (and per window), where a
dataclass costs measurably more on the loader's per-sample path (docs/loader.md).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
from terracube.pipeline.corpus.shard_geometry import ShardChunks, WindowChunks


class WindowDecoder(Protocol):
    """What a window needs of the reader that located it (`ShardReader`)."""

    dtype: np.dtype

    def decode_into(self, window: EncodedWindow, out: np.ndarray) -> int: ...


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
        reader: WindowDecoder,
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
    def reader(self) -> WindowDecoder:
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
