"""The build on the synthetic world, synchronous path: states, failures, resume, retry.

Fast: two cheap modalities (Sentinel-1, WorldCover) of the 4-tile test world, two
samples per shard, built in this process. The tile builder is the pipeline's; one test
wraps it to fail chosen tiles, as a broken asset would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from terracube.pipeline.corpus.store import Corpus, SampleData, SampleState
from terracube.pipeline.tile import TileInputs
from terracube.workflows.build.failures import FailureTable
from terracube.workflows.build.runlog import read_run_log
from terracube.workflows.build.runner import BuildOptions, build_corpus, run_dir
from terracube.workflows.build.status import corpus_status
from terracube.workflows.build.tasks import PipelineTileBuilder
from terracube.workflows.config import load_config
from terracube.workflows.world import WorldManifest

from tests.workflows.workflows_support import shard_files, store_hashes, world, world_config

__all__ = ["world"]

FAST = ("sentinel1", "worldcover")
SYNC = BuildOptions(synchronous=True, show_progress=False)
RETRY = BuildOptions(retry_failed=True, synchronous=True, show_progress=False)
D, E, F = int(SampleState.DONE), int(SampleState.EMPTY), int(SampleState.FAILED)


@dataclass(frozen=True)
class FailingTiles:
    """The pipeline builder, except that chosen tiles raise as an unreadable asset would."""

    tile_ids: frozenset[str]

    def __call__(self, inputs: TileInputs, groups: Sequence[str]) -> SampleData:
        if inputs.tile.id in self.tile_ids:
            raise RuntimeError(f"injected failure for {inputs.tile.id}")
        return PipelineTileBuilder()(inputs, groups)


@pytest.fixture(scope="module")
def clean_store(world: WorldManifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_config(
        world_config(world, tmp_path_factory.mktemp("clean"), modalities=FAST, samples_per_shard=2)
    )
    report = build_corpus(config, SYNC)
    assert report.tiles == {"done": 4, "empty": 0, "failed": 0}
    return Path(config.store_url)


def test_clean_build_writes_the_planned_tiles(clean_store: Path, world: WorldManifest) -> None:
    corpus = Corpus.open(clean_store)
    assert [str(t) for t in corpus.array("tile_id")[:]] == list(world.tile_ids)
    assert corpus.params.modalities == FAST
    for name in FAST:
        assert corpus.states(name).tolist() == [D] * 4
    record = corpus.read_record(0)
    assert [str(d) for d in record.period_starts] == list(world.period_starts)
    worldcover_items = set(world.item_ids["esa-worldcover"])
    for i in range(4):
        used = corpus.read_record(i).provenance["worldcover"]
        assert used and set(used) <= worldcover_items
    status = corpus_status(str(clean_store))
    assert status["states"]["sentinel1"] == {"pending": 0, "done": 4, "empty": 0, "failed": 0}
    assert status["complete"] is True and status["top_failures"] == []
    assert status["coverage"]["sentinel1"] == [1.0] * len(world.period_starts)


def test_failures_are_recorded_and_resume_retries_only_them(
    world: WorldManifest, tmp_path: Path, clean_store: Path
) -> None:
    path = world_config(
        world,
        tmp_path,
        modalities=FAST,
        samples_per_shard=2,
        extra={"name": "${TC_TEST_SECRET}"},
    )
    config = load_config(path, environ={"TC_TEST_SECRET": "s3cret-name-value"})
    bad = world.tile_ids[1]
    failing = FailingTiles(frozenset({bad}))

    first = build_corpus(config, SYNC, builder=failing)
    assert first.tiles == {"done": 3, "empty": 0, "failed": 1}
    assert (first.shards, first.shards_submitted) == (2, 2)
    corpus = Corpus.open(config.store_url)
    for name in FAST:
        assert corpus.states(name).tolist() == [D, F, D, D]
        assert str(corpus.array(f"{name}_error")[1]) == f"RuntimeError: injected failure for {bad}"
    rows = json.loads((run_dir(config) / "failures.json").read_text())
    assert [(r["tile_id"], r["modality"], r["error_class"], r["attempts"]) for r in rows] == [
        (bad, "sentinel1", "RuntimeError", 1),
        (bad, "worldcover", "RuntimeError", 1),
    ]
    status = corpus_status(config.store_url)
    assert status["states"]["worldcover"] == {"pending": 0, "done": 3, "empty": 0, "failed": 1}
    assert status["top_failures"][0]["count"] == 1
    assert status["top_failures"][0]["message"] == f"injected failure for {bad}"
    events = read_run_log(first.log)
    assert [e["event"] for e in events] == ["start", "shard", "shard", "end"]
    assert "s3cret-name-value" not in first.log.read_text()
    assert events[0]["config"]["name"] == "***"

    # Same command again: every sample is terminal, so nothing is submitted or rewritten.
    before = shard_files(Path(config.store_url))
    second = build_corpus(config, SYNC, builder=failing)
    assert second.shards_submitted == 0 and sum(second.tiles.values()) == 0
    assert shard_files(Path(config.store_url)) == before

    # --retry-failed, still failing: only shard 0 is rebuilt; attempts count up.
    third = build_corpus(config, RETRY, builder=failing)
    assert third.shards_submitted == 1 and third.tiles["failed"] == 1
    after = shard_files(Path(config.store_url))
    untouched = {k: v for k, v in before.items() if "/c/1/" in k}
    assert untouched and all(after[k] == v for k, v in untouched.items())
    assert [r.attempts for r in FailureTable(run_dir(config) / "failures.json").rows] == [2, 2]

    # --retry-failed with a working reader: the store equals a clean build, byte for byte
    # (the sample carried over in shard 0 is rewritten exactly as first written).
    fourth = build_corpus(config, RETRY)
    assert fourth.tiles == {"done": 1, "empty": 0, "failed": 0} and fourth.failures == 0
    assert store_hashes(Path(config.store_url)) == store_hashes(clean_store)
    assert FailureTable(run_dir(config) / "failures.json").rows == []


def test_plan_is_kept_and_reused_while_the_config_is_unchanged(
    world: WorldManifest, tmp_path: Path
) -> None:
    from terracube.workflows.build.runner import load_or_make_plan, plan_dir

    config = load_config(world_config(world, tmp_path, modalities=FAST))
    plan = load_or_make_plan(config)
    stamp = (plan_dir(config) / "assignments.parquet").stat().st_mtime_ns
    again = load_or_make_plan(config)
    assert (plan_dir(config) / "assignments.parquet").stat().st_mtime_ns == stamp
    assert again.samples.tile_id.tolist() == plan.samples.tile_id.tolist() == list(world.tile_ids)
    assert np.array_equal(again.assignments.item_id.to_numpy(), plan.assignments.item_id.to_numpy())


def test_ctrl_c_keeps_finished_shards_and_a_rerun_completes(
    world: WorldManifest, tmp_path: Path
) -> None:
    """SIGINT after the first shard: exit 130, nothing finished is lost, the rerun
    completes, and the result equals an uninterrupted build file for file."""
    reference = load_config(world_config(world, tmp_path / "ref", modalities=FAST))
    build_corpus(reference, SYNC)

    path = world_config(world, tmp_path / "cut", modalities=FAST)
    config = load_config(path)
    command = [str(Path(sys.executable).with_name("terracube")), "build", str(path)]
    command += ["--synchronous", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        logs = run_dir(config)
        while process.poll() is None:
            events = [e for log in logs.glob("*.jsonl") for e in read_run_log(log)]
            if any(e["event"] == "shard" for e in events):
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    events = [e["event"] for log in run_dir(config).glob("*.jsonl") for e in read_run_log(log)]
    assert events[0] == "start" and events[-1] == "interrupted" and "shard" in events
    status = corpus_status(config.store_url)
    assert 1 <= status["states"]["sentinel1"]["done"] < 4
    assert status["states"]["sentinel1"]["pending"] == 4 - status["states"]["sentinel1"]["done"]

    rerun = build_corpus(config, SYNC)
    assert rerun.tiles["done"] == status["states"]["sentinel1"]["pending"]
    assert store_hashes(Path(config.store_url)) == store_hashes(Path(reference.store_url))


class ShardTaskCount(SchedulerPlugin):
    """Scheduler-side count of the shard tasks it holds, seen at every task transition."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.transitions = 0
        self.peak_unfinished = 0
        """Shard tasks waiting or running: what the wave bounds."""
        self.peak_held = 0
        """Also finished ones whose release has not reached the scheduler yet."""

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.transitions += 1
        states = [
            ts.state
            for k, ts in self.scheduler.tasks.items()
            if str(k).startswith("terracube-shard-")
        ]
        unfinished = sum(s in ("waiting", "processing", "no-worker", "queued") for s in states)
        self.peak_unfinished = max(self.peak_unfinished, unfinished)
        self.peak_held = max(self.peak_held, len(states))


def test_the_scheduler_never_holds_more_than_one_wave(world: WorldManifest, tmp_path: Path) -> None:
    path = world_config(
        world, tmp_path, modalities=("worldcover",), extra={"cluster": {"wave": 2}}
    )  # 4 shards of one sample, at most 2 submitted at a time
    config = load_config(path)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        counter = ShardTaskCount(cluster.scheduler)
        cluster.scheduler.add_plugin(counter)
        report = build_corpus(
            config, BuildOptions(scheduler=cluster.scheduler_address, show_progress=False)
        )
    assert report.tiles == {"done": 4, "empty": 0, "failed": 0}
    assert counter.transitions > 0 and counter.peak_unfinished == 2
    assert counter.peak_held <= 2 * 2  # a finished task is forgotten soon after its result is read
    end = read_run_log(report.log)[-1]
    assert end["event"] == "end" and end["peak_in_flight"] == 2
