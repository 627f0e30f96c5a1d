"""Where shard tasks run: in this process, on a LocalCluster, or on any Dask cluster by address.

One coarse task per shard, submitted in waves: at most `max_in_flight` futures exist
at a time and a new one is submitted as one finishes, so the scheduler holds a
bounded number of tasks however many shards the corpus has. A worker that dies is
the scheduler's business: it reschedules the task elsewhere (`allowed-failures`),
and the task's atomic shard write makes the rerun safe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from terracube.workflows.build.tasks import run_shard_task


class KeyedTask(Protocol):
    """Any task the executors run: a build shard task, an embedding shard task."""

    @property
    def key(self) -> str: ...


TaskT = TypeVar("TaskT", bound=KeyedTask)


class Executor(Protocol):
    """Runs shard tasks and reports each one (its outcome or its exception) as it finishes.

    What runs each task is the executor's `function` (`open_executor(function=...)`:
    a build shard task by default, an embedding export passes its own)."""

    @property
    def dashboard(self) -> str | None:
        """The dashboard link, or None (read only: DaskExecutor asks its scheduler)."""
        ...

    peak_in_flight: int
    """Most tasks submitted and not yet finished at any moment of the last run."""

    def run(self, tasks: Iterable[TaskT], on_done: Callable[[TaskT, Any], None]) -> None: ...


class SerialExecutor:
    """Every task in this process, in order: the synchronous path (debugging, tiny corpora)."""

    dashboard: str | None = None
    peak_in_flight: int = 0

    def __init__(self, function: Callable[[Any], Any] = run_shard_task) -> None:
        self.function = function

    def run(self, tasks: Iterable[TaskT], on_done: Callable[[TaskT, Any], None]) -> None:
        for task in tasks:
            self.peak_in_flight = 1
            try:
                outcome: Any = self.function(task)
            except Exception as error:
                outcome = error
            on_done(task, outcome)


@dataclass
class DaskExecutor:
    """Shard tasks on a Dask cluster, at most `max_in_flight` submitted at a time."""

    client: Any
    max_in_flight: int = 256
    retries: int = 1
    """Extra tries of a task that raised (a worker that died is rescheduled regardless)."""
    peak_in_flight: int = 0
    function: Callable[[Any], Any] = run_shard_task
    """What runs each task on a worker (`benchmarks/plan_scale.py` submits a no-op)."""

    @property
    def dashboard(self) -> str | None:
        """The dashboard link, only when the scheduler really serves one."""
        try:
            services = self.client.scheduler_info().get("services", {})
        except Exception:
            return None
        return str(self.client.dashboard_link) if "dashboard" in services else None

    def run(self, tasks: Iterable[TaskT], on_done: Callable[[TaskT, Any], None]) -> None:
        """Submit in waves with `client.map` and take results as they come, in batches.

        Measured on 2 cores (LocalCluster, 2 workers, 5,000 no-op tasks of 700 bytes):
        one `submit` per task and one `result()` round trip each reached 199 tasks/s;
        `client.map` of a wave plus `as_completed(with_results=True)` (results arrive with
        the completion, no second round trip) reaches 417 tasks/s. At most `max_in_flight`
        tasks exist at a time: a wave of `max_in_flight // 4` is sent each time as many
        have finished."""
        from distributed import as_completed

        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight={self.max_in_flight} must be >= 1")
        pending = iter(tasks)
        by_key: dict[str, TaskT] = {}
        wave = max(1, self.max_in_flight // 4)

        def submit(n: int) -> list[Any]:
            batch = [task for _, task in zip(range(n), pending, strict=False)]
            if not batch:
                return []
            by_key.update((task.key, task) for task in batch)
            return list(
                self.client.map(
                    self.function,
                    batch,
                    key=[task.key for task in batch],
                    pure=False,
                    retries=self.retries,
                )
            )

        first = submit(self.max_in_flight)
        if not first:
            return
        in_flight = self.peak_in_flight = len(first)
        # The client is not the process default (see open_executor); make it current here.
        with self.client.as_current():
            completed = as_completed(
                first, loop=self.client.loop, with_results=True, raise_errors=False
            )
        del first  # hold no finished future: its result is released as soon as it is handled
        finished = 0
        try:
            for future, result in completed:
                in_flight -= 1
                task = by_key.pop(future.key)
                outcome: Any = result
                if future.status == "error":  # (type, exception, traceback)
                    outcome = result[1]
                future.release()
                del future, result
                on_done(task, outcome)
                finished += 1
                if finished >= wave:
                    more = submit(finished)
                    finished = 0
                    if more:
                        completed.update(more)
                        in_flight += len(more)
                        self.peak_in_flight = max(self.peak_in_flight, in_flight)
        except BaseException:
            # Ctrl-C: stop asking for more; finished shards are already on storage.
            self.client.cancel(list(completed.futures))
            raise


def default_workers() -> int:
    """One single-threaded worker process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, os.cpu_count() or 1)


CONNECT_TIMEOUT = "5s"
"""How long a build waits for a `--scheduler` to answer before it says so (Dask's own
default retried for 30 s and then printed 80 lines)."""


class SchedulerUnreachable(ConnectionError):
    """No Dask scheduler answers at the address given; the message names it."""


@contextlib.contextmanager
def open_executor(
    scheduler: str | None = None,
    workers: int | None = None,
    memory_limit: str = "auto",
    max_in_flight: int = 256,
    synchronous: bool = False,
    function: Callable[[Any], Any] = run_shard_task,
) -> Iterator[Executor]:
    """The executor for a build: synchronous, an existing scheduler, or a new LocalCluster.

    A LocalCluster has `workers` processes (default: one per core) with one thread
    each, so a task's memory is bounded by the worker's `memory_limit` ("auto" splits
    the machine's memory evenly) and GIL-bound work does not contend.
    """
    if synchronous:
        if scheduler:
            raise ValueError("choose --synchronous or --scheduler, not both")
        yield SerialExecutor(function)
        return
    from distributed import Client, LocalCluster

    if scheduler:
        if workers is not None:
            raise ValueError(
                f"--workers {workers} only sizes a new LocalCluster; the cluster at "
                f"{scheduler} already has its workers (scale it there)"
            )
        # set_as_default=False: the build submits through this client explicitly, and a
        # default client would leak into the caller's later dask computations.
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerUnreachable(
                f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT} "
                f"({type(exc).__name__}); start it (`dask scheduler`) or correct --scheduler / "
                "cluster.scheduler"
            ) from None
        with client:
            yield DaskExecutor(client, max_in_flight, function=function)
        return
    with (
        LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield DaskExecutor(client, max_in_flight, function=function)
