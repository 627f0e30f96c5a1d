"""The persisted failure table: which (tile, modality) failed, why, and how often.

Kept as JSON beside the store (`failures.json` in the run folder), rewritten
atomically after every finished shard, so an interrupted run still leaves an exact
table. A (sample, modality) leaves the table when a later attempt ends in any state
other than failed; `attempts` counts the builds that tried it. Messages are scrubbed
of every environment-provided secret, like the run log.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from terracube.pipeline.corpus.store import SampleState
from terracube.workflows.build.runlog import scrub
from terracube.workflows.build.tasks import ShardOutcome


@dataclass(frozen=True)
class Failure:
    sample: int
    tile_id: str
    modality: str
    error_class: str
    message: str
    attempts: int


def split_error(text: str) -> tuple[str, str]:
    """'ErrorClass: message' (the pipeline's format) -> (class, message)."""
    head, sep, rest = text.partition(": ")
    if sep and head and head.replace("_", "").replace(".", "").isalnum() and " " not in head:
        return head, rest
    return "Error", text


class FailureTable:
    """Failures keyed by (sample, modality), loaded from and saved to one JSON file."""

    def __init__(self, path: Path, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self._secrets = tuple(secrets)
        self._rows: dict[tuple[int, str], Failure] = {}
        if self.path.is_file():
            for row in json.loads(self.path.read_text()):
                failure = Failure(**row)
                self._rows[(failure.sample, failure.modality)] = failure

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[Failure]:
        return [self._rows[k] for k in sorted(self._rows)]

    def record(self, outcome: ShardOutcome) -> bool:
        """Fold one finished shard in: every rebuilt modality either fails again or leaves.

        Returns whether the table changed (so a run of clean shards never rewrites it).
        """
        changed = False
        for sample in outcome.samples:
            for name in sample.rebuilt:
                key = (sample.sample, name)
                previous = self._rows.pop(key, None)
                changed |= previous is not None
                if sample.states.get(name) != SampleState.FAILED:
                    continue
                changed = True
                error_class, message = split_error(
                    scrub(sample.errors.get(name, ""), self._secrets)
                )
                self._rows[key] = Failure(
                    sample=sample.sample,
                    tile_id=sample.tile_id,
                    modality=name,
                    error_class=error_class,
                    message=message,
                    attempts=(previous.attempts if previous else 0) + 1,
                )
        return changed

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self.rows], indent=1))
        os.replace(tmp, self.path)
        return self.path

    def top_reasons(self, n: int = 5) -> list[dict[str, Any]]:
        return top_reasons(((r.modality, r.error_class, r.message) for r in self.rows), n)


def top_reasons(failures: Iterable[tuple[str, str, str]], n: int = 5) -> list[dict[str, Any]]:
    """The `n` most frequent (modality, error class, message), most frequent first."""
    counts = Counter(failures)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [
        {"modality": m, "error_class": c, "message": msg, "count": k} for (m, c, msg), k in ranked
    ]
