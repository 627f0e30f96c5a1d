"""Scripted HTTP faults shared by the asset server and the fault proxy.

A test says, per path or path prefix, which responses come next ("500 twice, then
normal", "429 with Retry-After: 1", "truncate the body") and the servers consume that
script one request at a time. Retry logic is then tested against real sockets and real
HTTP clients (requests, GDAL's curl), not against a mocked session.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fault:
    """One scripted response; `times=None` repeats it forever (a server that never recovers)."""

    status: int | None = None
    """Answer with this status and a short text body instead of the real response."""
    retry_after_s: float | None = None
    """Sent as a Retry-After header (whole seconds, rounded up) with `status`."""
    truncate_to_bytes: int | None = None
    """Serve the real response but close the connection after this many body bytes,
    while Content-Length still announces the full size."""
    delay_s: float = 0.0
    """Sleep before answering (a slow server); combines with the other fields."""
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault.status must be an HTTP status 100-599, got {self.status}")
        if self.status is not None and self.truncate_to_bytes is not None:
            raise ValueError("Fault: give either status or truncate_to_bytes, not both")
        if self.truncate_to_bytes is not None and self.truncate_to_bytes < 0:
            raise ValueError(f"Fault.truncate_to_bytes must be >= 0, got {self.truncate_to_bytes}")
        if self.delay_s < 0:
            raise ValueError(f"Fault.delay_s must be >= 0, got {self.delay_s}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault.times must be >= 1 or None (forever), got {self.times}")

    @classmethod
    def error(cls, status: int = 500, times: int | None = 1) -> Fault:
        return cls(status=status, times=times)

    @classmethod
    def throttle(cls, retry_after_s: float = 1.0, times: int | None = 1) -> Fault:
        return cls(status=429, retry_after_s=retry_after_s, times=times)

    @classmethod
    def not_found(cls, times: int | None = 1) -> Fault:
        return cls(status=404, times=times)

    @classmethod
    def truncated(cls, keep_bytes: int = 0, times: int | None = 1) -> Fault:
        return cls(truncate_to_bytes=keep_bytes, times=times)

    @classmethod
    def slow(cls, delay_s: float, times: int | None = 1) -> Fault:
        return cls(delay_s=delay_s, times=times)

    @property
    def replaces_response(self) -> bool:
        return self.status is not None


@dataclass
class _Rule:
    prefix: str
    pending: deque[Fault]
    remaining_of_head: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.remaining_of_head = self.pending[0].times if self.pending else 0

    def take(self) -> Fault | None:
        if not self.pending:
            return None
        fault = self.pending[0]
        if self.remaining_of_head is not None:
            self.remaining_of_head -= 1
            if self.remaining_of_head == 0:
                self.pending.popleft()
                self.remaining_of_head = self.pending[0].times if self.pending else 0
        return fault


class FaultScript:
    """Thread-safe script of faults keyed by URL path prefix ("/x.tif" or "/search").

    Rules are tried in the order they were added; the first with faults left answers.
    A path matches a prefix when it equals it or starts with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._injected: dict[str, int] = {}

    def add(self, path_prefix: str, *faults: Fault) -> None:
        if not path_prefix.startswith("/"):
            raise ValueError(f"fault path prefix must start with '/', got {path_prefix!r}")
        if not faults:
            raise ValueError(f"no faults given for {path_prefix!r}")
        with self._lock:
            self._rules.append(_Rule(path_prefix, deque(faults)))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._injected.clear()

    def next_fault(self, path: str) -> Fault | None:
        """Consume and return the fault for this request, or None to answer normally."""
        with self._lock:
            for rule in self._rules:
                if path.startswith(rule.prefix):
                    fault = rule.take()
                    if fault is not None:
                        self._injected[path] = self._injected.get(path, 0) + 1
                        return fault
            return None

    def injected(self, path: str) -> int:
        """How many requests to `path` got a scripted fault."""
        with self._lock:
            return self._injected.get(path, 0)

    def pending(self) -> int:
        """Scripted faults not yet consumed (forever-faults count as one)."""
        with self._lock:
            return sum(
                (rule.remaining_of_head or 1) + sum((f.times or 1) for f in list(rule.pending)[1:])
                for rule in self._rules
                if rule.pending
            )
