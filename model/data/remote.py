"""Remote corpora: a worker fetches the next shards while it decodes the current one.

From an object store every read is a request with its own latency (tens of ms), and a
shard needs ~two dozen of them (each group's index and chunk ranges, each metadata
array). `CorpusStream._fetch_remote_shard` issues all of a shard's requests in one
concurrent wave; `ShardPrefetcher` keeps the next `prefetch_shards` waves in flight on
zarr's own event loop — the loop its stores' sessions are bound to — in the order the
stream will need them. Only bytes are fetched there; decoding stays on the worker's
thread, which owns the zstd context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any

from zarr.core import sync as zarr_sync
from zarr.core.sync import sync

if TYPE_CHECKING:
    from terracube.model.data.loader import CorpusStream
    from terracube.model.data.plan import BatchPlan

PREFETCH_SHARDS = 4
"""Remote shards whose bytes a worker fetches ahead of the one it decodes."""


class ShardPrefetcher:
    """Keeps the next `prefetch_shards` remote shards' fetches in flight on zarr's event
    loop (network waits overlap the decode of the shard before), in the stream's order."""

    def __init__(
        self, stream: CorpusStream, order: list[int], wanted: dict[int, tuple[BatchPlan, int]]
    ) -> None:
        self.stream, self.order, self.next = stream, order, 0
        self.windows = {k: stream._shard_windows(k, wanted) for k in order}
        self.inflight: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self.loop = zarr_loop()

    def _submit(self) -> None:
        while self.loop is not None and self.next < len(self.order):
            if len(self.inflight) >= self.stream.prefetch_shards:
                return
            k = self.order[self.next]
            self.next += 1
            coroutine = self.stream._fetch_remote_shard(k, self.windows.pop(k))
            self.inflight[k] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def take(self, k: int) -> dict[str, Any]:
        """What was fetched for shard k (fetched now when it was not in flight)."""
        self._submit()
        future = self.inflight.pop(k, None)
        if future is None:  # no loop to prefetch on: fetch it now
            result = sync(self.stream._fetch_remote_shard(k, self.windows.pop(k)))
        else:
            result = future.result()
        self._submit()
        return result


def zarr_loop() -> asyncio.AbstractEventLoop | None:
    """zarr's I/O event loop (its stores' sessions are bound to it); None if this zarr has
    none to share, and then shards are fetched when needed (still one wave per shard)."""
    get_loop = getattr(zarr_sync, "_get_loop", None)
    try:
        return None if get_loop is None else get_loop()
    except Exception:
        return None
