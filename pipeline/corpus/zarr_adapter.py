"""The one place terracube touches zarr-python beyond its public API.

The shard reader fetches bytes with `Store.get` itself (one suffix read for the
index, coalesced range reads for chunks) and must run those coroutines on zarr's
own I/O loop: an fsspec/s3fs store's session is bound to the loop it was first
used on, so a second loop would open a second session or fail. zarr 3.1.6 (the
newest release for Python 3.11; 3.2+ require Python 3.12) has no public way to do
that, so `run_sync` and `io_loop` wrap `zarr.core.sync`; zarr-python's proposed
public `zarr.run` would replace them. `tests/pipeline/test_zarr_adapter.py` pins
what is relied on, so an upgrade that changes it fails there and not in a worker.

Codec fields changed type in zarr 3.3 (`BytesCodec.endian` and
`ShardingCodec.index_location` became plain strings, the enums deprecated);
`codec_name` reads both forms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.core import sync as _zarr_sync

__all__ = [
    "RangeByteRequest",
    "SuffixByteRequest",
    "codec_name",
    "default_buffer_prototype",
    "io_loop",
    "run_sync",
]

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on zarr's I/O loop and wait for it (zarr's own `sync`)."""
    return _zarr_sync.sync(coroutine)


def io_loop() -> asyncio.AbstractEventLoop | None:
    """zarr's I/O event loop, where its stores' sessions live; None when this zarr has none
    to share (callers then fetch through `run_sync` when the bytes are needed)."""
    get_loop = getattr(_zarr_sync, "_get_loop", None)
    try:
        return None if get_loop is None else get_loop()
    except Exception:
        return None


def codec_name(value: object) -> str | None:
    """An enum-or-string codec field (`endian`, `index_location`) as its string value."""
    if value is None:
        return None
    return str(getattr(value, "value", value))
