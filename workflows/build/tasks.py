"""The one task a worker runs: build the samples of one corpus shard and write that shard.

A task carries references, not items: where the saved plan is (`PlanRef`), its sample
range and what to build. The worker reads its rows of the plan (a few row groups, see
`catalog/plan_store.py`), so a task pickles to a few KB where one carrying its
planned items was 0.4-1.6 MB (13-40 submissions/s). OSM features are the exception:
they are cut per tile on the client and travel with the task. It writes exactly one shard with `Corpus.write_shard`, whose
files are replaced atomically: a task killed mid-way leaves the shard as it was, and
Dask re-running it (on another worker) gives the same bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import geopandas as gpd
import numpy as np
from terracube.catalog.plan_store import PlanRef
from terracube.catalog.stac.egress import egress_proxy
from terracube.catalog.stac.items import NormalizedItem
from terracube.pipeline.corpus.store import Corpus, SampleData, SampleState
from terracube.pipeline.read.reader import PasteOrWarpReader
from terracube.pipeline.tile import BuildParams, TileInputs, build_tile, tile_sample
from terracube.workflows.build.shards import PlanIndex, groups_of, merge_sample

Signer = Callable[[str], str]
"""Turns an asset href into a readable one (e.g. a Planetary Computer SAS-signed URL)."""


def _signed_item(item: NormalizedItem, signer: Signer) -> NormalizedItem:
    mask = replace(item.mask, href=signer(item.mask.href)) if item.mask is not None else None
    assets = tuple(replace(ref, href=signer(ref.href)) for ref in item.assets)
    return replace(item, assets=assets, mask=mask)


def sign_inputs(inputs: TileInputs, signers: Mapping[str, Signer]) -> TileInputs:
    """The inputs with the hrefs of `signers`' modalities signed (done on the worker, just
    before reading, because signatures expire)."""
    if not signers:
        return inputs
    temporal = {
        name: [[_signed_item(i, signers[name]) for i in period] for period in periods]
        if name in signers
        else periods
        for name, periods in inputs.temporal.items()
    }
    static = {
        name: [_signed_item(i, signers[name]) for i in items] if name in signers else items
        for name, items in inputs.static.items()
    }
    return replace(inputs, temporal=temporal, static=static)


class TileBuilder(Protocol):
    """Builds the given corpus band groups of one tile; must be picklable (it ships to workers)."""

    def __call__(self, inputs: TileInputs, groups: Sequence[str]) -> SampleData: ...


@dataclass(frozen=True)
class PipelineTileBuilder:
    """The pipeline's `build_tile` with fixed parameters (reads with stackstac).

    `read_scheduler` is the local Dask scheduler stackstac computes a read with inside
    the task. The pipeline reads each band group as one chunk per tile, so threads
    have nothing to overlap; "synchronous" keeps a one-thread worker on one core.
    """

    params: BuildParams = field(default_factory=BuildParams)
    read_scheduler: str = "synchronous"
    internal_hosts: frozenset[str] = frozenset()
    """Internal hosts the config allows reads to reach; every other connection GDAL opens
    for a remote href goes through this worker's egress check (`catalog/stac/egress.py`)."""

    def __call__(self, inputs: TileInputs, groups: Sequence[str]) -> SampleData:
        if not any(_remote(href) for href in input_hrefs(inputs)):
            reader = PasteOrWarpReader(scheduler=self.read_scheduler)
            return build_tile(inputs, groups, self.params, reader).sample
        proxy = egress_proxy(self.internal_hosts)
        before = len(proxy.refusals)
        reader = PasteOrWarpReader(scheduler=self.read_scheduler, gdal_options=proxy.gdal_options())
        sample = build_tile(inputs, groups, self.params, reader).sample
        refused = proxy.refusals[before:]
        if refused:  # say which hop was refused and why, not GDAL's bare "HTTP 403"
            why = (
                f"UnsafeHrefError: refused at connection time: {refused[0]}"
                + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
                + "; allow an internal host with `allowed_hosts` (docs/security.md)"
            )
            for name, state in sample.states.items():
                if state is SampleState.FAILED:
                    sample.errors[name] = why[:2000]
        return sample


def _remote(href: str) -> bool:
    return urlsplit(href).scheme.lower() in ("http", "https", "s3", "gs", "az")


