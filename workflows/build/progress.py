"""What a person watching a build sees: tiles done / empty / failed, throughput, ETA.

A sample counts as `failed` when any of its modalities failed, `empty` when none is
done and none failed (no data anywhere), else `done`. The bar is rich's; when the
output is not a terminal (CI, a log file) rich prints nothing but the final summary.
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
        self, total_tiles: int, console: Console | None = None, enabled: bool = True
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total_tiles
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
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, outcome: ShardOutcome) -> None:
        new = tally([outcome])
        self.counts.update(new)
        self._progress.update(
            self._task,
            advance=sum(new.values()),
            states=self._states(),
            rate=f"{self.tiles_per_minute:.1f} tiles/min",
        )

    def note(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message)
