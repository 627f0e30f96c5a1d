"""Embedding a corpus one shard at a time: the unit a process, a Dask task or a torchrun
rank computes, writes and can redo.

A shard task reads its samples' whole tiles through the streaming loader (`CorpusStream`:
the compiled shard reads, the corpus statistics, the loader's missing-data rules),
encodes them (`infer.embed_tiles`), writes its tile-table part and then its rows of the
embedding store, states last. Memory is one shard's tiles, whatever the corpus size.
Resuming computes exactly the shards whose states are still pending or whose part is
missing; a shard is recomputed from scratch, so a rerun writes what an uninterrupted
run writes. A damaged corpus shard fails its task (named), never yields embeddings of
fill values; a sample without any input is `empty` and has no table row.

The checkpoint, model, loader and store are opened once per process (`embedder`), so a
Dask worker pays for them once, not per task; a task itself is a few hundred bytes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from terracube.catalog.registry import band_group
from terracube.model.data.loader import CorpusStream
from terracube.model.data.pixel_stats import group_normalizer, read_stats
from terracube.model.data.plan import TILE_PIXELS, BatchGeometry, BatchPlan, LoaderParams
from terracube.model.embed.infer import embed_tiles
from terracube.model.embed.spec import (
    EmbedError,
    EmbedSpec,
    Resolved,
    file_sha256,
    provenance,
    resolve,
)
from terracube.model.embed.store import (
    INDEX_ARRAYS,
    STORE_NAME,
    EmbedState,
    ShardRows,
    open_or_create,
    states,
    write_shard,
)
from terracube.model.embed.table import consolidate, has_part, shard_table, write_part
from terracube.model.nn.olmoearth import LatentMIM
from terracube.model.train.checkpoint import load_checkpoint
from terracube.model.train.pretrain import CHECKPOINT_FORMAT
from terracube.pipeline.corpus.integrity import readable_states
from terracube.pipeline.corpus.schema import SampleState
from terracube.pipeline.corpus.store import Corpus


@dataclass(frozen=True)
class EmbedTask:
    """One shard of one export: what a Dask task carries (no arrays, no model)."""

    spec: EmbedSpec
    shard: int
    run: str
    """The export run (`EmbedPlan.run`): a worker opens its `Embedder` once per run, so a
    long-lived process never writes through handles of an earlier run's output."""

    @property
    def key(self) -> str:
        return f"embed-{self.run[:8]}-shard-{self.shard}"


@dataclass(frozen=True)
class ShardSummary:
    shard: int
    samples: int
    done: int
    empty: int
    seconds: float


def torch_device(spec: EmbedSpec) -> torch.device:
    """The spec's device; under torchrun `auto` and `cuda` take this rank's GPU (LOCAL_RANK)."""
    if spec.device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedError(f"--device {spec.device} was asked for but torch sees no CUDA device")
    if spec.device in ("auto", "cuda"):
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device(spec.device)


