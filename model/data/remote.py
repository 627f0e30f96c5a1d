"""Remote corpora: a worker fetches the next shards while it decodes the current one.

From an object store every read is a request with its own latency (tens of ms), and a
shard needs ~two dozen of them (each group's index and chunk ranges, each metadata
array). `CorpusStream._fetch_remote_shard` issues all of a shard's requests in one
concurrent wave; `ShardPrefetcher`, handed that fetch and each shard's windows, keeps the next `prefetch_shards` waves in flight on
zarr's own event loop — the loop its stores' sessions are bound to — in the order the
stream will need them. Only bytes are fetched there; decoding stays on the worker's
thread, which owns the zstd context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any

from terracube.pipeline.corpus.shard_geometry import Window
from terracube.pipeline.corpus.zarr_adapter import io_loop, run_sync

ShardWindows = dict[str, dict[int, Window]]
"""Per array, the window each of a shard's wanted samples needs."""
FetchShard = Callable[[int, ShardWindows], Coroutine[Any, Any, dict[str, Any]]]
"""Fetches one shard's bytes for its windows (`CorpusStream._fetch_remote_shard`)."""

PREFETCH_SHARDS = 4
"""Remote shards whose bytes a worker fetches ahead of the one it decodes."""


class ShardPrefetcher:
    """Keeps the next `prefetch_shards` remote shards' fetches in flight on zarr's event
    loop (network waits overlap the decode of the shard before), in the stream's order."""

    def __init__(
        self, fetch: FetchShard, windows: dict[int, ShardWindows], depth: int = PREFETCH_SHARDS
    ) -> None:
        self.fetch, self.depth = fetch, depth
        self.order, self.next = list(windows), 0
        self.windows = dict(windows)
        self.inflight: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self.loop = io_loop()

    def _submit(self) -> None:
        while self.loop is not None and self.next < len(self.order):
            if len(self.inflight) >= self.depth:
                return
            k = self.order[self.next]
            self.next += 1
            coroutine = self.fetch(k, self.windows.pop(k))
            self.inflight[k] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def take(self, k: int) -> dict[str, Any]:
        """What was fetched for shard k (fetched now when it was not in flight)."""
        self._submit()
        future = self.inflight.pop(k, None)
        # no future: there was no loop to prefetch on, so fetch it now
        result = run_sync(self.fetch(k, self.windows.pop(k))) if future is None else future.result()
        self._submit()
        return result
