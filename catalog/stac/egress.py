"""Every connection GDAL opens for a catalog-chosen URL goes through one checkpoint.

Checking an href's text once is not enough. The name is resolved again when GDAL
connects, so DNS rebinding can answer a public address to the check and a private one
to the read. GDAL's curl also follows HTTP redirects on its own, to any host. With
`GDAL_HTTP_PROXY` pointing at this process's `EgressProxy`, curl sends every request
of every redirect hop, and every `CONNECT` of an https URL, to the proxy (measured:
a 302 to another host arrives as a second proxy request). The proxy resolves the host
once, judges every address (`href_hosts.resolve_checked`), and connects to the checked
address itself. A refused hop gets a 403 that names the rule, and the refusal is kept
(`refusals`) so the tile's failure can say why.

curl bypasses a proxy for the hosts in `NO_PROXY`, so starting the proxy clears
`NO_PROXY` / `no_proxy` in this (worker) process.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from terracube.catalog.stac.href_hosts import (
    InternalAllowance,
    Resolver,
    UnsafeHostError,
    allowance_of,
    resolve_checked,
    system_resolver,
)

log = logging.getLogger(__name__)

RELAY_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 30.0


@dataclass
class _State:
    allowance: InternalAllowance
    resolver: Resolver
    refusals: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, what: str) -> None:
        with self.lock:
            self.refusals.append(what)
        log.warning("egress refused: %s", what)


class _Handler(socketserver.StreamRequestHandler):
    state: _State

    def handle(self) -> None:
        line = self.rfile.readline(65536).decode("latin-1").strip()
        headers = []
        while True:
            header = self.rfile.readline(65536)
            if header in (b"\r\n", b"\n", b""):
                break
            headers.append(header.decode("latin-1").rstrip("\r\n"))
        try:
            method, target, _ = line.split(" ", 2)
        except ValueError:
            return
        if method.upper() == "CONNECT":
            host, _, port = target.rpartition(":")
            self._tunnel(host.strip("[]"), int(port or 443))
        else:
            self._forward(method, target, headers)

    def _open(self, host: str, port: int, shown: str) -> socket.socket | None:
        try:
            addresses = resolve_checked(host, port, self.state.allowance, self.state.resolver)
        except UnsafeHostError as exc:
            self.state.refuse(f"{shown}: {exc}")
            self._answer("403 Forbidden", f"terracube refused {shown}: {exc}")
            return None
        last: OSError | None = None
        for address in addresses:  # each one judged above
            try:
                return socket.create_connection((str(address), port), timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                last = exc
        self._answer("502 Bad Gateway", f"terracube could not connect to {shown}: {last}")
        return None

    def _answer(self, status: str, text: str) -> None:
        """The proxy's own plain-text answer (a refusal or a failed connection)."""
        body = f"{text}\n".encode()
        self.wfile.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n".encode()
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def _tunnel(self, host: str, port: int) -> None:
        upstream = self._open(host, port, f"https://{host}:{port}")
        if upstream is None:
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        _relay(self.connection, upstream)

    def _forward(self, method: str, target: str, headers: list[str]) -> None:
        parts = urlsplit(target)
        host, port = (parts.hostname or ""), parts.port or 80
        upstream = self._open(host, port, target)
        if upstream is None:
            return
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        kept = [
            h
            for h in headers
            if h.split(":", 1)[0].strip().lower()
            not in ("proxy-connection", "connection", "keep-alive", "proxy-authorization")
        ]
        request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in kept)
        upstream.sendall((request + "Connection: close\r\n\r\n").encode("latin-1"))
        length = next(
            (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")),
            0,
        )
        if length:  # the body: part of it may already sit in rfile's buffer
            upstream.sendall(self.rfile.read(length))
        _relay_response(self.connection, upstream, head_only=method.upper() == "HEAD")
        self.close_connection = True


_HOP_HEADERS = (b"connection:", b"keep-alive:", b"proxy-connection:")
"""Hop-by-hop response headers replaced by `Connection: close`."""


def _relay_response(client: socket.socket, upstream: socket.socket, head_only: bool) -> None:
    """Copy one response to the client, marked `Connection: close` (the client must not send
    its next request down this connection: it would skip the check). The body ends where
    its framing says (Content-Length, chunked) or when the server closes."""
    reader = upstream.makefile("rb")
    try:
        status = reader.readline(65536)
        lines = []
        while True:
            line = reader.readline(65536)
            if line in (b"\r\n", b"\n", b""):
                break
            lines.append(line.rstrip(b"\r\n"))
        kept = [h for h in lines if not h.lower().startswith(_HOP_HEADERS)]
        client.sendall(status + b"".join(h + b"\r\n" for h in kept) + b"Connection: close\r\n\r\n")
        code = int(status.split()[1]) if len(status.split()) > 1 else 0
        if head_only or code in (204, 304) or 100 <= code < 200:
            return
        fields = {
            h.split(b":", 1)[0].strip().lower(): h.split(b":", 1)[1].strip()
            for h in kept
            if b":" in h
        }
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            _copy_chunked(reader, client)
        elif b"content-length" in fields:
            _copy(reader, client, int(fields[b"content-length"]))
        else:
            _copy(reader, client, None)
    except (OSError, ValueError):
        return
    finally:
        reader.close()
        upstream.close()


def _copy(reader: Any, client: socket.socket, length: int | None) -> None:
    left = length
    while left is None or left > 0:
        chunk = reader.read1(RELAY_BYTES if left is None else min(RELAY_BYTES, left))
        if not chunk:
            return
        client.sendall(chunk)
        if left is not None:
            left -= len(chunk)


def _copy_chunked(reader: Any, client: socket.socket) -> None:
    while True:
        size_line = reader.readline(65536)
        client.sendall(size_line)
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the blank line
                trailer = reader.readline(65536)
                client.sendall(trailer)
                if trailer in (b"\r\n", b"\n", b""):
                    return
        _copy(reader, client, size + 2)  # the data and its CRLF


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """A `CONNECT` tunnel: copy bytes both ways until either side closes."""
    sockets = [client, upstream]
    try:
        while True:
            ready, _, broken = select.select(sockets, [], sockets, CONNECT_TIMEOUT_S)
            if broken or not ready:
                return
            for sock in ready:
                data = sock.recv(RELAY_BYTES)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-relay is the client's or the server's business:
        logged, never printed as a traceback into the user's output."""
        log.debug("egress: connection from %s ended with an error", client_address, exc_info=True)


class EgressProxy:
    """A forward proxy on 127.0.0.1 that lets GDAL reach only allowed addresses."""

    def __init__(self, allowance: InternalAllowance, resolver: Resolver = system_resolver):
        self.state = _State(allowance, resolver)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        for name in ("NO_PROXY", "no_proxy"):
            if os.environ.pop(name, None) is not None:
                log.info("egress: %s cleared so that every host goes through the check", name)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}" if isinstance(host, str) else f"127.0.0.1:{port}"

    def gdal_options(self) -> dict[str, object]:
        return {"GDAL_HTTP_PROXY": self.address}

    @property
    def refusals(self) -> list[str]:
        with self.state.lock:
            return list(self.state.refusals)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_PROXIES: dict[tuple[int, frozenset[str]], EgressProxy] = {}
_LOCK = threading.Lock()


def egress_proxy(internal_hosts: frozenset[str] = frozenset()) -> EgressProxy:
    """This process's proxy for `internal_hosts` (started on first use). The host of a
    configured S3 endpoint (`AWS_S3_ENDPOINT`, set by the user, not a catalog) is allowed
    too, since GDAL reaches it through the same proxy."""
    endpoint = os.environ.get("AWS_S3_ENDPOINT", "")
    extra = {urlsplit(f"//{endpoint}").hostname or ""} if endpoint else set()
    entries = frozenset(internal_hosts | {e for e in extra if e})
    key = (os.getpid(), entries)
    with _LOCK:
        proxy = _PROXIES.get(key)
        if proxy is None:
            proxy = _PROXIES[key] = EgressProxy(allowance_of(entries))
        return proxy
