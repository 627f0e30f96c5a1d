"""`terracube embed`: a checkpoint and a corpus (or a build config) -> embeddings.

Runs the export's shard tasks (`model/embed/run.py`) in this process (the default: one
model, on the GPU when there is one), on a new LocalCluster (`workers`) or on a running
Dask cluster (`scheduler`), one task per corpus shard; under torchrun each rank takes
every WORLD_SIZE-th shard still to do. Given a build config instead of a store, the
corpus is built (or resumed; finished shards are skipped) first. When every shard is
done the tile table is consolidated; a rerun computes only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from terracube.model.embed.run import (
    EmbedTask,
    ShardSummary,
    finish_export,
    plan_export,
    rank_shards,
    run_embed_task,
    torchrun_world,
)
from terracube.model.embed.spec import EmbedError, EmbedSpec
from terracube.model.embed.store import STORE_NAME
from terracube.workflows.cluster import open_executor
from terracube.workflows.progress import StepProgress


@dataclass(frozen=True)
class EmbedReport:
    out: Path
    store: Path
    table: Path | None
    """None while some shard is unfinished: it failed, or another torchrun rank's is."""
    shards_total: int
    shards_run: int
    shards_skipped: int
    """Shards (of this torchrun rank's share) an earlier run had already finished."""
    samples_done: int
    samples_empty: int
    seconds: float
    failed: tuple[str, ...]
    provenance: dict[str, Any]
    pending_inputs: int


def is_build_config(data: str) -> bool:
    return data.endswith((".yaml", ".yml")) and Path(data).is_file()


def build_first(
    data: str, scheduler: str | None, workers: int | None, progress: bool
) -> tuple[str, dict[str, Any]]:
    """Build (or resume) the corpus of a build config; its store URL and storage options."""
    from terracube.workflows.build.runner import BuildOptions, build_corpus
    from terracube.workflows.config import load_config

    config = load_config(data)
    report = build_corpus(
        config, BuildOptions(scheduler=scheduler, workers=workers, show_progress=progress)
    )
    if report.failures or report.shard_errors:
        raise EmbedError(
            f"building {data} left {report.failures} failed (tile, modality) and "
            f"{report.shard_errors} failed shard task(s) ({report.run_dir / 'failures.json'}): "
            "run `terracube build --retry-failed` first"
        )
    return config.store_url, dict(config.output.storage_options)


def run_embed(
    spec: EmbedSpec,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    every_s: float = 10.0,
    on_shard: Callable[[ShardSummary], None] | None = None,
) -> EmbedReport:
    """Embed every shard still to do, then consolidate the tile table (see module doc)."""
    began = time.perf_counter()
    if is_build_config(spec.data):
        if torchrun_world()[1] > 1:
            raise EmbedError(
                f"--data {spec.data} is a build config: under torchrun build it first "
                "(`terracube build CONFIG`), then embed its store"
            )
        url, options = build_first(spec.data, scheduler, workers, progress)
        spec = replace(spec, data=url, storage_options=options)
    plan = plan_export(spec)
    tasks = [EmbedTask(spec, k, plan.run) for k in plan.todo]
    summaries: list[ShardSummary] = []
    failed: list[str] = []
    bar = StepProgress("embed", len(tasks), "shards", every_s=every_s) if progress else None

    def done(task: EmbedTask, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            failed.append(f"shard {task.shard}: {type(outcome).__name__}: {outcome}")
        else:
            summaries.append(outcome)
            if on_shard is not None:
                on_shard(outcome)
        if bar is not None:
            bar.update(len(summaries) + len(failed))

    try:
        here = scheduler is None and workers is None
        with open_executor(
            scheduler, workers, synchronous=here, function=run_embed_task
        ) as executor:
            executor.run(tasks, done)
    finally:
        if bar is not None:
            bar.close()
    table = None if failed else finish_export(plan)
    return EmbedReport(
        out=Path(spec.out),
        store=Path(spec.out) / STORE_NAME,
        table=table,
        shards_total=plan.n_shards,
        shards_run=len(summaries),
        shards_skipped=len(rank_shards(plan.n_shards)) - len(plan.todo),
        samples_done=sum(s.done for s in summaries),
        samples_empty=sum(s.empty for s in summaries),
        seconds=time.perf_counter() - began,
        failed=tuple(failed),
        provenance=plan.provenance,
        pending_inputs=plan.pending_inputs,
    )
