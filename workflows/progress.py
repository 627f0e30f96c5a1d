"""Progress a person and a log both read: a live bar on a terminal, plain lines elsewhere.

rich's live bar redraws one line in place; piped into a file (a CI log, `nohup`, a
cluster job's stdout) it left a single final frame, so a long build, pretraining or
evaluation looked hung until it ended. `LineProgress` writes the same facts as one
plain line every `every_s` seconds (and always the first and last), e.g.

    pretrain: step 40/200 (20 %), loss 3.612, 14.1 steps/min, ETA 0:11:21

and `Progress` picks the bar or the lines from whether the stream is a terminal.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import IO

PLAIN_EVERY_S = 15.0
"""Seconds between two plain progress lines (a log stays readable, a job never silent)."""


def eta(done: int, total: int, elapsed: float) -> str:
    """Time left at the rate so far, as H:MM:SS ('-' before anything is done)."""
    if done <= 0 or total <= done or elapsed <= 0:
        return "0:00:00" if total and done >= total else "-"
    return str(timedelta(seconds=round(elapsed * (total - done) / done)))


class LineProgress:
    """Plain progress lines: `update` prints when `every_s` passed since the last line."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "steps",
        stream: IO[str] | None = None,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self._last: float | None = None
        self.lines = 0

    def line(self, done: int, detail: str = "") -> str:
        elapsed = time.monotonic() - self.started
        rate = 60.0 * done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * done / self.total:.0f} %)" if self.total else ""
        extra = f", {detail}" if detail else ""
        return (
            f"{self.label}: {done}/{self.total} {self.unit}{share}{extra}, "
            f"{rate:.1f} {self.unit}/min, ETA {eta(done, self.total, elapsed)}"
        )

    def update(self, done: int, detail: str = "", force: bool = False) -> None:
        now = time.monotonic()
        due = self._last is None or now - self._last >= self.every_s or done >= self.total
        if force or due:
            self.stream.write(self.line(done, detail) + "\n")
            self.stream.flush()
            self._last = now
            self.lines += 1


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class StepProgress:
    """Step / detail / rate / ETA of a loop: rich's bar on a terminal, else `LineProgress`."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "steps",
        stream: IO[str] | None = None,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.lines = LineProgress(label, total, unit, self.stream, every_s)
        self._bar = None
        if is_terminal(self.stream) and total > 0:  # nothing to count: no bar
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._task = self._bar.add_task(label, total=total, detail="")
            self._bar.start()

    def update(self, done: int, detail: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, detail=detail)
        else:
            self.lines.update(done, detail)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class StagesProgress:
    """`progress(stage, done, total)` callbacks of a multi-stage job (the plan: one search
    per source, then the assignment `plan`), one `StepProgress` per stage. Stages under
    `min_searches` searches or `min_tiles` tiles say nothing, so a small plan prints
    what it printed before."""

    def __init__(
        self, stream: IO[str] | None = None, min_searches: int = 0, min_tiles: int = 0
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.min_searches, self.min_tiles = min_searches, min_tiles
        self._open: dict[str, StepProgress] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if total < (self.min_tiles if stage == "plan" else self.min_searches):
            return
        bar = self._open.get(stage)
        if bar is None:
            unit = "tiles" if stage == "plan" else "searches"
            bar = self._open[stage] = StepProgress(stage, total, unit, self.stream)
        bar.update(done)
        if done >= total:
            bar.close()
