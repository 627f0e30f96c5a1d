"""Pure planning of one epoch of the streaming loader: no I/O, only sample indices.

Everything random is a function of counters — (seed, epoch, batch index, ...) —
drawn through numpy SeedSequences, so a plan is reproducible from the loader's
position alone and resuming never needs a saved RNG stream.

Split policy (documented contract):
- Shards are permuted per (seed, epoch); rank r takes every world_size-th shard
  of the permutation, then DataLoader worker w takes every num_workers-th of
  the rank's shards. No shard, hence no sample, goes to two slots. When
  shards % (ranks x workers) != 0 some slots get one shard more.
- Samples none of whose modalities is `done` are skipped.
- Each worker streams its shards in order through a bounded shuffle buffer and
  cuts the stream into batches of `batch_size`. With `drop_last=False` every
  eligible sample is seen exactly once per epoch (a worker's last batch may be
  short, ranks may get unequal batch counts). `drop_last=True` drops each
  worker's short tail.
- `equalize=True` (what DDP needs) caps every rank at the smallest rank's
  batch count, dropping the surplus batches of the larger ranks at the end of
  the epoch; counts are known up front from the state arrays alone.
- A rank's batches are numbered j = 0, 1, ... in DataLoader round-robin order
  over its workers. Batch geometry (crop size, patch size, timesteps) is a
  function of (seed, epoch, j) only: every rank uses the same geometry at the
  same step, so DDP ranks do equal work per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from terracube.catalog.bands import BASE_RESOLUTION_M, TILE_SIZE_M
from terracube.catalog.registry import BAND_GROUPS, band_group
from terracube.model.train.masking import MaskingParams
from terracube.pipeline.corpus.shard_geometry import Window

TILE_PIXELS = TILE_SIZE_M // BASE_RESOLUTION_M
"""Edge of a tile on the shared 10 m grid."""

CROP_ALIGN = int(max(g.resolution for g in BAND_GROUPS.values()) // BASE_RESOLUTION_M)
"""Crops start and end on multiples of this many 10 m pixels, so the coarsest group
(40 m) upsamples by whole-pixel repeats without resampling."""

_GEOMETRY, _OFFSETS, _SHARDS, _BUFFER, _MASKING = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class LoaderParams:
    """What the loader draws and how it splits an epoch (see the module doc)."""

    batch_size: int = 8
    crop_sizes: tuple[int, ...] = (32, 64, 128)
    patch_sizes: tuple[int, ...] = (4, 8)
    token_budget: int = 4096
    shuffle_buffer: int = 64
    seed: int = 0
    drop_last: bool = False
    equalize: bool = False
    num_views: int = 2
    masking: MaskingParams = field(default_factory=MaskingParams)
    """How each view is masked (in the workers); the YAML `masking:` section."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}; it must be >= 1")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer={self.shuffle_buffer}; it must be >= 1")
        if not self.crop_sizes or not self.patch_sizes:
            raise ValueError("crop_sizes and patch_sizes must each list at least one size")
        for c in self.crop_sizes:
            if c % CROP_ALIGN or not CROP_ALIGN <= c <= TILE_PIXELS:
                raise ValueError(
                    f"crop size {c} px: use a multiple of {CROP_ALIGN} between {CROP_ALIGN} and "
                    f"{TILE_PIXELS} (the 40 m group must upsample by whole pixels)"
                )
        for p in self.patch_sizes:
            if not 1 <= p <= 8:
                raise ValueError(f"patch size {p}: FlexiViT patch sizes are 1..8")
            if not any(c % p == 0 for c in self.crop_sizes):
                raise ValueError(f"patch size {p} divides none of crop_sizes {self.crop_sizes}")


