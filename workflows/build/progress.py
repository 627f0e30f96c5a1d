"""What a person watching a build sees: tiles done / empty / failed, throughput, ETA.

A sample counts as `failed` when any of its modalities failed, `empty` when none is
done and none failed (no data anywhere), else `done`. On a terminal the bar is rich's;
elsewhere (CI, a log file, a cluster job) rich would print one final frame, so the
same facts go out as a plain line every few seconds (`workflows/progress.py`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from terracube.pipeline.corpus.store import SampleState
from terracube.workflows.build.tasks import ShardOutcome
from terracube.workflows.progress import PLAIN_EVERY_S, LineProgress


def sample_verdict(states: dict[str, int]) -> str:
    """'failed' | 'empty' | 'done' | 'pending' for one sample's modality states."""
    values = set(states.values())
    if SampleState.FAILED in values:
        return "failed"
    if SampleState.PENDING in values or not values:
        return "pending"
    if SampleState.DONE in values:
        return "done"
    return "empty"


def tally(outcomes: Iterable[ShardOutcome]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        for sample in outcome.samples:
            if sample.rebuilt:
                counts[sample_verdict(sample.states)] += 1
    return counts


class BuildProgress:
    """A rich progress bar over the tiles a run builds; `update` once per finished shard."""

    def __init__(
        self,
        total_tiles: int,
        console: Console | None = None,
        enabled: bool = True,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled and total_tiles > 0
        self.total = total_tiles
        self.plain = None
        """Periodic plain lines instead of the bar when the console is not a terminal."""
        if not self.console.is_terminal:
            self.plain = LineProgress("build", total_tiles, "tiles", self.console.file, every_s)
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]build"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tiles"),
            TextColumn("{task.fields[states]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task(
            "build", total=total_tiles, states=self._states(), rate=""
        )

    def _states(self) -> str:
        c = self.counts
        return (
            f"[green]{c['done']} done[/] [yellow]{c['empty']} empty[/] [red]{c['failed']} failed[/]"
        )

    @property
    def tiles_per_minute(self) -> float:
        elapsed = time.monotonic() - self.started
        built = sum(self.counts.values())
        return 60.0 * built / elapsed if elapsed > 0 else 0.0

    def __enter__(self) -> BuildProgress:
        if self.enabled and self.plain is None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.plain is None:
            self._progress.stop()

    def update(self, outcome: ShardOutcome) -> None:
        new = tally([outcome])
        self.counts.update(new)
        if self.plain is not None:
            if self.enabled:
                c = self.counts
                detail = f"{c['done']} done, {c['empty']} empty, {c['failed']} failed"
                self.plain.update(sum(c.values()), detail)
            return
        self._progress.update(
            self._task,
            advance=sum(new.values()),
            states=self._states(),
            rate=f"{self.tiles_per_minute:.1f} tiles/min",
        )

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)
