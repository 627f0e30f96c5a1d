"""`terracube build`: config -> plan -> corpus, one task per shard, resumable.

The plan is made once and kept in the run folder (re-used while the config is
unchanged, so a resumed build sees the same samples in the same order). The store
is created (or re-opened with equal parameters), its states say what is left, and
only shards with work are submitted. Each finished shard is logged (JSON lines) and
folded into the failure table before the next is awaited.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from rich.console import Console
from terracube.catalog.grid import Tile
from terracube.catalog.osm.extract import ExtractError
from terracube.catalog.osm.features import OsmFeatures, fetch_overpass
from terracube.catalog.plan import Plan
from terracube.catalog.plan_store import (
    PlanFiles,
    PlanFormatError,
    PlanRef,
    publish_plan,
    read_meta,
)
from terracube.catalog.plan_summary import empty_plan_message, modalities_without_data
from terracube.catalog.registry import is_osm
from terracube.pipeline.corpus.integrity import readable_states
from terracube.pipeline.corpus.store import (
    Corpus,
    CorpusCodecs,
    CorpusError,
    create_corpus,
    local_root,
)
from terracube.workflows.build.failures import FailureTable
from terracube.workflows.build.progress import BuildProgress, tally
from terracube.workflows.build.runlog import RunLog, scrub, utc_now
from terracube.workflows.build.shards import ShardWork, plan_shard_work
from terracube.workflows.build.tasks import (
    PipelineTileBuilder,
    ShardOutcome,
    ShardTask,
    TileBuilder,
)
from terracube.workflows.cluster import open_executor
from terracube.workflows.config import BuildConfig, ConfigError, OsmFileSource, redacted
from terracube.workflows.planning import (
    allowed_internal_hosts,
    check_output_store,
    corpus_groups,
    href_signers,
    period_duration,
    plan_build,
)
from terracube.workflows.sizing import default_samples_per_shard


@dataclass(frozen=True)
class BuildOptions:
    """How to run a build (the config says what to build)."""

    scheduler: str | None = None
    workers: int | None = None
    retry_failed: bool = False
    synchronous: bool = False
    """Run every task in this process, no Dask (the single-process reference path)."""
    show_progress: bool = True
    allow_empty: bool = False
    """Build a plan in which a modality has no data anywhere (else EmptyPlanError)."""


@dataclass(frozen=True)
class BuildReport:
    store: str
    run_dir: Path
    log: Path
    samples: int
    shards: int
    shards_submitted: int
    tiles: dict[str, int]
    """Tiles built by this run: done / empty / failed."""
    shard_errors: int
    failures: int
    """Rows in the failure table after the run."""
    seconds: float
    """Wall time of the whole run (planning, cluster start, building)."""
    run_seconds: float
    """Wall time of the task phase alone (cluster already up): what throughput is measured on."""
    dashboard: str | None = None
    shard_build_seconds: tuple[float, ...] = field(default=(), repr=False)
    """Builder time of every finished shard (not the outcomes: a client building millions
    of tiles keeps counts, not per-sample records)."""

    @property
    def tiles_per_minute(self) -> float:
        """Tiles built per minute of the task phase."""
        built = sum(self.tiles.values())
        return 60.0 * built / self.run_seconds if self.run_seconds > 0 else 0.0


# --------------------------------------------------------------------------- run folder + plan


def run_dir(config: BuildConfig) -> Path:
    """Where plan, run logs and the failure table live: beside a local store, else by the config."""
    root = local_root(config.store_url)
    if root is not None:
        return root.with_name(root.name + ".run")
    return config.base_dir / f"{config.name}.run"


def _fingerprint(config: BuildConfig) -> dict[str, Any]:
    """What decides the plan: the config without cluster settings."""
    shown = redacted(config)
    shown.pop("cluster", None)
    return shown


def plan_dir(config: BuildConfig) -> Path:
    return run_dir(config) / "plan"


def make_and_save_plan(
    config: BuildConfig, progress: Callable[[str, int, int], None] | None = None
) -> Plan:
    """Search and plan now, and keep the plan (GeoParquet) and the config it came from."""
    directory = plan_dir(config)
    plan = plan_build(config, cache_dir=run_dir(config) / "search-cache", progress=progress)
    if directory.exists():
        shutil.rmtree(directory)
    plan.to_parquet(directory)
    (directory / "config.json").write_text(json.dumps(_fingerprint(config), indent=1))
    return plan


def load_or_make_plan(config: BuildConfig) -> PlanFiles:
    """The saved plan when it was made from this same config (and in this format), else a
    new one; read lazily, so a resume of a 300k-tile build does not load the plan whole."""
    directory = plan_dir(config)
    saved = directory / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) == _fingerprint(config):
        try:
            return PlanFiles(directory)
        except (FileNotFoundError, PlanFormatError):
            pass  # a plan of an older format or a half-written one: plan again
    make_and_save_plan(config)
    return PlanFiles(directory)


def plan_ref(config: BuildConfig, plan: PlanFiles) -> PlanRef:
    """Where build tasks read the plan: the run folder beside a local store; for a
    remote store, a copy beside it (`<store>.plan/`), uploaded once per plan."""
    if local_root(config.store_url) is not None:
        return PlanRef.of(plan)
    url = config.store_url.rstrip("/") + ".plan"
    options = dict(config.output.storage_options)
    try:
        remote = read_meta(url, options)
    except (FileNotFoundError, PlanFormatError):
        remote = {}
    if remote.get("plan_id") != plan.meta["plan_id"]:
        publish_plan(plan.directory, url, options)
    return PlanRef(url, str(plan.meta["plan_id"]), json.dumps(options, sort_keys=True))


# --------------------------------------------------------------------------- corpus


def samples_per_shard(config: BuildConfig, n_samples: int) -> int:
    """The configured value; when none is, the existing store's (a store made under an
    older default resumes as it is), else the size-based default (`workflows.sizing`)."""
    if config.output.samples_per_shard is not None:
        return config.output.samples_per_shard
    try:
        existing = Corpus.open(config.store_url, config.output.storage_options or None)
    except Exception:  # no store yet (or not a corpus: create_corpus says which)
        return default_samples_per_shard(n_samples)
    return existing.params.samples_per_shard


def open_build_corpus(config: BuildConfig, plan: Plan | PlanFiles) -> Corpus:
    """Create the store (or re-open it with the same parameters) and check it holds this plan."""
    corpus = create_corpus(
        config.store_url,
        n_samples=len(plan.samples),
        n_periods=plan.scheme.periods,
        samples_per_shard=samples_per_shard(config, len(plan.samples)),
        groups=corpus_groups(config),
        period=period_duration(config),
        codecs=CorpusCodecs(config.output.zstd_level),
        storage_options=config.output.storage_options or None,
    )
    stored = stored_tile_ids(corpus)
    planned = np.array([str(v) for v in plan.samples.tile_id], dtype=object)
    clash = np.flatnonzero((stored != "") & (stored != planned) & (stored != UNREADABLE))
    if clash.size:
        i = int(clash[0])
        raise CorpusError(
            f"{config.store_url} sample {i} holds tile {stored[i]} but the plan puts "
            f"{planned[i]} there ({clash.size} such samples): the AOI or sampling changed; "
            "build into a new store"
        )
    return corpus


UNREADABLE = "\0unreadable"
"""A sample of a tile_id shard that cannot be decoded (left to `terracube repair`)."""


def stored_tile_ids(corpus: Corpus) -> np.ndarray:
    """Every sample's stored tile id ("" when pending), shard by shard so that a damaged
    shard only marks its own samples `UNREADABLE`."""
    arr = corpus.array("tile_id")
    out = np.full(corpus.n_samples, "", dtype=object)
    for span in corpus.shards:
        try:
            out[span.start : span.stop] = [str(v) for v in np.asarray(arr[span.start : span.stop])]
        except Exception:
            out[span.start : span.stop] = UNREADABLE
    return out


def load_osm(config: BuildConfig, plan: Plan | PlanFiles) -> OsmFeatures | None:
    source = next((s for name, s in config.modalities.items() if is_osm(name)), None)
    if source is None:
        return None
    region = shapely.union_all(list(plan.samples.geometry))
    if isinstance(source, OsmFileSource):
        try:
            return OsmFeatures.from_extract(config.resolve(source.path), polygon=region)
        except ExtractError as err:
            raise ConfigError(f"modalities.openstreetmap.path: {err}") from None
    return OsmFeatures(fetch_overpass(region))


def shard_tasks(
    works: list[ShardWork],
    plan: PlanRef,
    tile_ids: Sequence[str],
    config: BuildConfig,
    builder: TileBuilder,
    osm: OsmFeatures | None,
) -> Iterator[ShardTask]:
    """Tasks made lazily, one per shard: only the wave in flight is ever in memory."""
    signers = href_signers(config)
    for work in works:
        features: dict[int, gpd.GeoDataFrame] = {}
        if osm is not None:
            for sample, modalities in work.todo.items():
                if any(is_osm(m) for m in modalities):
                    features[sample] = osm.features_for_tile(Tile.from_id(tile_ids[sample]))
        yield ShardTask(
            store=config.store_url,
            storage_options=dict(config.output.storage_options),
            shard=work.shard,
            start=work.start,
            stop=work.stop,
            plan=plan,
            todo=dict(work.todo),
            builder=builder,
            signers=signers,
            carry_over=work.carry_over,
            osm=features,
        )


# --------------------------------------------------------------------------- build


class EmptyPlanError(ConfigError):
    """The plan has a modality with no data in any tile; nothing was written."""


def build_corpus(
    config: BuildConfig,
    options: BuildOptions = BuildOptions(),
    builder: TileBuilder | None = None,
    console: Console | None = None,
) -> BuildReport:
    """Build (or resume) the corpus of `config`; returns what this run did."""
    started = time.monotonic()
    check_output_store(config)
    plan = load_or_make_plan(config)
    empty = modalities_without_data(plan)
    if empty and not options.allow_empty:
        raise EmptyPlanError(empty_plan_message(plan, empty))
    if empty:
        (console or Console(stderr=True)).print(
            f"warning: {empty_plan_message(plan, empty)}", markup=False
        )
    return run_build(config, plan, options, builder, console, started)


def run_build(
    config: BuildConfig,
    plan: PlanFiles,
    options: BuildOptions = BuildOptions(),
    builder: TileBuilder | None = None,
    console: Console | None = None,
    started: float | None = None,
    works: list[ShardWork] | None = None,
    corpus: Corpus | None = None,
) -> BuildReport:
    """Build (or resume) `plan` into the config's store (the plan's samples, in order).

    `works` (with the `corpus` it was planned on) replaces the plan of what is left,
    e.g. the damaged shards `terracube repair` rebuilds."""
    started = time.monotonic() if started is None else started
    console = console or Console(stderr=True)
    builder = builder or PipelineTileBuilder(internal_hosts=allowed_internal_hosts(config))
    folder = run_dir(config)
    if works is None or corpus is None:
        corpus = open_build_corpus(config, plan)
        states = readable_states(corpus, "a build (to know which samples are finished)")
        works = plan_shard_work(states, corpus.params.samples_per_shard, options.retry_failed)
    todo_tiles = sum(len(w.todo) for w in works)
    needs_osm = any(is_osm(m) for w in works for todo in w.todo.values() for m in todo)
    osm = load_osm(config, plan) if needs_osm else None
    if osm is not None and osm.report is not None and osm.report.total:
        console.print(f"openstreetmap: {osm.report.describe()}", markup=False)
    failures = FailureTable(folder / "failures.json", config.secret_values)
    log_path = folder / f"build-{utc_now().replace(':', '').replace('+0000', 'Z')}.jsonl"
    counts: Counter[str] = Counter()
    build_seconds: list[float] = []
    shard_errors = 0
    secrets = config.secret_values
    with RunLog(log_path, secrets) as log:
        log.write(
            "start",
            config=redacted(config),
            samples=len(plan.samples),
            shards=len(corpus.shards),
            shards_to_build=len(works),
            tiles_to_build=todo_tiles,
            retry_failed=options.retry_failed,
            scheduler="synchronous" if options.synchronous else (options.scheduler or "local"),
        )
        if osm is not None and osm.report is not None:
            log.write(
                "osm_extract",
                path=osm.report.path,
                clipped_relations=dict(osm.report.clipped_relations),
                clipped_ways=dict(osm.report.clipped_ways),
            )
        with open_executor(
            scheduler=options.scheduler if works else None,
            workers=options.workers,
            memory_limit=config.cluster.memory_limit,
            max_in_flight=config.cluster.wave,
            synchronous=options.synchronous or not works,  # nothing to do: start no cluster
        ) as executor:
            if executor.dashboard:
                log.write("dashboard", link=executor.dashboard)
                console.print(f"Dask dashboard: {executor.dashboard}")
            tile_ids = [str(t) for t in plan.samples.tile_id]
            tasks = shard_tasks(works, plan_ref(config, plan), tile_ids, config, builder, osm)
            with BuildProgress(todo_tiles, console, options.show_progress) as progress:

                def on_done(task: ShardTask, outcome: ShardOutcome | BaseException) -> None:
                    nonlocal shard_errors
                    if isinstance(outcome, BaseException):
                        shard_errors += 1
                        message = scrub(f"{type(outcome).__name__}: {outcome}", secrets)[:2000]
                        log.write("shard_error", shard=task.shard, error=message)
                        progress.note(f"[red]shard {task.shard} failed: {message[:300]}")
                        return
                    counts.update(tally([outcome]))
                    build_seconds.append(outcome.build_seconds)
                    if failures.record(outcome):
                        failures.save()
                    log.write("shard", **_shard_event(outcome))
                    progress.update(outcome)

                run_started = time.monotonic()
                try:
                    executor.run(tasks, on_done)
                except KeyboardInterrupt:
                    log.write("interrupted", tiles=dict(counts), shard_errors=shard_errors)
                    raise
                run_seconds = time.monotonic() - run_started
            peak_in_flight = executor.peak_in_flight
            dashboard = executor.dashboard
        seconds = time.monotonic() - started
        report = BuildReport(
            store=config.store_url,
            run_dir=folder,
            log=log_path,
            samples=len(plan.samples),
            shards=len(corpus.shards),
            shards_submitted=len(works),
            tiles={k: int(counts[k]) for k in ("done", "empty", "failed")},
            shard_errors=shard_errors,
            failures=len(failures),
            seconds=seconds,
            run_seconds=run_seconds,
            dashboard=dashboard,
            shard_build_seconds=tuple(build_seconds),
        )
        log.write(
            "end",
            tiles=report.tiles,
            shard_errors=shard_errors,
            failures=len(failures),
            seconds=round(seconds, 3),
            peak_in_flight=peak_in_flight,
            tiles_per_minute=round(report.tiles_per_minute, 2),
        )
    return report


def _shard_event(outcome: ShardOutcome) -> Mapping[str, Any]:
    return {
        "shard": outcome.shard,
        "tiles": dict(tally([outcome])),
        "samples": [
            {"sample": s.sample, "tile_id": s.tile_id, "states": s.states, "rebuilt": s.rebuilt}
            for s in outcome.samples
        ],
        "seconds": round(outcome.seconds, 3),
        "build_seconds": round(outcome.build_seconds, 3),
        "worker": outcome.worker,
    }
