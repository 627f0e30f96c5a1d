"""Pure planning of a (resumed) build: which shards need work, what each sample needs.

A build task owns one corpus shard. Given the stored states, a shard is submitted
only if one of its samples has a modality still PENDING (or FAILED, when failures
are retried); a shard whose samples are all terminal is never rewritten. Inside a
submitted shard, finished modalities are carried over from the store untouched and
only the rest is rebuilt; `merge_sample` makes the carried-over part byte-identical
to what the original build wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import geopandas as gpd
import numpy as np
from terracube.catalog.grid import Tile
from terracube.catalog.plan import STATIC_PERIOD, Plan
from terracube.catalog.plan_store import PlanFiles
from terracube.catalog.registry import MODALITIES, is_osm
from terracube.catalog.stac.items import NormalizedItem
from terracube.pipeline.corpus.store import SampleData, SampleState
from terracube.pipeline.tile import TileInputs


@dataclass(frozen=True)
class ShardWork:
    """One shard to (re)build: its sample range and, per sample, the modalities to build."""

    shard: int
    start: int
    stop: int
    todo: Mapping[int, tuple[str, ...]]
    """sample index -> modalities to build; samples absent here are carried over as stored."""
    carry_over: bool = True
    """False: nothing is read from the stored shard (it is damaged); `todo` then names
    every modality of every sample, and the shard is written as a fresh build would."""

    @property
    def samples(self) -> range:
        return range(self.start, self.stop)


def needs_build(state: int, retry_failed: bool) -> bool:
    if state == SampleState.PENDING:
        return True
    return retry_failed and state == SampleState.FAILED


def plan_shard_work(
    states: Mapping[str, np.ndarray],
    samples_per_shard: int,
    retry_failed: bool = False,
) -> list[ShardWork]:
    """Shards with anything left to build, in shard order; `states` = modality -> codes."""
    if not states:
        raise ValueError("plan_shard_work: no modality states given")
    lengths = {len(v) for v in states.values()}
    if len(lengths) != 1:
        raise ValueError(f"plan_shard_work: state arrays differ in length ({sorted(lengths)})")
    if samples_per_shard < 1:
        raise ValueError(f"plan_shard_work: samples_per_shard={samples_per_shard} must be >= 1")
    n = lengths.pop()
    names = [m for m in MODALITIES if m in states] + sorted(set(states) - set(MODALITIES))
    work = []
    for shard, start in enumerate(range(0, n, samples_per_shard)):
        stop = min(start + samples_per_shard, n)
        todo: dict[int, tuple[str, ...]] = {}
        for i in range(start, stop):
            wanted = tuple(m for m in names if needs_build(int(states[m][i]), retry_failed))
            if wanted:
                todo[i] = wanted
        if todo:
            work.append(ShardWork(shard, start, stop, todo))
    return work


def rebuild_shard_work(shard: int, span: range, modalities: Sequence[str]) -> ShardWork:
    """The work that rewrites a damaged shard from its inputs alone (`terracube repair`)."""
    names = tuple(m for m in MODALITIES if m in modalities) + tuple(
        sorted(set(modalities) - set(MODALITIES))
    )
    todo = {i: names for i in span}
    return ShardWork(shard, span.start, span.stop, todo, carry_over=False)


def groups_of(modalities: Sequence[str], corpus_groups: Sequence[str]) -> tuple[str, ...]:
    """The corpus band groups that belong to `modalities`, in corpus order."""
    wanted = set(modalities)
    return tuple(
        g for g in corpus_groups if any(g in [b.name for b in MODALITIES[m].groups] for m in wanted)
    )


def merge_sample(
    built: SampleData | None, stored: SampleData | None, rebuilt: Sequence[str]
) -> SampleData:
    """The sample to write: `rebuilt` modalities from `built`, every other one from `stored`.

    Only what a build writes is taken from `stored` (groups, valid fractions and
    provenance of DONE modalities, the error of the others), so a carried-over
    modality is written exactly as it was first written.
    """
    base = built if built is not None else stored
    if base is None:
        raise ValueError("merge_sample needs a built or a stored sample")
    out = SampleData(
        tile_id=base.tile_id,
        epsg=base.epsg,
        x0=base.x0,
        y0=base.y0,
        center_lon=base.center_lon,
        center_lat=base.center_lat,
        period_starts=np.asarray(base.period_starts, dtype="datetime64[D]"),
    )
    sources: list[tuple[SampleData | None, set[str]]] = [
        (stored, set(stored.states) - set(rebuilt) if stored is not None else set()),
        (built, set(rebuilt)),
    ]
    for sample, names in sources:
        if sample is None:
            continue
        for name in names:
            state = sample.states.get(name, SampleState.PENDING)
            if state is SampleState.PENDING:
                continue
            out.states[name] = state
            if sample.errors.get(name):
                out.errors[name] = sample.errors[name]
            if state is SampleState.DONE:
                for group in MODALITIES[name].groups:
                    if group.name in sample.groups:
                        out.groups[group.name] = sample.groups[group.name]
                        out.valid_fraction[group.name] = sample.valid_fraction[group.name]
                        out.provenance[group.name] = sample.provenance[group.name]
    return out


# --------------------------------------------------------------------------- plan -> inputs


@dataclass
class PlanIndex:
    """Ranked candidates of every (sample, modality, period) of some samples, indexed once.

    Built from a whole plan in memory (`from_plan`) or, on a build worker, from the rows
    of one shard's samples in the saved plan (`from_files`): the same inputs either way."""

    tile_ids: Mapping[int, str]
    starts: Mapping[int, tuple[date, ...]]
    rows: Mapping[tuple[int, str, int], list[NormalizedItem]]

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanIndex:
        table = plan.assignments
        keyed = zip(table.sample_index, table.modality, table.period, table["rank"],
                    table.item_id, strict=True)  # fmt: skip
        rows = _ranked(keyed, plan.items)
        samples = plan.samples
        return cls(
            tile_ids=dict(enumerate(str(t) for t in samples.tile_id)),
            starts=dict(enumerate(_dates(p) for p in samples.period_starts)),
            rows=rows,
        )

    @classmethod
    def from_files(cls, files: PlanFiles, start: int, stop: int) -> PlanIndex:
        table = files.assignment_rows(start, stop)
        items = files.items(table.item_row.to_numpy())
        keyed = zip(table.sample_index, table.modality, table.period, table["rank"],
                    table.item_row, strict=True)  # fmt: skip
        samples = files.sample_rows(start, stop)
        return cls(
            tile_ids={int(i): str(t) for i, t in samples.tile_id.items()},
            starts={int(i): _dates(p) for i, p in samples.period_starts.items()},
            rows=_ranked(keyed, items),
        )

    def candidates(self, sample: int, name: str, period: int) -> list[NormalizedItem]:
        return list(self.rows.get((sample, name, period), []))

    def tile(self, sample: int) -> Tile:
        return Tile.from_id(self.tile_ids[sample])

    def period_starts(self, sample: int) -> tuple[date, ...]:
        return self.starts[sample]

    def tile_inputs(
        self, sample: int, modalities: Sequence[str], osm: gpd.GeoDataFrame | None = None
    ) -> TileInputs:
        """What the pipeline needs to build `modalities` of one sample (no search, no I/O)."""
        periods = len(self.period_starts(sample))
        temporal = {
            m: [self.candidates(sample, m, p) for p in range(periods)]
            for m in modalities
            if m in MODALITIES and MODALITIES[m].temporal
        }
        static = {
            m: self.candidates(sample, m, STATIC_PERIOD)
            for m in modalities
            if m in MODALITIES and not MODALITIES[m].temporal and not is_osm(m)
        }
        return TileInputs(
            tile=self.tile(sample),
            period_starts=self.period_starts(sample),
            temporal=temporal,
            static=static,
            osm=osm if any(is_osm(m) for m in modalities) else None,
        )


def _dates(values: Iterable[object]) -> tuple[date, ...]:
    return tuple(date.fromisoformat(str(d)) for d in values)


def _ranked(
    keyed: Iterable[tuple[Any, Any, Any, Any, Any]], items: Mapping[Any, NormalizedItem]
) -> dict[tuple[int, str, int], list[NormalizedItem]]:
    rows: dict[tuple[int, str, int], list[tuple[int, Any]]] = defaultdict(list)
    for sample, name, period, rank, key in keyed:
        rows[(int(sample), str(name), int(period))].append((int(rank), key))
    return {k: [items[key] for _, key in sorted(v, key=lambda r: r[0])] for k, v in rows.items()}
