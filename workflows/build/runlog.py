"""The machine-readable run log: one JSON object per line, beside the store.

Every line has `event` and `time` (UTC ISO-8601). Events: `start` (the redacted
config, the plan size, what is left to build), `shard` (a finished shard: its
samples' states, seconds, worker), `shard_error` (a task that raised), `end`
(totals). Nothing secret is ever written: the config goes through `redacted()`, and
error messages are scrubbed of every environment-provided value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by '***'."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


class RunLog:
    """Append-only JSON-lines log of one build run (flushed per line: a crash loses nothing)."""

    def __init__(self, path: Path, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets = tuple(secrets)
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": utc_now(), **fields}, default=str)
        self._fh.write(scrub(line, self._secrets) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_run_log(path: Path) -> list[dict[str, Any]]:
    """Every event of a run log, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
