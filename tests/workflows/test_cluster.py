"""The build on real Dask clusters equals the single-process build, byte for byte.

One small world (4 tiles, Sentinel-1 + WorldCover + OSM, one sample per shard so 4 tasks):

- the synchronous build (no Dask) is the reference;
- a LocalCluster build with 2 worker processes gives identical store files;
- a build on a separately started `dask scheduler` + two `dask worker` processes
  (loopback subprocesses, no nanny) where one worker is SIGKILLed while it runs a
  shard task still completes, and its store equals the reference file for file.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from terracube.workflows.build.runlog import read_run_log
from terracube.workflows.build.runner import BuildOptions, BuildReport, build_corpus
from terracube.workflows.config import load_config
from terracube.workflows.world import WorldManifest

from tests.services.process import LOOPBACK, free_port, port_is_open, spawn, stopping, wait_until
from tests.workflows.workflows_support import SlowTiles, store_hashes, world, world_config

__all__ = ["world"]

pytestmark = pytest.mark.slow

MODALITIES = ("sentinel1", "worldcover", "openstreetmap")
"""The cheaper modalities (the optical ones only add pipeline time, not orchestration)."""
REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def reference(world: WorldManifest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = load_config(
        world_config(world, tmp_path_factory.mktemp("sync"), modalities=MODALITIES)
    )
    report = build_corpus(config, BuildOptions(synchronous=True, show_progress=False))
    assert report.tiles == {"done": 4, "empty": 0, "failed": 0}
    assert report.shards_submitted == 4
    return store_hashes(Path(config.store_url))


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dask scheduler` + 2 single-threaded `dask worker` processes on loopback."""
    logs = tmp_path_factory.mktemp("dask-logs")
    port = free_port()
    address = f"tcp://{LOOPBACK}:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with ExitStack() as stack:
        scheduler = stack.enter_context(
            stopping(
                spawn(
                    "dask-scheduler",
                    [DASK, "scheduler", "--host", LOOPBACK, "--port", str(port), "--no-dashboard"],
                    logs / "scheduler.log",
                    env=env,
                )
            )
        )
        wait_until(scheduler, lambda: port_is_open(port), 60, "scheduler listening")
        for i in range(2):
            argv = [DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--name", f"w{i}"]
            argv += ["--no-dashboard", "--memory-limit", "3GiB", "--host", LOOPBACK]
            stack.enter_context(
                stopping(spawn(f"dask-worker-{i}", argv, logs / f"w{i}.log", env=env))
            )
        from distributed import Client

        with Client(address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
        yield address


def test_local_cluster_build_equals_single_process(
    world: WorldManifest, tmp_path: Path, reference: dict[str, str]
) -> None:
    config = load_config(world_config(world, tmp_path, modalities=MODALITIES))
    report = build_corpus(config, BuildOptions(workers=2, show_progress=False))
    assert report.tiles == {"done": 4, "empty": 0, "failed": 0}
    assert report.dashboard is None or report.dashboard.startswith("http")
    workers = {e["worker"] for e in read_run_log(report.log) if e["event"] == "shard"}
    assert len(workers) >= 1
    assert store_hashes(Path(config.store_url)) == reference


def _kill_first_busy_worker(address: str, done: threading.Event) -> tuple[str, int] | None:
    """SIGKILL the first worker seen running a shard task; (task key, worker pid)."""
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=False) as client:
        pids = client.run(os.getpid)
        while not done.is_set():
            busy = {w: keys for w, keys in client.processing().items() if keys}
            for worker, keys in busy.items():
                pid = int(pids[worker])
                os.kill(pid, signal.SIGKILL)
                return str(sorted(keys)[0]), int(pid)
            time.sleep(0.05)
    return None


def test_cluster_build_survives_a_killed_worker(
    world: WorldManifest, tmp_path: Path, reference: dict[str, str], dask_cluster: str
) -> None:
    config = load_config(world_config(world, tmp_path, modalities=MODALITIES))
    result: dict[str, BuildReport | BaseException] = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["report"] = build_corpus(
                config,
                BuildOptions(scheduler=dask_cluster, show_progress=False),
                builder=SlowTiles(pause_s=2.0),
            )
        except BaseException as exc:
            result["report"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    killed = _kill_first_busy_worker(dask_cluster, done)
    thread.join()
    report = result["report"]
    assert not isinstance(report, BaseException), report
    assert killed is not None, "no shard task was seen running"
    key, pid = killed
    assert report.tiles == {"done": 4, "empty": 0, "failed": 0} and report.shard_errors == 0
    shards = [e for e in read_run_log(report.log) if e["event"] == "shard"]
    assert sorted(e["shard"] for e in shards) == [0, 1, 2, 3]
    killed_shard = int(key.rsplit("-", 1)[1])
    rerun_on = next(e["worker"] for e in shards if e["shard"] == killed_shard)
    assert not rerun_on.endswith(f":{pid}"), "the killed worker cannot have finished the task"
    assert store_hashes(Path(config.store_url)) == reference
