"""Streaming loader: corpus shards -> cropped, masked batches in DataLoader workers.

`CorpusStream` is a torch `IterableDataset` that yields whole batches (the
DataLoader runs with `batch_size=None`): a batch needs one crop size, patch size
and timestep count shared by its samples, and forming it in the worker lets the
worker do the modality-aware masking too. What each worker reads and in which
order is planned purely in `data/plan.py`; this module does the reads and builds
the batches.

Reads are per shard and partial: when a worker first needs a sample of shard k it
locates, for every array, only the inner chunks that its wanted samples' timestep
windows and crops touch (`pipeline/corpus/shard_reader.py`; zarr's own selection for
other layouts); the chunks are decoded when the batch is assembled, straight into
its buffer. From an object store the next shards are fetched while one decodes
(`data/remote.py`). A worker builds each batch in a shared-memory ring slot as
storage values at native resolution with pixel validity and the masks
(`assemble.RawBatch`); `LoaderItem.to(device)` normalises it with the corpus
statistics into the model's 10 m `Batch` on that device. A shard that fails to
read or decode falls back to per-sample zarr reads of the same windows; a
(sample, group) that still fails is counted in `LoaderItem.decode_errors` and
treated like a missing modality (all pixels invalid), so batch counts — and
therefore DDP step counts and resume positions — never change; each damaged shard
is logged once (`read_faults`). In a format-2 store a missing shard file or chunk is
such a failure, never zeros; the trainer stops past a share of failed reads.

`stream.StreamingLoader` (in `data/stream.py`) runs the DataLoader across
epochs and keeps the resumable position. Costs and tuning: docs/loader.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from terracube.catalog.registry import band_group
from terracube.model.data.assemble import LoaderItem, RawBatch, SampleCrop, arena_specs
from terracube.model.data.pixel_stats import (
    group_normalizer,
    read_stats,
)
from terracube.model.data.plan import (
    BatchPlan,
    LoaderParams,
    Slot,
    TokenShape,
    Window,
    check_budget,
    plan_worker,
    possible_geometries,
    rank_batch_count,
    sample_window,
)
from terracube.model.data.read_faults import ReadFaults
from terracube.model.data.remote import PREFETCH_SHARDS, ShardPrefetcher
from terracube.model.data.transport import (
    ArenaRing,
    Packed,
    carve,
    carve_bytes,
    pack,
)
from terracube.model.train.masking import mask_batch
from terracube.pipeline.corpus.integrity import readable_states
from terracube.pipeline.corpus.schema import COMPLETE_SHARDS_SINCE, SampleState
from terracube.pipeline.corpus.shard_format import ShardMissingError, fast_path_supported
from terracube.pipeline.corpus.shard_reader import ShardReader
from terracube.pipeline.corpus.shard_whole import WholeShardReader
from terracube.pipeline.corpus.shard_window import EncodedWindow
from terracube.pipeline.corpus.store import Corpus
from terracube.pipeline.corpus.zstd_into import ZstdInto
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["CorpusStream", "LoaderItem", "dist_rank_world"]


def dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CorpusStream(IterableDataset):
    """Shard-aware stream of `LoaderItem`s for one rank (see module and `data/plan.py` docs)."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        params: LoaderParams,
        storage_options: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch_shards: int = PREFETCH_SHARDS,
        groups: Sequence[str] | None = None,
    ) -> None:
        """`groups`: read only these band groups (default: every group of the corpus)."""
        super().__init__()
        if prefetch_shards < 0:
            raise ValueError(f"prefetch_shards={prefetch_shards}; use 0 (off) or more")
        self.prefetch_shards = prefetch_shards
        """Remote stores: shards fetched ahead, all their arrays in one concurrent wave
        (0: every array of a shard read in turn, when needed)."""
        self.fallbacks = 0
        """Fast-path read attempts that fell back to zarr here (see LoaderItem.fallbacks)."""
        default_rank, default_world = dist_rank_world()
        self.store = os.fspath(store)
        self.storage_options = dict(storage_options or {})
        self.params = params
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        Slot(self.rank, self.world_size)  # validates
        corpus = self._open()
        self.complete = corpus.format_version >= COMPLETE_SHARDS_SINCE
        """Format 2: a missing shard file or chunk is damage (`ShardMissingError`)."""
        self.faults = ReadFaults()
        self.n_periods = corpus.n_periods
        self.groups = tuple(corpus.params.groups)
        if groups is not None:
            unknown = sorted(set(groups) - set(self.groups))
            if unknown:
                raise ValueError(f"groups {unknown} are not in {self.store!r} ({self.groups})")
            self.groups = tuple(g for g in self.groups if g in groups)
        temporal = sum(band_group(g).temporal for g in self.groups)
        self.shape = TokenShape(temporal, len(self.groups) - temporal, corpus.n_periods)
        check_budget(params, self.shape)
        states = readable_states(corpus, "the loader (to know which samples to read)")
        done = np.stack([s == SampleState.DONE for s in states.values()])
        self.done = {m: s == SampleState.DONE for m, s in states.items()}
        any_done = cast(np.ndarray, done.any(axis=0))  # 2-D reduced: an array, not np.bool_
        self.eligible = [[i for i in span if any_done[i]] for span in corpus.shards]
        self.shard_spans = corpus.shards
        stats = read_stats(corpus)
        self.normalizers = {g: group_normalizer(g, stats) for g in self.groups}
        self.pack_items = False
        """Set by StreamingLoader: workers send each batch as one `Packed` buffer."""
        self.ring: ArenaRing | None = None
        """Set by StreamingLoader before its workers start: reusable shared batch slots."""
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        """(epoch, start) in shared memory: persistent workers see each new epoch's position."""
        self._handles: tuple[int, dict[str, Any]] | None = None
        self._readers: dict[str, ShardReader] = {}
        """Band-group arrays read window by window."""
        self._whole_readers: dict[str, WholeShardReader] = {}
        """Per-sample metadata arrays read a whole shard at a time."""

    # ------------------------------------------------------------------ planning
    def _open(self) -> Corpus:
        return Corpus.open(self.store, self.storage_options or None)

    def set_position(self, epoch: int, start: int) -> None:
        """Where the next iteration begins: epoch and rank batches already consumed."""
        self._position[0], self._position[1] = epoch, start

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @property
    def start(self) -> int:
        return int(self._position[1])

    def batches_in_epoch(self, epoch: int, num_workers: int) -> int:
        slot = Slot(self.rank, self.world_size, 0, max(1, num_workers))
        return rank_batch_count(self.eligible, self.params, epoch, slot)

    def plans(self, epoch: int, worker: int, num_workers: int, start: int = 0) -> list[BatchPlan]:
        slot = Slot(self.rank, self.world_size, worker, num_workers)
        return plan_worker(self.eligible, self.params, self.shape, epoch, slot, start)

    # ------------------------------------------------------------------ reading
    def _arrays(self) -> dict[str, Any]:
        """Array handles and shard readers, opened once per process (a group lookup re-reads
        metadata; a reader keeps its scratch buffer). Keyed by pid: a forked worker reopens."""
        if self._handles is not None and self._handles[0] == os.getpid():
            return self._handles[1]
        corpus = self._open()
        names = [*self.groups, *self._metadata_names()]
        arrays: dict[str, Any] = {name: corpus.array(name) for name in names}
        zstd = ZstdInto()  # one decompression context for every array of this process
        fast = {name: arr for name, arr in arrays.items() if fast_path_supported(arr)}
        self._readers = {
            g: ShardReader(arr, zstd, self.complete)
            for g, arr in fast.items()
            if g in self.groups and arr.chunks[0] == 1
        }
        self._whole_readers = {
            name: WholeShardReader(arr, zstd, self.complete)
            for name, arr in fast.items()
            if name not in self.groups
        }
        self._handles = (os.getpid(), arrays)
        return arrays

    @property
    def fast_path_arrays(self) -> frozenset[str]:
        """Arrays this process reads through the compiled shard path (the rest: zarr)."""
        self._arrays()
        return frozenset(self._readers) | frozenset(self._whole_readers)

    def _read_group(
        self, arr: Any, g: str, k: int, windows: dict[int, Window]
    ) -> tuple[dict[int, EncodedWindow | np.ndarray | None], int, int]:
        """Windows of shard k's wanted samples (by sample id) of one group — compressed
        (`EncodedWindow`, decoded at assembly) or, through the zarr fallback, values — and
        the errors and bytes decoded so far."""
        start = self.shard_spans[k].start
        reader = self._readers.get(g)
        if reader is not None:
            try:
                fetched = reader.fetch(k, {i - start: w for i, w in windows.items()})
                return {i: fetched[i - start] for i in windows}, 0, 0
            except Exception as exc:  # any store or index error: fall back per sample
                self.fallbacks += 1
                self.faults.note(g, k, exc, "reading its samples one by one")
                if isinstance(exc, ShardMissingError):  # zarr would read it as fill values
                    return dict.fromkeys(windows), len(windows), 0
        rows: dict[int, EncodedWindow | np.ndarray | None] = {}
        errors = nbytes = 0
        for i, window in windows.items():
            row = self._read_sample(arr, g, i, window)
            rows[i] = row
            errors += row is None
            nbytes += 0 if row is None else row.nbytes
        return rows, errors, nbytes

    def _read_sample(self, arr: Any, g: str, sample: int, window: Window) -> np.ndarray | None:
        """One sample's window through zarr; None (noted) when that fails too."""
        try:
            return np.asarray(arr[(sample, *(slice(a, b) for a, b in window))])
        except Exception as exc:
            shard = sample // len(self.shard_spans[0])
            self.faults.note(g, shard, exc, f"sample {sample} left out")
            return None

    def _place(
        self, g: str, sample: int, data: EncodedWindow | np.ndarray, target: np.ndarray
    ) -> tuple[bool, int]:
        """Write one sample's window of group g into the batch: (done, bytes decoded). A
        window whose chunks fail to decode is read again through zarr, then given up."""
        if isinstance(data, EncodedWindow):
            try:
                return True, data.copy_to(target)
            except Exception as exc:
                self.fallbacks += 1
                shard = sample // len(self.shard_spans[0])
                self.faults.note(g, shard, exc, "reading it again through zarr")
                if isinstance(exc, ShardMissingError):
                    return False, 0
                retry = self._read_sample(self._arrays()[g], g, sample, data.plan.window)
                if retry is None:
                    return False, 0
                data = retry
        target[...] = data
        return True, 0

    def _whole(self, arrays: dict[str, Any], name: str, k: int) -> np.ndarray:
        """A small per-sample array's shard k (valid fractions, period starts)."""
        reader = self._whole_readers.get(name)
        if reader is not None:
            return reader.read_whole(k)
        span = self.shard_spans[k]
        return np.asarray(arrays[name][span.start : span.stop])

    def _shard_windows(
        self, k: int, wanted: Mapping[int, tuple[BatchPlan, int]]
    ) -> dict[str, dict[int, Window]]:
        """group -> {sample: window} of shard k's wanted samples."""
        mine = [i for i in self.shard_spans[k] if i in wanted]
        return {g: {i: sample_window(g, *wanted[i]) for i in mine} for g in self.groups}

    def _metadata_names(self) -> list[str]:
        return [*(f"{g}_valid_fraction" for g in self.groups), "period_start"]

    async def _fetch_remote_shard(
        self, k: int, windows: dict[str, dict[int, Window]]
    ) -> dict[str, Any]:
        """Every group's windows and every metadata array of remote shard k, fetched in one
        concurrent wave (an error is returned in its entry, not raised)."""
        start = self.shard_spans[k].start
        jobs: dict[str, Any] = {}
        for g, group_windows in windows.items():
            reader = self._readers.get(g)
            if reader is not None and not reader.local:
                local = {i - start: w for i, w in group_windows.items()}
                jobs[g] = reader.fetch_async(k, local)
        for name in self._metadata_names():
            whole = self._whole_readers.get(name)
            if whole is not None and not whole.local:
                jobs[name] = whole.fetch_whole_async(k)
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        return dict(zip(jobs, results, strict=True))

    def _read_shard(
        self,
        arrays: dict[str, Any],
        k: int,
        wanted: dict[int, tuple[BatchPlan, int]],
        fetched: dict[str, Any] | None = None,
    ) -> tuple[dict[int, SampleCrop], int]:
        """Shard k's wanted samples cut to their windows (groups that failed to read in
        `SampleCrop.failed`), and the bytes decoded. `fetched`: what
        `_fetch_remote_shard` got for it ahead of time (remote stores)."""
        span = self.shard_spans[k]
        windows = self._shard_windows(k, wanted)
        mine = list(windows[self.groups[0]])
        crops = {i: SampleCrop({}, {}, np.zeros(0, np.int64)) for i in mine}
        fetched = fetched or {}
        nbytes = 0
        for g in self.groups:
            temporal = band_group(g).temporal
            got = fetched.get(g)
            if isinstance(got, ShardMissingError):
                self.faults.note(g, k, got, "its samples left out")
                rows, group_bytes = dict.fromkeys(windows[g]), 0
            elif got is None or isinstance(got, BaseException):
                if got is not None:
                    self.fallbacks += 1
                    self.faults.note(g, k, got, "reading it again")
                rows, _, group_bytes = self._read_group(arrays[g], g, k, windows[g])
            else:
                rows, group_bytes = {i: got[i - span.start] for i in windows[g]}, 0
            nbytes += group_bytes
            fraction = self._metadata(arrays, f"{g}_valid_fraction", k, fetched)
            done = self.done[band_group(g).modality][span.start : span.stop]
            if fraction is None:  # unreadable: nothing of the group can be trusted
                fraction = np.zeros(len(done), dtype=np.float32)
                rows = dict.fromkeys(rows)
            # (shard samples, T or 1): timestep present and modality done, in one pass
            present = (fraction.reshape(len(done), -1) > 0) & done[:, None]
            for i in mine:
                crops[i].data[g] = rows[i]
                if rows[i] is None:
                    crops[i].failed.add(g)
                if temporal:
                    plan, b = wanted[i]
                    start = plan.starts[b]
                    crops[i].present[g] = present[
                        i - span.start, start : start + plan.geometry.timesteps
                    ]
                else:
                    crops[i].present[g] = present[i - span.start]
        days = self._metadata(arrays, "period_start", k, fetched)
        if days is None:  # unknown months: leave the shard's samples out entirely
            days = np.zeros((len(span), self.n_periods), np.int64)
            for crop in crops.values():
                crop.present = {g: np.zeros_like(p) for g, p in crop.present.items()}
                crop.failed.update(self.groups)
        months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
        for i in mine:
            plan, b = wanted[i]
            start = plan.starts[b]
            crops[i].months = months[i - span.start, start : start + plan.geometry.timesteps]
        return crops, nbytes

    def _metadata(
        self, arrays: dict[str, Any], name: str, k: int, fetched: Mapping[str, Any]
    ) -> np.ndarray | None:
        """A per-sample metadata array's shard k, from prefetched bytes when there are any;
        None (noted) when it cannot be read."""
        got = fetched.get(name)
        reader = self._whole_readers.get(name)
        if reader is not None and got is not None and not isinstance(got, BaseException):
            try:
                return reader.whole_from(k, got)
            except Exception as exc:
                self.fallbacks += 1
                self.faults.note(name, k, exc, "reading it again")
                if isinstance(exc, ShardMissingError):
                    return None
        try:
            return self._whole(arrays, name, k)
        except Exception as exc:
            self.faults.note(name, k, exc, "its samples left out")
            return None

    def max_batch_bytes(self) -> int:
        """Upper bound of one batch's bytes in a ring slot, for the largest geometry the
        params allow."""
        b = self.params.batch_size
        return max(
            carve_bytes(arena_specs(self.groups, geo, b, self.params.num_views))
            for geo in possible_geometries(self.params, self.shape)
        )

    def _assemble(self, plan: BatchPlan, crops: list[SampleCrop]) -> LoaderItem:
        """Storage values and validity at native resolution, in one (shared) arena: a ring
        slot of this worker's when one is free (see `data/transport.py`)."""
        geo = plan.geometry
        specs = arena_specs(self.groups, geo, len(crops), self.params.num_views)
        info = get_worker_info()
        used = carve_bytes(specs)
        claim = None
        ring = self.ring
        if ring is not None and info is not None and self.pack_items and used <= ring.slot_bytes:
            claim = ring.claim(info.id)
        if claim is not None:
            arena = iter(carve(specs, shared=True, region=claim[1]))
        else:
            arena = iter(carve(specs, shared=self.pack_items and info is not None))
        raw: dict[str, torch.Tensor] = {}
        valid: dict[str, torch.Tensor] = {}
        errors = decoded = 0
        for g in self.groups:
            raw[g], valid[g] = next(arena), next(arena)
            values, ok = raw[g].numpy(), valid[g].numpy()
            temporal = band_group(g).temporal
            rows = np.zeros(ok.shape[:2], dtype=bool)  # (B, T): placed and present
            for b, (sample, crop) in enumerate(zip(plan.samples, crops, strict=True)):
                data, present = crop.data[g], crop.present[g]
                # a failed read of a done modality is lost data; of another, nothing lost
                errors += g in crop.failed and bool(self.done[band_group(g).modality][sample])
                placed = False
                if data is not None and present.any():
                    target = values[b] if temporal else values[b, 0]
                    placed, nbytes = self._place(g, sample, data, target)
                    errors += not placed
                    decoded += nbytes
                if placed:
                    rows[b] = present
                else:
                    values[b] = 0
            self.normalizers[g].pixel_valid(values, present=rows, out=ok)
        months = next(arena)
        np.stack([c.months for c in crops], out=months.numpy())
        batch = RawBatch(raw, valid, months, patch_size=geo.patch, crop=geo.crop)
        generator, p = torch.Generator().manual_seed(plan.masking_seed), self.params
        views = mask_batch(batch, generator, p.num_views, out=next(arena), params=p.masking)
        return LoaderItem(
            batch,
            views,
            plan.samples,
            plan.epoch,
            plan.index,
            decode_errors=errors,
            decoded_bytes=decoded,
            normalizers=self.normalizers,
            _slot=None if claim is None else (claim[0], claim[1], used),
        )

    def __iter__(self) -> Iterator[LoaderItem | Packed]:
        """This worker's batches; `Packed` (one shared buffer each) when `pack_items` is set
        and this runs in a DataLoader worker (`StreamingLoader` sets it and unpacks)."""
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        plans = self.plans(self.epoch, worker, num_workers, self.start)
        if info is not None and self.pack_items:
            for item in self.iter_plans(plans):
                slot, item._slot = item._slot, None
                item.normalizers = {}  # the receiver attaches its own (`StreamingLoader`)
                if slot is not None:
                    yield pack(item, slot=slot)
                else:
                    yield pack(item, arena=next(iter(item.raw.raw.values())))
        else:
            yield from self.iter_plans(plans)

    def iter_plans(self, plans: list[BatchPlan]) -> Iterator[LoaderItem]:
        """Read shards lazily in stream order; a sample's crop lives until its batch is built.
        From a remote store the next shards' bytes are fetched while this one decodes."""
        arrays = self._arrays()
        shard_of = {s: k for k, span in enumerate(self.shard_spans) for s in span}
        wanted = {s: (p, b) for p in plans for b, s in enumerate(p.samples)}
        order = list(dict.fromkeys(shard_of[s] for p in plans for s in p.samples))
        remote = any(not r.local for r in (*self._readers.values(), *self._whole_readers.values()))
        ahead = (
            ShardPrefetcher(
                self._fetch_remote_shard,
                {k: self._shard_windows(k, wanted) for k in order},
                self.prefetch_shards,
            )
            if remote and self.prefetch_shards
            else None
        )
        ready: dict[int, SampleCrop] = {}
        reported = self.fallbacks
        for plan in plans:
            decoded = 0
            for sample in plan.samples:
                if sample in ready:
                    continue
                k = shard_of[sample]
                fetched = None if ahead is None else ahead.take(k)
                crops, nbytes = self._read_shard(arrays, k, wanted, fetched)
                ready.update(crops)
                decoded += nbytes
            item = self._assemble(plan, [ready.pop(s) for s in plan.samples])
            item.decoded_bytes += decoded
            item.fallbacks, reported = self.fallbacks - reported, self.fallbacks
            item.bad_shards = self.faults.take()
            for sample in plan.samples:
                wanted.pop(sample)
            yield item