def input_hrefs(inputs: TileInputs) -> Iterator[str]:
    """Every asset and mask href a tile's build may open."""
    items = [i for periods in inputs.temporal.values() for period in periods for i in period]
    items += [i for found in inputs.static.values() for i in found]
    for item in items:
        yield from (ref.href for ref in item.assets)
        if item.mask is not None:
            yield item.mask.href


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: which samples, which modalities each, and their planned inputs."""

    store: str
    storage_options: Mapping[str, Any]
    shard: int
    start: int
    stop: int
    plan: PlanRef
    todo: Mapping[int, tuple[str, ...]]
    builder: TileBuilder
    signers: Mapping[str, Signer] = field(default_factory=dict)
    """modality -> href signer applied on the worker right before the build."""
    carry_over: bool = True
    """False: the stored shard is damaged; nothing is read from it (`ShardWork.carry_over`)."""
    osm: Mapping[int, gpd.GeoDataFrame] = field(default_factory=dict)
    """sample -> its OSM features (only samples that build an OSM modality)."""

    def inputs(self) -> dict[int, TileInputs]:
        """sample -> planned inputs of the modalities to build (only samples with work)."""
        index = PlanIndex.from_files(self.plan.open(), self.start, self.stop)
        return {s: index.tile_inputs(s, m, self.osm.get(s)) for s, m in self.todo.items()}

    @property
    def key(self) -> str:
        """Dask key: stable per shard, so a resubmitted shard is recognisably the same work."""
        return f"terracube-shard-{self.shard}"


@dataclass(frozen=True)
class SampleOutcome:
    sample: int
    tile_id: str
    states: dict[str, int]
    errors: dict[str, str]
    rebuilt: tuple[str, ...]


@dataclass(frozen=True)
class ShardOutcome:
    shard: int
    samples: tuple[SampleOutcome, ...]
    seconds: float
    """Wall time of the task on its worker (build + write)."""
    build_seconds: float
    """Time in the tile builder alone: the useful work the scheduler overhead is weighed against."""
    worker: str


def _failed(inputs: TileInputs, modalities: Sequence[str], error: BaseException) -> SampleData:
    """A sample whose requested modalities all failed (the builder itself raised)."""
    message = f"{type(error).__name__}: {error}"[:2000]
    return tile_sample(
        inputs,
        states={m: SampleState.FAILED for m in modalities},
        errors={m: message for m in modalities},
    )


def run_shard_task(task: ShardTask) -> ShardOutcome:
    """Build the shard's pending samples, carry the finished ones over, write the shard once."""
    started = time.perf_counter()
    corpus = Corpus.open(task.store, dict(task.storage_options), writable=True)
    if corpus.shards[task.shard] != range(task.start, task.stop):
        raise ValueError(
            f"shard {task.shard} of {task.store} holds samples {corpus.shards[task.shard]}, "
            f"the task expected {task.start}..{task.stop - 1}; the plan and the store disagree"
        )
    corpus_groups = corpus.params.groups
    samples: list[SampleData | None] = []
    outcomes = []
    build_seconds = 0.0
    written = np.zeros(task.stop - task.start, dtype=bool)
    for name in corpus.params.modalities if task.carry_over else ():
        written |= corpus.array(f"{name}_state")[task.start : task.stop] != SampleState.PENDING
    planned = task.inputs()
    for index in range(task.start, task.stop):
        wanted = task.todo.get(index, ())
        stored = corpus.read_record(index) if written[index - task.start] else None
        built = None
        if wanted:
            tick = time.perf_counter()
            inputs = planned[index]
            try:
                signed = sign_inputs(inputs, task.signers)
                built = task.builder(signed, groups_of(wanted, corpus_groups))
            except Exception as error:  # recorded per tile and modality, never swallowed
                built = _failed(inputs, wanted, error)
            build_seconds += time.perf_counter() - tick
        if built is None and stored is None:
            samples.append(None)
            continue
        merged = merge_sample(built, stored, wanted)
        samples.append(merged)
        outcomes.append(
            SampleOutcome(
                sample=index,
                tile_id=merged.tile_id,
                states={m: int(s) for m, s in merged.states.items()},
                errors=dict(merged.errors),
                rebuilt=tuple(wanted),
            )
        )
    corpus.write_shard(task.shard, samples)
    return ShardOutcome(
        shard=task.shard,
        samples=tuple(outcomes),
        seconds=time.perf_counter() - started,
        build_seconds=build_seconds,
        worker=f"{os.uname().nodename}:{os.getpid()}",
    )