class Embedder:
    """Everything one export needs in one process: model, loader, output, provenance."""

    def __init__(self, spec: EmbedSpec, create: bool = False) -> None:
        self.spec = spec
        self.out = Path(spec.out)
        state = load_checkpoint(Path(spec.checkpoint), CHECKPOINT_FORMAT)
        self.corpus = Corpus.open(spec.data, spec.storage_options or None)
        self.resolved: Resolved = resolve(spec, state.get("settings", {}), self.corpus)
        r = self.resolved
        self.device = torch_device(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.seed)
            model = LatentMIM(r.model)
        model.load_state_dict(state["model"])
        self.model = model.eval().requires_grad_(False).to(self.device)
        params = LoaderParams(
            batch_size=spec.tiles_per_read,
            crop_sizes=(TILE_PIXELS,),
            patch_sizes=(r.patch_size,),
            token_budget=2**40,
            shuffle_buffer=1,
            num_views=1,
        )
        self.stream = CorpusStream(
            spec.data,
            params,
            spec.storage_options or None,
            rank=0,
            world_size=1,
            groups=r.groups,
        )
        stats_source = "corpus statistics" if read_stats(self.corpus) else "registry defaults"
        if spec.stats_from is not None:
            stats = read_stats(Corpus.open(spec.stats_from))
            if stats is None:
                raise EmbedError(
                    f"--stats-from {spec.stats_from} has no statistics; run `terracube stats` "
                    "on it first"
                )
            self.stream.normalizers = {g: group_normalizer(g, stats) for g in r.groups}
            stats_source = f"statistics of {spec.stats_from}"
        self.provenance = provenance(
            spec, r, self.corpus, state, file_sha256(spec.checkpoint), stats_source
        )
        self.group = open_or_create(
            self.out / STORE_NAME, self.corpus, r, self.provenance, create=create
        )
        modalities = sorted({band_group(g).modality for g in r.groups})
        done = np.stack([self.stream.done[m] for m in modalities])
        self.has_input: np.ndarray = np.asarray(done.any(axis=0))
        self.pending_input = self.pending_inputs()

    def pending_inputs(self) -> np.ndarray:
        """bool (samples,): some input modality is still pending in the corpus (read now)."""
        states = readable_states(self.corpus, "embed (to know which samples are built)")
        modalities = sorted({band_group(g).modality for g in self.resolved.groups})
        return np.asarray(
            np.stack([states[m] == SampleState.PENDING for m in modalities]).any(axis=0)
        )

    def _refresh_states(self, span: range) -> None:
        """Re-read the shard's modality states: a long-lived worker must see a build that
        finished inputs since this process opened the corpus."""
        sel = slice(span.start, span.stop)
        inputs = sorted({band_group(g).modality for g in self.resolved.groups})
        now = {m: np.asarray(self.corpus.array(f"{m}_state")[sel]) for m in self.stream.done}
        for m, state in now.items():
            self.stream.done[m][sel] = state == SampleState.DONE
        self.has_input[sel] = np.stack([now[m] == SampleState.DONE for m in inputs]).any(0)
        self.pending_input[sel] = np.stack([now[m] == SampleState.PENDING for m in inputs]).any(0)

    def _plans(self, samples: list[int]) -> list[BatchPlan]:
        r, k = self.resolved, self.spec.tiles_per_read
        start, stop = r.periods
        geometry = BatchGeometry(TILE_PIXELS, r.patch_size, stop - start)
        chunks = [samples[i : i + k] for i in range(0, len(samples), k)]
        return [
            BatchPlan(0, j, 0, tuple(c), geometry, ((0, 0),) * len(c), (start,) * len(c), j)
            for j, c in enumerate(chunks)
        ]

    def embed_shard(self, shard: int) -> ShardSummary:
        began = time.perf_counter()
        r = self.resolved
        span = self.corpus.shards[shard]
        n, side = len(span), TILE_PIXELS // r.patch_size
        t = r.periods[1] - r.periods[0]
        maps = np.full((n, side, side, r.dim), np.nan, np.float32)
        tokens = np.zeros((n, side, side), np.uint16)
        present = np.zeros((n, len(r.groups), t), bool)
        pooled = np.full((n, r.dim), np.nan, np.float32)
        self._refresh_states(span)
        wanted = [i for i in span if self.has_input[i]]
        for item in self.stream.iter_plans(self._plans(wanted)):
            if item.decode_errors:  # reads of done modalities lost (recovered ones are not)
                raise EmbedError(
                    f"shard {shard} of {self.corpus.url} cannot be read "
                    f"({'; '.join(item.bad_shards) or f'{item.decode_errors} failed reads'}): "
                    "run `terracube validate` on the corpus and `terracube repair CONFIG`"
                )
            got = embed_tiles(
                self.model, item.to(self.device), r.window, self.spec.windows_per_step
            )
            rows = np.asarray(item.samples) - span.start
            maps[rows], tokens[rows], present[rows] = got.maps, got.tokens, got.present
            pooled[rows] = got.pooled
        total = tokens.reshape(n, -1).sum(1, dtype=np.int64)
        state = np.where(total > 0, EmbedState.DONE, EmbedState.EMPTY).astype(np.uint8)
        state[self.pending_input[span.start : span.stop]] = EmbedState.PARTIAL
        index = {
            name: np.asarray(self.corpus.array(name)[span.start : span.stop])
            for name in INDEX_ARRAYS
        }
        index["period_start"] = np.asarray(
            self.corpus.array("period_start")[span.start : span.stop, r.periods[0] : r.periods[1]]
        )
        keep = np.flatnonzero(total > 0)
        table = shard_table(
            np.asarray(span)[keep],
            {k: v[keep] for k, v in index.items()},
            pooled[keep],
            total[keep],
            np.asarray(present[keep].any(axis=1)),
            self.corpus.params.period,
            self.provenance,
        )
        write_part(self.out, shard, table)
        write_shard(self.group, span, ShardRows(maps, tokens, present, state, index))
        return ShardSummary(shard, n, len(keep), n - len(keep), time.perf_counter() - began)