@dataclass(frozen=True)
class Slot:
    """Who reads: a DDP rank and a DataLoader worker of it."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} is outside world_size={self.world_size}")
        if not 0 <= self.worker < self.num_workers:
            raise ValueError(f"worker={self.worker} is outside num_workers={self.num_workers}")


@dataclass(frozen=True)
class TokenShape:
    """How many band groups a batch carries: temporal ones count once per timestep."""

    temporal_groups: int
    static_groups: int
    n_periods: int

    def tokens(self, crop: int, patch: int, timesteps: int) -> int:
        per_group = (crop // patch) ** 2
        return (self.temporal_groups * timesteps + self.static_groups) * per_group


@dataclass(frozen=True)
class BatchGeometry:
    crop: int
    patch: int
    timesteps: int


@dataclass(frozen=True)
class BatchPlan:
    """One batch: which samples, where each is cropped and which periods it keeps."""

    epoch: int
    index: int
    """j: position of this batch in its rank's stream for the epoch."""
    worker: int
    samples: tuple[int, ...]
    geometry: BatchGeometry
    offsets: tuple[tuple[int, int], ...]
    """(y, x) upper-left of each crop on the 10 m grid."""
    starts: tuple[int, ...]
    """First period of each sample's timestep window."""
    masking_seed: int


