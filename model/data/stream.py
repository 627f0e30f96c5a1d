"""`StreamingLoader`: one rank's batches epoch after epoch, in order, resumable.

It wraps a torch DataLoader over a `CorpusStream` (persistent workers, one thread each),
restores the rank order of the workers' batches, tracks the position (epoch, batches
consumed) a checkpoint stores and resumes the stream exactly from it. Before the
workers start it sets up the shared-memory ring they build batches in
(`transport.ArenaRing`), unless /dev/shm is too small for it.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar, cast

import torch
from terracube.model.data.assemble import LoaderItem
from terracube.model.data.kernels import compile_kernels
from terracube.model.data.loader import CorpusStream
from terracube.model.data.read_faults import CorpusTooSmall
from terracube.model.data.transport import ArenaRing, Packed, unpack
from torch.utils.data import DataLoader

_T = TypeVar("_T")

log = logging.getLogger(__name__)

RING_SPARE_SLOTS = 3
"""Ring slots per worker beyond its prefetch: the batch being built, the one the training
step holds and the one it is fetching next."""


class StreamingLoader:
    """Epoch after epoch of one rank's batches, in order, with a resumable position."""

    def __init__(
        self,
        dataset: CorpusStream,
        num_workers: int = 0,
        prefetch_factor: int | None = 2,
        persistent_workers: bool = True,
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.persistent_workers = persistent_workers and num_workers > 0
        self._loader: DataLoader | None = None
        self.epoch = 0
        self.consumed = 0
        self.decode_errors = 0
        self.decoded_bytes = 0
        self.fallbacks = 0
        """Batches' fast-path reads that fell back to zarr (LoaderItem.fallbacks), summed."""

    def close(self) -> None:
        """Stop persistent workers now instead of at garbage collection."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
        self._loader = None

    def state_dict(self) -> dict[str, int]:
        """The position a checkpoint stores (primitives only)."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.dataset.params.seed,
            "world_size": self.dataset.world_size,
            "num_workers": self.num_workers,
            "decode_errors": self.decode_errors,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key, mine in (
            ("seed", self.dataset.params.seed),
            ("world_size", self.dataset.world_size),
            ("num_workers", self.num_workers),
        ):
            if int(state[key]) != mine:
                raise ValueError(
                    f"the checkpoint's loader was planned with {key}={state[key]}, this run has "
                    f"{key}={mine}; resume with the same {key} to continue the stream exactly"
                )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.decode_errors = int(state["decode_errors"])

    def _make_ring(self) -> ArenaRing | None:
        """The workers' reusable batch slots, or None (a fresh segment per batch) when they
        would take more than half of the free shared memory: a full /dev/shm kills
        processes with SIGBUS instead of raising."""
        per_worker = (self.prefetch_factor or 2) + RING_SPARE_SLOTS
        slot_bytes = self.dataset.max_batch_bytes()
        need = self.num_workers * per_worker * slot_bytes
        free = shared_memory_free_bytes()
        if free is not None and need > free // 2:
            log.warning(
                "loader: %d workers x %d batch slots of %.1f MB need %.0f MB of shared memory, "
                "/dev/shm has %.0f MB free; sending each batch in a fresh segment instead "
                "(slower). Give the container more shared memory (docker --shm-size) or "
                "lower num_workers, batch_size or the largest crop.",
                self.num_workers,
                per_worker,
                slot_bytes / 1e6,
                need / 1e6,
                free / 1e6,
            )
            return None
        return ArenaRing(self.num_workers, per_worker, slot_bytes)

    def _epoch_items(self) -> Iterator[LoaderItem]:
        self.dataset.set_position(self.epoch, self.consumed)
        if self.num_workers == 0:
            # in this process, not a DataLoader worker: CorpusStream yields no `Packed`
            yield from cast("Iterable[LoaderItem]", self.dataset)
            return
        loader = self._loader
        self.dataset.pack_items = True
        if loader is None:
            compile_kernels()  # before the fork: workers inherit the machine code
            if self.dataset.ring is None:
                self.dataset.ring = self._make_ring()
            else:  # slots claimed by the workers of a loader that was shut down
                self.dataset.ring.free_unleased()
            loader = DataLoader(
                self.dataset,
                batch_size=None,
                num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor,
                persistent_workers=self.persistent_workers,
                worker_init_fn=_single_thread_worker,
                collate_fn=_identity,
            )
        if self.persistent_workers:  # workers, open arrays and buffers outlive the epoch
            self._loader = loader
        waiting: dict[int, LoaderItem] = {}
        expected = self.consumed
        for received in loader:
            ring = self.dataset.ring
            if isinstance(received, Packed):
                item = unpack(received, ring)
                item.normalizers = self.dataset.normalizers  # not sent: the same in every process
            else:
                item = received
            waiting[item.index] = item
            while expected in waiting:
                yield waiting.pop(expected)
                expected += 1
        if waiting:
            raise RuntimeError(f"loader workers skipped batches before {sorted(waiting)}")

    def __iter__(self) -> Iterator[LoaderItem]:
        """Endless: batches of this epoch from the position on, then the next epochs."""
        while True:
            if self.dataset.batches_in_epoch(self.epoch, self.num_workers) == 0:
                raise CorpusTooSmall(
                    f"{self.dataset.store!r} gives rank {self.dataset.rank} no batch in an epoch "
                    f"(done samples per shard: {[len(e) for e in self.dataset.eligible]}); "
                    "lower batch_size or build more samples"
                )
            for item in self._epoch_items():
                self.consumed += 1
                self.decode_errors += item.decode_errors
                self.decoded_bytes += item.decoded_bytes
                self.fallbacks += item.fallbacks
                yield item
            self.epoch, self.consumed = self.epoch + 1, 0


def shared_memory_free_bytes(path: str = "/dev/shm") -> int | None:
    """Free bytes of the shared-memory filesystem, None where there is none to ask."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _identity(item: _T) -> _T:
    """`collate_fn` with batch_size=None: each item (a whole batch already) as it is."""
    return item


def _single_thread_worker(worker_id: int) -> None:
    """Workers are the parallelism: intra-op threads would only contend with each other.

    The ~270,000 objects a worker inherits from the training process (torch, numba, zarr)
    are moved out of the garbage collector's reach: a full collection over them took
    ~0.1 s, 6 % of a worker's time, and wrote to every page they sit on (copy-on-write
    copies of the parent's memory)."""
    torch.set_num_threads(1)
    gc.freeze()
