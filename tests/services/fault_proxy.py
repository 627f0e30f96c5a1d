"""A reverse proxy that forwards to any HTTP service except where a scripted fault applies.

Why: the STAC API (uvicorn) and other real services cannot be told to fail on cue. Put
this proxy in front, script "500 then 200", "429 with Retry-After", "never recovers" or a
truncated body per path, and point the client at the proxy's URL. The Host header is
passed through, so links the service builds (e.g. STAC `next` pages) point back at the
proxy and paging stays behind it.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.services.faults import FaultScript
from tests.services.http_base import FaultingHandler, PathStats, ServiceHTTPServer, serving

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class _ProxyHandler(FaultingHandler):
    server: ProxyHTTPServer

    def _forward(self) -> None:
        fault = self.begin_request()
        if self.answered:
            return
        body = self.request_body or None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        connection = http.client.HTTPConnection(
            self.server.target_host, self.server.target_port, timeout=self.server.timeout_s
        )
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            upstream = connection.getresponse()
            payload = upstream.read()
            self.send_response(upstream.status, upstream.reason)
            for key, value in upstream.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            announced = upstream.getheader("Content-Length")
            if self.command == "HEAD" and announced is not None:
                self.send_header("Content-Length", announced)
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.write_body(payload, fault)
        except OSError as exc:
            message = f"fault proxy: upstream {self.server.target_url} failed: {exc}\n".encode()
            self.send_response(502)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.write_body(message, None)
        finally:
            connection.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _forward


class ProxyHTTPServer(ServiceHTTPServer):
    def __init__(self, target_url: str, timeout_s: float) -> None:
        parts = urlsplit(target_url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(
                f"fault proxy target {target_url!r} must be a plain http://host:port URL "
                "(no path, no https)"
            )
        super().__init__(_ProxyHandler)
        self.target_url = target_url.rstrip("/")
        self.target_host = parts.hostname
        self.target_port = parts.port or 80
        self.timeout_s = timeout_s


@dataclass(frozen=True)
class FaultProxy:
    """Handle on a running proxy: its URL, the target, the fault script and request stats."""

    url: str
    target_url: str
    startup_s: float
    _server: ProxyHTTPServer

    @property
    def faults(self) -> FaultScript:
        return self._server.faults

    def stats(self, path: str) -> PathStats:
        return self._server.request_log.stats(path)

    def total_requests(self) -> int:
        return self._server.request_log.total_requests()

    def reset(self) -> None:
        self._server.request_log.reset()
        self._server.faults.clear()


@contextmanager
def run_fault_proxy(target_url: str, timeout_s: float = 60.0) -> Iterator[FaultProxy]:
    """Proxy `target_url` (http://host:port) on a free loopback port until the block exits."""
    started = time.perf_counter()
    with serving(ProxyHTTPServer(target_url, timeout_s)) as server:
        yield FaultProxy(
            url=server.url,
            target_url=server.target_url,
            startup_s=time.perf_counter() - started,
            _server=server,
        )
