"""Asset hrefs a remote catalog chooses cannot reach this machine or its network
(issue 23): every connection GDAL opens goes through the egress check, redirect hops and
DNS answers included, against real local servers and a resolver that answers a private
address."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import rasterio
from terracube.catalog.stac.egress import EgressProxy
from terracube.catalog.stac.href_hosts import allowance_of
from terracube.workflows.world import WorldManifest

from tests.services.http_assets import AssetServer


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[str, http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}", server


def _redirector(location: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(302)
            self.send_header("Location", location + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Redirect


@pytest.fixture(scope="module")
def cog(world: WorldManifest) -> Path:
    return next((world.root / "stac").rglob("*.tif"))


@pytest.fixture
def assets(world_assets: AssetServer) -> Iterator[AssetServer]:
    world_assets.reset()
    yield world_assets
    world_assets.reset()


def _open(href: str, proxy: EgressProxy) -> tuple[int, int]:
    env = rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", **proxy.gdal_options())
    with env, rasterio.open(f"/vsicurl/{href}") as ds:
        return ds.shape


def test_an_allowed_host_is_read_through_the_check(
    assets: AssetServer, cog: Path, world: WorldManifest
) -> None:
    proxy = EgressProxy(allowance_of(["127.0.0.1"]))
    try:
        href = assets.url_for(cog.relative_to(world.root)) + "?allowed"
        with rasterio.open(cog) as ds:
            assert _open(href, proxy) == ds.shape
        assert proxy.refusals == []
    finally:
        proxy.close()


def test_loopback_is_refused_when_not_allowed(
    assets: AssetServer, cog: Path, world: WorldManifest
) -> None:
    proxy = EgressProxy(allowance_of([]))
    try:
        href = assets.url_for(cog.relative_to(world.root)) + "?refused"
        with pytest.raises(rasterio.errors.RasterioIOError, match="403"):
            _open(href, proxy)
        assert len(proxy.refusals) == 1 and "loopback" in proxy.refusals[0]
        assert href in proxy.refusals[0]
    finally:
        proxy.close()


def test_every_redirect_hop_is_checked(
    assets: AssetServer, cog: Path, world: WorldManifest
) -> None:
    """A server the policy allows redirects to one it refuses (a loopback name): GDAL follows
    redirects on its own, and the hop is refused at the check, naming the target."""
    target = "http://localhost:" + assets.url.rsplit(":", 1)[1].rstrip("/")
    address, server = _serve(_redirector(target))
    proxy = EgressProxy(allowance_of(["127.0.0.1"]))
    try:
        href = f"http://{address}/{cog.relative_to(world.root)}?hop"
        with pytest.raises(rasterio.errors.RasterioIOError, match="403"):
            _open(href, proxy)
        assert any("localhost" in r and "loopback" in r for r in proxy.refusals), proxy.refusals
        assert assets.total_requests() == 0  # the refused target was never reached
    finally:
        proxy.close()
        server.shutdown()


def test_a_name_answering_a_private_address_is_refused_before_any_connection(
    cog: Path, world: WorldManifest
) -> None:
    proxy = EgressProxy(allowance_of([]), resolver=lambda host, port: ["10.0.0.5"])
    try:
        with pytest.raises(rasterio.errors.RasterioIOError, match="403"):
            _open("http://assets.example.com/x.tif?private", proxy)
        assert "resolves to 10.0.0.5: it is a private network" in proxy.refusals[0]
    finally:
        proxy.close()


def test_the_read_uses_the_address_that_was_checked(
    assets: AssetServer, cog: Path, world: WorldManifest
) -> None:
    """The check's resolver decides where the bytes come from: a name no real DNS knows is
    read from the checked address, so a second lookup (DNS rebinding) never happens."""
    port = int(assets.url.rsplit(":", 1)[1].rstrip("/"))
    proxy = EgressProxy(allowance_of(["127.0.0.1"]), resolver=lambda host, p: ["127.0.0.1"])
    try:
        href = f"http://cdn.terracube.invalid:{port}/{cog.relative_to(world.root)}?pinned"
        with rasterio.open(cog) as ds:
            assert _open(href, proxy) == ds.shape
    finally:
        proxy.close()


def test_https_tunnels_are_checked_too() -> None:
    """curl sends https through `CONNECT host:port`: a refused host gets a 403, an allowed
    one a tunnel to the checked address (here a plain TCP echo server)."""
    echo = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = echo.accept()
        conn.sendall(conn.recv(64))
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    proxy = EgressProxy(allowance_of(["127.0.0.1"]))
    try:
        host, port = proxy.address.split(":")
        refused = http.client.HTTPConnection(host, int(port), timeout=10)
        refused.set_tunnel("localhost", 443)
        with pytest.raises(OSError, match="403"):
            refused.connect()
        assert "https://localhost:443" in proxy.refusals[-1]
        tunnel = socket.create_connection((host, int(port)), timeout=10)
        echo_port = echo.getsockname()[1]
        tunnel.sendall(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
        assert tunnel.recv(64).startswith(b"HTTP/1.1 200")
        tunnel.sendall(b"ping")
        assert tunnel.recv(64) == b"ping"
        tunnel.close()
    finally:
        proxy.close()
        echo.close()
