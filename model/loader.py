"""Streaming loader: corpus shards -> normalised, cropped, masked `Batch`es.

`CorpusStream` is a torch `IterableDataset` that yields whole batches (the
DataLoader runs with `batch_size=None`): a batch needs one crop size, patch size
and timestep count shared by its samples, and forming it in the worker lets the
worker do the modality-aware masking too. What each worker reads and in which
order is planned purely in `loader_plan`; this module only does the reads.

Reads are whole shards: one zarr read per array per shard, samples split out of
the block and kept until the shuffle buffer emits them. A read that fails to
decode falls back to per-sample reads of that shard; a (sample, group) that
still fails is logged, counted in `LoaderItem.decode_errors`, and treated like
a missing modality (all pixels invalid), so batch counts — and therefore DDP
step counts and resume positions — never change.

`StreamingLoader` wraps the DataLoader across epochs, restores rank-order of the
workers' batches, tracks the position (epoch, batches consumed) that a
checkpoint stores, and resumes the stream exactly from it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from terracube.catalog.registry import BASE_RESOLUTION_M, band_group
from terracube.model.batch import Batch
from terracube.model.loader_plan import (
    BatchPlan,
    LoaderParams,
    Slot,
    TokenShape,
    check_budget,
    plan_worker,
    rank_batch_count,
)
from terracube.model.masking import ViewMasks, mask_batch
from terracube.model.normalize_stats import GroupNormalizer, group_normalizer, read_stats
from terracube.pipeline.corpus import Corpus
from terracube.pipeline.corpus_schema import SampleState, is_temporal
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger(__name__)


@dataclass
class LoaderItem:
    """One batch as the training loop receives it."""

    batch: Batch
    views: list[ViewMasks]
    samples: tuple[int, ...]
    epoch: int
    index: int
    decode_errors: int = 0
    decoded_bytes: int = 0


@dataclass
class _Shard:
    """Decoded arrays of one shard, split per sample (None = failed to decode)."""

    data: dict[str, list[np.ndarray | None]]
    valid_fraction: dict[str, np.ndarray]
    period_start: np.ndarray
    errors: int
    nbytes: int


def dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CorpusStream(IterableDataset):
    """Shard-aware stream of `LoaderItem`s for one rank (see module and loader_plan docs)."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        params: LoaderParams,
        storage_options: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        default_rank, default_world = dist_rank_world()
        self.store = os.fspath(store)
        self.storage_options = dict(storage_options or {})
        self.params = params
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        Slot(self.rank, self.world_size)  # validates
        corpus = self._open()
        self.n_periods = corpus.n_periods
        self.groups = tuple(corpus.params.groups)
        temporal = sum(is_temporal(band_group(g)) for g in self.groups)
        self.shape = TokenShape(temporal, len(self.groups) - temporal, corpus.n_periods)
        check_budget(params, self.shape)
        states = {m: corpus.states(m) for m in corpus.params.modalities}
        done = np.stack([s == SampleState.DONE for s in states.values()])
        self.done = {m: s == SampleState.DONE for m, s in states.items()}
        any_done = done.any(axis=0)
        self.eligible = [[i for i in span if any_done[i]] for span in corpus.shards]
        self.shard_spans = corpus.shards
        stats = read_stats(corpus)
        self.normalizers = {g: group_normalizer(g, stats) for g in self.groups}
        self.epoch = 0
        self.start = 0
        self._corpus: Corpus | None = None

    # ------------------------------------------------------------------ planning
    def _open(self) -> Corpus:
        return Corpus.open(self.store, self.storage_options or None)

    def set_position(self, epoch: int, start: int) -> None:
        """Where the next iteration begins: epoch and rank batches already consumed."""
        self.epoch, self.start = epoch, start

    def batches_in_epoch(self, epoch: int, num_workers: int) -> int:
        slot = Slot(self.rank, self.world_size, 0, max(1, num_workers))
        return rank_batch_count(self.eligible, self.params, epoch, slot)

    def plans(self, epoch: int, worker: int, num_workers: int, start: int = 0) -> list[BatchPlan]:
        slot = Slot(self.rank, self.world_size, worker, num_workers)
        return plan_worker(self.eligible, self.params, self.shape, epoch, slot, start)

    # ------------------------------------------------------------------ reading
    def _read_shard(self, corpus: Corpus, k: int) -> _Shard:
        span = self.shard_spans[k]
        data: dict[str, list[np.ndarray | None]] = {}
        errors = nbytes = 0
        for g in self.groups:
            arr = corpus.array(g)
            try:
                block = np.asarray(arr[span.start : span.stop])
                # copies, so a sample lingering in the shuffle buffer frees the rest of its shard
                data[g] = [row.copy() for row in block]
                nbytes += block.nbytes
            except Exception as exc:  # any codec/store error: fall back per sample
                log.warning("shard %d of %s failed to decode (%s); reading per sample", k, g, exc)
                rows: list[np.ndarray | None] = []
                for i in span:
                    try:
                        row = np.asarray(arr[i])
                        rows.append(row)
                        nbytes += row.nbytes
                    except Exception as row_exc:
                        log.warning("sample %d of %s skipped: %s", i, g, row_exc)
                        rows.append(None)
                        errors += 1
                data[g] = rows
        fractions = {
            g: np.asarray(corpus.array(f"{g}_valid_fraction")[span.start : span.stop])
            for g in self.groups
        }
        period_start = np.asarray(corpus.array("period_start")[span.start : span.stop])
        return _Shard(data, fractions, period_start, errors, nbytes)

    def _assemble(self, plan: BatchPlan, rows: dict[int, tuple[_Shard, int]]) -> LoaderItem:
        geo = plan.geometry
        t = geo.timesteps
        data: dict[str, torch.Tensor] = {}
        valid: dict[str, torch.Tensor] = {}
        errors = 0
        for g in self.groups:
            group = band_group(g)
            temporal = is_temporal(group)
            factor = int(group.resolution // BASE_RESOLUTION_M)
            side = geo.crop // factor
            norm: GroupNormalizer = self.normalizers[g]
            n_bands, steps = len(group.bands), (t if temporal else 1)
            raw = np.zeros((len(plan.samples), steps, n_bands, side, side), dtype=group.dtype)
            ok = np.zeros((len(plan.samples), steps), dtype=bool)
            for b, sample in enumerate(plan.samples):
                shard, k = rows[sample]
                arr = shard.data[g][k]
                if arr is None:
                    errors += 1
                    continue
                if not self.done[group.modality][sample]:
                    continue
                y, x = plan.offsets[b][0] // factor, plan.offsets[b][1] // factor
                window = slice(plan.starts[b], plan.starts[b] + t)
                if temporal:
                    raw[b] = arr[window, :, y : y + side, x : x + side]
                    ok[b] = shard.valid_fraction[g][k][window] > 0
                else:
                    raw[b, 0] = arr[:, y : y + side, x : x + side]
                    ok[b] = shard.valid_fraction[g][k] > 0
            pixel_ok = norm.pixel_valid(raw) & ok[:, :, None, None]
            channels = norm(raw, pixel_ok)
            if factor > 1:
                channels = channels.repeat(factor, axis=-2).repeat(factor, axis=-1)
                pixel_ok = pixel_ok.repeat(factor, axis=-2).repeat(factor, axis=-1)
            data[g] = torch.from_numpy(np.ascontiguousarray(channels))
            valid[g] = torch.from_numpy(np.ascontiguousarray(pixel_ok))
        months = np.zeros((len(plan.samples), t), dtype=np.int64)
        for b, sample in enumerate(plan.samples):
            shard, k = rows[sample]
            days = shard.period_start[k][plan.starts[b] : plan.starts[b] + t].astype(np.int64)
            months[b] = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
        batch = Batch(data, valid, torch.from_numpy(months), patch_size=geo.patch)
        generator = torch.Generator().manual_seed(plan.masking_seed)
        views = mask_batch(batch, generator, self.params.num_views)
        return LoaderItem(batch, views, plan.samples, plan.epoch, plan.index, errors)

    def __iter__(self) -> Iterator[LoaderItem]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        plans = self.plans(self.epoch, worker, num_workers, self.start)
        yield from self.iter_plans(plans)

    def iter_plans(self, plans: list[BatchPlan]) -> Iterator[LoaderItem]:
        """Read shards lazily in stream order; free each sample once its batch is built."""
        corpus = self._open()
        shard_of = {s: k for k, span in enumerate(self.shard_spans) for s in span}
        remaining = {s for p in plans for s in p.samples}
        rows: dict[int, tuple[_Shard, int]] = {}
        pending_errors = 0
        for plan in plans:
            decoded = 0
            for sample in plan.samples:
                if sample in rows:
                    continue
                k = shard_of[sample]
                shard = self._read_shard(corpus, k)
                pending_errors += shard.errors
                decoded += shard.nbytes
                span = self.shard_spans[k]
                for i in span:
                    if i in remaining:
                        rows[i] = (shard, i - span.start)
            item = self._assemble(plan, rows)
            item.decoded_bytes = decoded
            item.decode_errors = pending_errors
            pending_errors = 0
            for sample in plan.samples:
                remaining.discard(sample)
                rows.pop(sample, None)
            yield item


class StreamingLoader:
    """Epoch after epoch of one rank's batches, in order, with a resumable position."""

    def __init__(
        self, dataset: CorpusStream, num_workers: int = 0, prefetch_factor: int | None = 2
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.epoch = 0
        self.consumed = 0
        self.decode_errors = 0
        self.decoded_bytes = 0

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

    def _epoch_items(self) -> Iterator[LoaderItem]:
        self.dataset.set_position(self.epoch, self.consumed)
        if self.num_workers == 0:
            yield from self.dataset
            return
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor,
            collate_fn=_identity,
        )
        waiting: dict[int, LoaderItem] = {}
        expected = self.consumed
        for item in loader:
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
                raise ValueError(
                    f"{self.dataset.store!r} gives rank {self.dataset.rank} no batch in an epoch "
                    f"(done samples per shard: {[len(e) for e in self.dataset.eligible]}); "
                    "lower batch_size or build more samples"
                )
            for item in self._epoch_items():
                self.consumed += 1
                self.decode_errors += item.decode_errors
                self.decoded_bytes += item.decoded_bytes
                yield item
            self.epoch, self.consumed = self.epoch + 1, 0


def _identity(item: LoaderItem) -> LoaderItem:
    return item
