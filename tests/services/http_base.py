"""Plumbing shared by the in-process HTTP test servers: a background threaded server,
per-path request/byte accounting, and the code that plays a scripted Fault on the wire."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.services.faults import Fault, FaultScript
from tests.services.process import LOOPBACK


@dataclass
class PathStats:
    """What the server did for one path: requests by method, body bytes sent, ranges served."""

    requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


class RequestLog:
    """Thread-safe accounting of requests and body bytes per URL path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, PathStats] = {}

    def _stats(self, path: str) -> PathStats:
        return self._paths.setdefault(path, PathStats())

    def record_request(self, path: str, method: str) -> None:
        with self._lock:
            stats = self._stats(path)
            stats.requests += 1
            stats.by_method[method] = stats.by_method.get(method, 0) + 1

    def record_status(self, path: str, status: int) -> None:
        with self._lock:
            self._stats(path).statuses.append(status)

    def record_range(self, path: str, first: int, last: int) -> None:
        with self._lock:
            self._stats(path).ranges.append((first, last))

    def record_bytes(self, path: str, n_bytes: int) -> None:
        with self._lock:
            self._stats(path).bytes_sent += n_bytes

    def stats(self, path: str) -> PathStats:
        """A copy of the stats for `path` (all zero if it was never requested)."""
        with self._lock:
            s = self._paths.get(path, PathStats())
            return PathStats(
                s.requests, dict(s.by_method), s.bytes_sent, list(s.ranges), list(s.statuses)
            )

    def total_requests(self) -> int:
        with self._lock:
            return sum(s.requests for s in self._paths.values())

    def reset(self) -> None:
        with self._lock:
            self._paths.clear()


class FaultingHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 keep-alive, quiet logs, accounting and fault playback.

    Subclasses get `self.server.request_log` / `self.server.faults` through the server.
    """

    protocol_version = "HTTP/1.1"
    # Small responses otherwise wait ~40 ms for Nagle + delayed ACKs (9.8 s vs 1.0 s
    # over 100 ranged reads); a cloud bucket does not behave like that.
    disable_nagle_algorithm = True
    server: ServiceHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request stderr line; accounting lives in RequestLog."""

    @property
    def url_path(self) -> str:
        return self.path.split("?", 1)[0]

    def send_response(self, code: int, message: str | None = None) -> None:
        self.server.request_log.record_status(self.url_path, code)
        super().send_response(code, message)

    def begin_request(self) -> Fault | None:
        """Count the request and consume its fault; plays delays and status faults itself.

        Returns the fault when the caller must still serve the real response with it
        (truncation, or pure delay), None when there is no fault or it was fully answered
        (`self.answered` is then True). The request body is in `self.request_body`.
        """
        self.answered = False
        # Read the body first, always: a fault answered without consuming it would leave
        # the bytes on a keep-alive connection, to be parsed as the next request.
        length = int(self.headers.get("Content-Length") or 0)
        self.request_body = self.rfile.read(length) if length > 0 else b""
        self.server.request_log.record_request(self.url_path, self.command)
        fault = self.server.faults.next_fault(self.url_path)
        if fault is None:
            return None
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.replaces_response:
            self._send_status_fault(fault)
            self.answered = True
            return None
        return fault

    def _send_status_fault(self, fault: Fault) -> None:
        assert fault.status is not None
        body = f"scripted fault: HTTP {fault.status}\n".encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if fault.retry_after_s is not None:
            self.send_header("Retry-After", str(math.ceil(fault.retry_after_s)))
        self.end_headers()
        if self.command != "HEAD":
            self.write_body(body, None)

    def write_body(self, body: bytes, fault: Fault | None) -> None:
        """Write `body`, or only its first bytes and hang up when the fault says truncate."""
        if fault is not None and fault.truncate_to_bytes is not None:
            body = body[: fault.truncate_to_bytes]
            self.close_connection = True
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        self.server.request_log.record_bytes(self.url_path, len(body))


class ServiceHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the request log and fault script for its handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[FaultingHandler]) -> None:
        super().__init__((LOOPBACK, 0), handler)
        self.request_log = RequestLog()
        self.faults = FaultScript()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextmanager
def serving(server: ServiceHTTPServer) -> Iterator[ServiceHTTPServer]:
    """Run `server` in a background thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, name=f"http:{server.url}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
