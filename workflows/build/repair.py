"""`terracube repair`: rebuild exactly the shards `validate` finds damaged.

A shard is the unit a build writes atomically, so it is the unit repaired: a shard
file that is missing or fails to decode (or holds impossible values) is rebuilt from
its planned inputs alone — nothing is read from the damaged shard — through the same
tasks, cluster and run log as a build, and written whole. Every other shard keeps its
bytes. Because the damage is found again on every run, an interrupted repair is
resumed by running it again; a repaired store validates, and since a build is
deterministic it equals a clean build byte for byte (`tests/integrity`).

What a rebuild of shards cannot fix (root attributes, an array's metadata, a store
made with other parameters) is refused with the problem named.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from terracube.pipeline.corpus.store import Corpus
from terracube.pipeline.corpus.validate import Problem, validate
from terracube.workflows.build.runner import (
    BuildOptions,
    BuildReport,
    load_or_make_plan,
    open_build_corpus,
    run_build,
)
from terracube.workflows.build.shards import rebuild_shard_work
from terracube.workflows.build.tasks import TileBuilder
from terracube.workflows.config import BuildConfig, ConfigError


class RepairError(ConfigError):
    """The store cannot be repaired by rebuilding shards; the message says why."""


@dataclass(frozen=True)
class RepairReport:
    problems: tuple[Problem, ...]
    """What validate found before the repair."""
    shards: tuple[int, ...]
    """The shards rebuilt."""
    build: BuildReport | None
    """The rebuild (None when nothing was damaged)."""
    remaining: tuple[Problem, ...]
    """What validate finds after the repair (empty when the store is whole)."""


def repair_corpus(
    config: BuildConfig,
    options: BuildOptions | None = None,
    builder: TileBuilder | None = None,
    console: Console | None = None,
) -> RepairReport:
    """Find the damaged shards of `config`'s store and rebuild them; validate again."""
    started = time.monotonic()
    url, storage = config.store_url, config.output.storage_options or None
    corpus = Corpus.open(url, storage, writable=True)
    problems = tuple(validate(url, storage))
    unfixable = [p for p in problems if p.shard is None]
    if unfixable:
        raise RepairError(
            f"{url}: {unfixable[0]} — rebuilding shards cannot fix this"
            + (f" (and {len(unfixable) - 1} more such problem(s))" if len(unfixable) > 1 else "")
            + "; build into a new store"
        )
    shards = tuple(sorted({p.shard for p in problems if p.shard is not None}))
    if not shards:
        return RepairReport(problems, (), None, ())
    plan = load_or_make_plan(config)
    if len(plan.samples) != corpus.n_samples:
        raise RepairError(
            f"{url} holds {corpus.n_samples} samples but the plan of {config.name} has "
            f"{len(plan.samples)}: this config did not build this store"
        )
    corpus = open_build_corpus(config, plan)  # same parameters, same tiles, or it refuses
    works = [rebuild_shard_work(s, corpus.shards[s], corpus.params.modalities) for s in shards]
    options = options if options is not None else BuildOptions()
    report = run_build(config, plan, options, builder, console, started, works=works, corpus=corpus)
    return RepairReport(problems, shards, report, tuple(validate(url, storage)))