_EMBEDDERS: dict[str, Embedder] = {}


def embedder(spec: EmbedSpec, run: str, create: bool = False) -> Embedder:
    """This process' `Embedder` for `spec` in export run `run` (opened on first use). Only
    the planning process creates the output (`create`); a worker that cannot see it says so."""
    key = run + json.dumps(asdict(spec), sort_keys=True, default=str)
    if key not in _EMBEDDERS:
        _EMBEDDERS.clear()  # one export per process at a time: free the previous model
        _EMBEDDERS[key] = Embedder(spec, create=create)
    return _EMBEDDERS[key]


def run_embed_task(task: EmbedTask) -> ShardSummary:
    """What a Dask worker (or this process) runs for one shard."""
    return embedder(task.spec, task.run).embed_shard(task.shard)


@dataclass(frozen=True)
class EmbedPlan:
    """What an export has to do, decided before any shard runs."""

    spec: EmbedSpec
    run: str
    """A fresh id per `plan_export` call: what the run's tasks carry."""
    todo: tuple[int, ...]
    """This rank's shards still to compute (all of them outside torchrun)."""
    n_shards: int
    samples: int
    provenance: dict[str, Any]
    pending_inputs: int
    """Samples whose input modalities are not all built yet (only with allow_pending)."""


def plan_export(spec: EmbedSpec) -> EmbedPlan:
    """Open (or create) the output and list the shards still to compute; refuse a corpus
    whose inputs are still being built unless `allow_pending`."""
    if not Path(spec.checkpoint).is_file():
        raise EmbedError(f"checkpoint {spec.checkpoint} does not exist; pass a step_*.pt file")
    run = uuid.uuid4().hex
    job = embedder(spec, run, create=True)
    corpus = job.corpus
    pending = job.pending_input  # read just now: a fresh run id opens a fresh Embedder
    if pending.any() and not spec.allow_pending:
        first = int(np.flatnonzero(pending)[0])
        raise EmbedError(
            f"{corpus.url} has {int(pending.sum())} sample(s) whose inputs are still pending "
            f"(e.g. sample {first}): finish the build (`terracube build CONFIG`) first, or "
            "pass --allow-pending to embed what is built (pending inputs count as missing)"
        )
    written = states(job.group)
    # pending: never finished; partial whose inputs have been built since: out of date
    stale = (written == EmbedState.PENDING) | ((written == EmbedState.PARTIAL) & ~pending)
    todo = tuple(
        k
        for k in rank_shards(len(corpus.shards))
        if stale[corpus.shards[k].start : corpus.shards[k].stop].any() or not has_part(job.out, k)
    )
    return EmbedPlan(
        spec,
        run,
        todo,
        len(corpus.shards),
        corpus.n_samples,
        job.provenance,
        int(pending.sum()),
    )


def finish_export(plan: EmbedPlan) -> Path | None:
    """tiles.parquet once every shard is done (None while some are not)."""
    job = embedder(plan.spec, plan.run)
    done = states(job.group) != EmbedState.PENDING
    n_shards = len(job.corpus.shards)
    if not done.all() or not all(has_part(job.out, k) for k in range(n_shards)):
        return None
    return consolidate(job.out, n_shards, job.resolved.dim, job.provenance)


def torchrun_world() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK / WORLD_SIZE set), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_shards(n_shards: int) -> range:
    """This rank's fixed share of all shards (every WORLD_SIZE-th): decided before what is
    done is looked at, so ranks that plan at different moments never split differently."""
    rank, world = torchrun_world()
    return range(rank, n_shards, world)
