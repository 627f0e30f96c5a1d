"""A static file server with HTTP range requests, accounting and fault injection.

Why: GDAL reads cloud-optimised GeoTIFFs over /vsicurl with HEAD and `Range: bytes=a-b`
GETs, exactly as from a cloud bucket. Serving the test's files this way exercises that
path for real, and the per-path byte counts prove a windowed read fetched only a part of
the file. Scripted faults (5xx, 429 + Retry-After, 404, truncated bodies, slowness) let
retry code be tested against real sockets.
"""

from __future__ import annotations

import mimetypes
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from tests.services.faults import Fault, FaultScript
from tests.services.http_base import FaultingHandler, PathStats, ServiceHTTPServer, serving


class RangeNotSatisfiable(ValueError):
    """The Range header is malformed or lies wholly outside the file (answered with 416)."""


def parse_byte_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) byte pairs for a `Range: bytes=...` header and a file size.

    Pure so it can be tested without a socket. Stricter than RFC 9110 on syntax: a
    malformed range is refused with 416 instead of silently ignored, so a client bug shows.
    """
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        raise RangeNotSatisfiable(f"unsupported Range header {header!r}; use 'bytes=first-last'")
    ranges: list[tuple[int, int]] = []
    for raw in specs.split(","):
        spec = raw.strip()
        first_s, dash, last_s = spec.partition("-")
        if not dash or not (first_s or last_s):
            raise RangeNotSatisfiable(f"malformed byte range {spec!r} in {header!r}")
        if not all(part.isdigit() for part in (first_s, last_s) if part):
            raise RangeNotSatisfiable(f"malformed byte range {spec!r} in {header!r}")
        if not first_s:  # suffix: the last N bytes
            n = int(last_s)
            if n == 0 or size == 0:
                continue
            ranges.append((max(0, size - n), size - 1))
            continue
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
        if last < first:
            raise RangeNotSatisfiable(f"byte range {spec!r} ends before it starts")
        if first >= size:
            continue
        ranges.append((first, min(last, size - 1)))
    if not ranges:
        raise RangeNotSatisfiable(f"no part of {header!r} lies within the {size}-byte file")
    return ranges


class _AssetHandler(FaultingHandler):
    server: AssetHTTPServer

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _resolve(self) -> Path | None:
        relative = unquote(self.url_path).lstrip("/")
        candidate = (self.server.root / relative).resolve()
        if not candidate.is_relative_to(self.server.root) or not candidate.is_file():
            return None
        return candidate

    def _send_plain(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.write_body(body, None)

    def _serve(self, send_body: bool) -> None:
        fault = self.begin_request()
        if self.answered:
            return
        path = self._resolve()
        if path is None:
            self._send_plain(404, f"not found: {self.url_path}\n")
            return
        data = path.read_bytes()
        size = len(data)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        range_header = self.headers.get("Range")
        if range_header is None:
            self._send_whole(data, content_type, send_body, fault)
            return
        try:
            ranges = parse_byte_ranges(range_header, size)
        except RangeNotSatisfiable as exc:
            self._send_plain(416, f"{exc}\n", {"Content-Range": f"bytes */{size}"})
            return
        for first, last in ranges:
            self.server.request_log.record_range(self.url_path, first, last)
        if len(ranges) == 1:
            first, last = ranges[0]
            self.send_response(206)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if send_body:
                self.write_body(data[first : last + 1], fault)
            return
        self._send_multipart(data, ranges, content_type, send_body, fault)

    def _send_whole(self, data: bytes, content_type: str, send_body: bool, fault: Fault | None):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if send_body:
            self.write_body(data, fault)

    def _send_multipart(
        self,
        data: bytes,
        ranges: list[tuple[int, int]],
        content_type: str,
        send_body: bool,
        fault: Fault | None,
    ) -> None:
        boundary = secrets.token_hex(12)
        parts = []
        for first, last in ranges:
            head = (
                f"--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: bytes {first}-{last}/{len(data)}\r\n\r\n"
            ).encode()
            parts.append(head + data[first : last + 1] + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        self.send_response(206)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.write_body(body, fault)


class AssetHTTPServer(ServiceHTTPServer):
    def __init__(self, root: Path) -> None:
        super().__init__(_AssetHandler)
        self.root = root.resolve()


@dataclass(frozen=True)
class AssetServer:
    """Handle on a running asset server: its URL, the directory it serves, stats and faults."""

    url: str
    root: Path
    startup_s: float
    _server: AssetHTTPServer

    def url_for(self, relative_path: str | Path) -> str:
        """The http URL of a file under `root` (a path relative to root)."""
        rel = Path(relative_path)
        if rel.is_absolute():
            rel = rel.resolve().relative_to(self.root)
        return f"{self.url}/{quote(rel.as_posix())}"

    def vsicurl(self, relative_path: str | Path) -> str:
        """The GDAL path that reads the file over HTTP range requests."""
        return f"/vsicurl/{self.url_for(relative_path)}"

    @property
    def faults(self) -> FaultScript:
        return self._server.faults

    def stats(self, relative_path: str | Path) -> PathStats:
        return self._server.request_log.stats("/" + Path(relative_path).as_posix().lstrip("/"))

    def total_requests(self) -> int:
        return self._server.request_log.total_requests()

    def reset(self) -> None:
        """Forget counts and pending faults (between tests sharing the session server)."""
        self._server.request_log.reset()
        self._server.faults.clear()


@contextmanager
def run_asset_server(root: Path) -> Iterator[AssetServer]:
    """Serve `root` over HTTP on a free loopback port until the block exits."""
    if not root.is_dir():
        raise NotADirectoryError(f"asset server root {root} is not a directory; create it first")
    started = time.perf_counter()
    with serving(AssetHTTPServer(root)) as server:
        yield AssetServer(
            url=server.url,
            root=server.root,
            startup_s=time.perf_counter() - started,
            _server=server,
        )