def sample_window(group: str, plan: BatchPlan, b: int) -> Window:
    """What sample b of `plan` needs of `group`: its timestep window, every band, its crop.

    The loader reads exactly this, and the benchmark's decode floor decodes the same chunks.
    """
    g = band_group(group)
    factor = int(g.resolution // BASE_RESOLUTION_M)
    side = plan.geometry.crop // factor
    y, x = plan.offsets[b][0] // factor, plan.offsets[b][1] // factor
    spatial = ((0, len(g.bands)), (y, y + side), (x, x + side))
    if g.temporal:
        return ((plan.starts[b], plan.starts[b] + plan.geometry.timesteps), *spatial)
    return spatial


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def fitting_crops(params: LoaderParams, shape: TokenShape, patch: int) -> list[int]:
    """Crops of `patch`-multiple size whose single-timestep token count fits the budget."""
    return [
        c
        for c in params.crop_sizes
        if c % patch == 0 and shape.tokens(c, patch, 1) <= params.token_budget
    ]


def check_budget(params: LoaderParams, shape: TokenShape) -> None:
    """Raise naming the setting when some patch size has no crop within the token budget."""
    for p in params.patch_sizes:
        if not fitting_crops(params, shape, p):
            smallest = min((c for c in params.crop_sizes if c % p == 0), default=None)
            need = shape.tokens(smallest, p, 1) if smallest else None
            raise ValueError(
                f"token_budget={params.token_budget} fits no crop at patch size {p} "
                f"(the smallest, {smallest} px, needs {need} tokens for one timestep of "
                f"{shape.temporal_groups + shape.static_groups} groups): raise token_budget, "
                "add smaller crop_sizes or drop that patch size"
            )


def draw_geometry(params: LoaderParams, shape: TokenShape, epoch: int, j: int) -> BatchGeometry:
    """Patch size, then a crop that fits, then as many timesteps as the budget allows."""
    rng = _rng(params.seed, epoch, j, _GEOMETRY)
    patch = int(rng.choice(params.patch_sizes))
    crop = int(rng.choice(fitting_crops(params, shape, patch)))
    return _with_timesteps(shape, params.token_budget, crop, patch)


def _with_timesteps(shape: TokenShape, budget: int, crop: int, patch: int) -> BatchGeometry:
    """As many timesteps as the token budget allows at this crop and patch size."""
    if shape.temporal_groups == 0:
        return BatchGeometry(crop, patch, 1)
    room = budget // (crop // patch) ** 2 - shape.static_groups
    return BatchGeometry(crop, patch, max(1, min(shape.n_periods, room // shape.temporal_groups)))


def possible_geometries(params: LoaderParams, shape: TokenShape) -> list[BatchGeometry]:
    """Every geometry `draw_geometry` can return (to size buffers before any draw)."""
    return [
        _with_timesteps(shape, params.token_budget, crop, patch)
        for patch in params.patch_sizes
        for crop in fitting_crops(params, shape, patch)
    ]


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    return [int(s) for s in _rng(seed, epoch, _SHARDS).permutation(n_shards)]


def slot_shards(n_shards: int, seed: int, epoch: int, slot: Slot) -> list[int]:
    rank_shards = shard_order(n_shards, seed, epoch)[slot.rank :: slot.world_size]
    return rank_shards[slot.worker :: slot.num_workers]


def buffer_shuffle(
    shard_samples: Sequence[Sequence[int]], size: int, rng: np.random.Generator
) -> list[int]:
    """The order a bounded shuffle buffer emits samples read shard after shard."""
    buffer: list[int] = []
    out: list[int] = []
    for samples in shard_samples:
        for s in samples:
            if len(buffer) < size:
                buffer.append(s)
                continue
            k = int(rng.integers(len(buffer)))
            out.append(buffer[k])
            buffer[k] = s
    out.extend(buffer[i] for i in rng.permutation(len(buffer)))
    return out


def _n_batches(n: int, params: LoaderParams) -> int:
    return n // params.batch_size if params.drop_last else -(-n // params.batch_size)


def worker_batch_counts(
    eligible: Sequence[Sequence[int]], params: LoaderParams, epoch: int, slot: Slot
) -> list[int]:
    """Batches of every worker of `slot.rank`, before equalisation (counts need no shuffle)."""
    counts = []
    for w in range(slot.num_workers):
        shards = slot_shards(
            len(eligible),
            params.seed,
            epoch,
            Slot(slot.rank, slot.world_size, w, slot.num_workers),
        )
        counts.append(_n_batches(sum(len(eligible[s]) for s in shards), params))
    return counts


def round_robin(counts: Sequence[int], limit: int | None = None) -> list[tuple[int, int]]:
    """(worker, local batch) in the order a DataLoader yields them: worker 0, 1, ... skipping
    exhausted workers; at most `limit` entries."""
    order: list[tuple[int, int]] = []
    total = sum(counts) if limit is None else min(limit, sum(counts))
    local = [0] * len(counts)
    while len(order) < total:
        for w, n in enumerate(counts):
            if local[w] < n and len(order) < total:
                order.append((w, local[w]))
                local[w] += 1
    return order


def rank_batch_count(
    eligible: Sequence[Sequence[int]], params: LoaderParams, epoch: int, slot: Slot
) -> int:
    """Batches rank `slot.rank` yields this epoch (after equalisation)."""
    totals = [
        sum(
            worker_batch_counts(
                eligible, params, epoch, Slot(r, slot.world_size, 0, slot.num_workers)
            )
        )
        for r in range(slot.world_size)
    ]
    return min(totals) if params.equalize else totals[slot.rank]


def plan_worker(
    eligible: Sequence[Sequence[int]],
    params: LoaderParams,
    shape: TokenShape,
    epoch: int,
    slot: Slot,
    start: int = 0,
) -> list[BatchPlan]:
    """The batches worker `slot.worker` of `slot.rank` yields, from rank batch `start` on.

    `eligible[k]` lists the samples of shard k that the loader may read.
    """
    counts = worker_batch_counts(eligible, params, epoch, slot)
    order = round_robin(counts, rank_batch_count(eligible, params, epoch, slot))
    mine = [(j, i) for j, (w, i) in enumerate(order) if w == slot.worker]
    shards = slot_shards(len(eligible), params.seed, epoch, slot)
    stream = buffer_shuffle(
        [eligible[s] for s in shards],
        params.shuffle_buffer,
        _rng(params.seed, epoch, slot.rank, slot.worker, _BUFFER),
    )
    plans = []
    for j, i in mine:
        if j < start:
            continue
        samples = tuple(stream[i * params.batch_size : (i + 1) * params.batch_size])
        geometry = draw_geometry(params, shape, epoch, j)
        rng = _rng(params.seed, epoch, slot.rank, j, _OFFSETS)
        steps = (TILE_PIXELS - geometry.crop) // CROP_ALIGN + 1
        yx = rng.integers(0, steps, size=(len(samples), 2)) * CROP_ALIGN
        window = shape.n_periods - geometry.timesteps + 1
        starts = rng.integers(0, window, size=len(samples))
        masking = _rng(params.seed, epoch, slot.rank, j, _MASKING)
        plans.append(
            BatchPlan(
                epoch=epoch,
                index=j,
                worker=slot.worker,
                samples=samples,
                geometry=geometry,
                offsets=tuple((int(y), int(x)) for y, x in yx),
                starts=tuple(int(s) for s in starts),
                masking_seed=int(masking.integers(2**62)),
            )
        )
    return plans
