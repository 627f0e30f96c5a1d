"""Retries against a real HTTP server on 127.0.0.1, and the asset URL policy."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from terracube.catalog.stac.http import (
    HrefPolicy,
    RemoteServiceError,
    RequestCounter,
    RetryPolicy,
    UnsafeHrefError,
    check_asset_href,
    endpoint_of,
    make_session,
    parse_retry_after,
    request_with_retries,
)


class _Script:
    """Per-path list of (status, headers) answered in order; the last one repeats."""

    def __init__(self) -> None:
        self.plans: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def next(self, path: str) -> tuple[int, dict[str, str]]:
        with self.lock:
            n = self.hits.get(path, 0)
            self.hits[path] = n + 1
            plan = self.plans.get(path, [(404, {})])
            return plan[min(n, len(plan) - 1)]


@pytest.fixture
def server() -> Iterator[tuple[str, _Script]]:
    script = _Script()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers = script.next(self.path.split("?")[0])
            body = json.dumps({"status": status}).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05, connect_timeout_s=2)


def test_500_then_200_succeeds_after_one_retry(server) -> None:
    base, script = server
    script.plans["/flaky"] = [(500, {}), (200, {})]
    counter = RequestCounter()
    waits: list[float] = []
    response = request_with_retries(
        make_session(), "GET", f"{base}/flaky", FAST, counter, sleep=waits.append
    )
    assert response.status_code == 200 and response.json() == {"status": 200}
    assert (counter.requests, counter.retries, script.hits["/flaky"]) == (2, 1, 2)
    assert len(waits) == 1 and 0.005 <= waits[0] <= 0.015  # 0.01 s +- 50 % jitter


def test_429_honours_retry_after(server) -> None:
    base, script = server
    script.plans["/busy"] = [(429, {"Retry-After": "3"}), (200, {})]
    waits: list[float] = []
    response = request_with_retries(make_session(), "GET", f"{base}/busy", FAST, sleep=waits.append)
    assert response.status_code == 200 and waits == [3.0]


def test_never_recovering_endpoint_is_named_with_attempts(server) -> None:
    base, script = server
    script.plans["/down"] = [(503, {})]
    counter = RequestCounter()
    with pytest.raises(RemoteServiceError) as info:
        request_with_retries(
            make_session(), "GET", f"{base}/down?token=secret", FAST, counter, sleep=lambda s: None
        )
    message = str(info.value)
    assert f"{base}/down" in message and "4 attempt" in message and "HTTP 503" in message
    assert "secret" not in message  # query strings may carry credentials
    assert script.hits["/down"] == 4 and counter.requests == 4


def test_client_errors_are_not_retried(server) -> None:
    base, script = server
    script.plans["/missing"] = [(404, {})]
    response = request_with_retries(make_session(), "GET", f"{base}/missing", FAST)
    assert response.status_code == 404 and script.hits["/missing"] == 1


def test_connection_refused_is_retried_then_reported() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    with pytest.raises(RemoteServiceError, match=rf"127\.0\.0\.1:{port}/x.*ConnectionError"):
        request_with_retries(
            make_session(), "GET", f"http://127.0.0.1:{port}/x", FAST, sleep=waits.append
        )
    assert len(waits) == FAST.attempts - 1
    assert all(0 < w <= FAST.max_backoff_s * (1 + FAST.jitter) for w in waits)


def test_backoff_is_bounded_and_exponential() -> None:
    import random

    policy = RetryPolicy(backoff_s=1, max_backoff_s=8, jitter=0)
    assert [policy.backoff(n, random.Random(0)) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_retry_after_parsing() -> None:
    from datetime import UTC, datetime

    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_endpoint_strips_query_and_userinfo() -> None:
    assert endpoint_of("https://u:p@host.example/a/b?sig=x") == "https://host.example/a/b"


@pytest.mark.parametrize(
    ("href", "reason"),
    [
        ("file:///etc/passwd", "local files"),
        ("/etc/passwd", "local files"),
        ("../secret.tif", "local files"),
        ("ftp://example.com/x.tif", "scheme 'ftp'"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://2852039166/latest/meta-data/", "metadata"),  # decimal form of the same
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://[fd00:ec2::254]/latest/", "metadata"),
        ("http://169.254.10.1/x.tif", "link-local"),
        ("http://[fe80::1]/x.tif", "link-local"),
        ("http://127.0.0.1:8080/x.tif", "loopback"),
        ("http://localhost/x.tif", "loopback"),
        ("http://[::1]/x.tif", "loopback"),
        ("http://0.0.0.0/x.tif", "this machine"),
        # issue 23: the forms a reader accepts, and the networks behind the worker
        ("http://0x7f000001/x", "loopback"),
        ("http://127.1/x", "loopback"),
        ("http://0177.0.0.1/x", "loopback"),
        ("http://0x7f.1/x", "loopback"),
        ("http://[::ffff:7f00:1]/x", "loopback"),
        ("http://[::127.0.0.1]/x", "loopback"),
        ("http://[2002:7f00:1::]/x", "loopback"),  # 6to4 around 127.0.0.1
        ("http://localhost./x", "loopback"),
        ("http://app.localhost/x", "loopback"),
        ("http://10.0.0.5/x.tif", "private network"),
        ("http://192.168.1.1/x", "private network"),
        ("http://172.16.3.4/x", "private network"),
        ("http://[64:ff9b::a00:5]/x", "private network"),  # NAT64 around 10.0.0.5
        ("http://[fd12:3456::1]/x", "private network"),  # unique-local
        ("http://100.64.1.1/x", "carrier-grade NAT"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://[ff02::1]/x", "multicast"),
        ("http://192.0.2.7/x", "non-public"),  # documentation range
        ("http://user:pw@example.com/x", "credentials"),
    ],
)
def test_remote_policy_refuses(href: str, reason: str) -> None:
    with pytest.raises(UnsafeHrefError, match=reason):
        check_asset_href(href)


@pytest.mark.parametrize(
    "href",
    [
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif",
        "s3://usgs-landsat/collection02/x.TIF",
        "gs://bucket/x.tif",
        "az://container/x.tif",
    ],
)
def test_remote_policy_allows_public_object_storage(href: str) -> None:
    assert check_asset_href(href) == href


def test_loopback_only_when_named_and_hosts_allow_list() -> None:
    policy = HrefPolicy(internal_hosts=frozenset({"127.0.0.1"}))
    assert check_asset_href("http://127.0.0.1:9000/a.tif", policy)
    with pytest.raises(UnsafeHrefError, match="loopback"):
        check_asset_href("http://localhost:9000/a.tif", policy)
    with pytest.raises(UnsafeHrefError, match="metadata"):  # never, whatever the policy
        check_asset_href(
            "http://169.254.169.254/", HrefPolicy(hosts=frozenset({"169.254.169.254"}))
        )
    allow = HrefPolicy(hosts=frozenset({".amazonaws.com"}))
    assert check_asset_href("https://a.s3.amazonaws.com/x", allow)
    with pytest.raises(UnsafeHrefError, match="not in the allowed hosts"):
        check_asset_href("https://evil.example/x", allow)
    assert check_asset_href("/data/x.tif", HrefPolicy(allow_local_files=True)) == "/data/x.tif"


def _answers(*addresses: str) -> Callable[[str, int], list[str]]:
    """A resolver that answers these addresses for any name (a local stand-in for DNS)."""
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (("127.0.0.1",), "resolves to 127.0.0.1: it is this machine"),
        (("10.0.0.5",), "resolves to 10.0.0.5: it is a private network"),
        (("169.254.169.254",), "metadata"),
        (("93.184.216.34", "192.168.0.9"), "resolves to 192.168.0.9"),  # one bad answer
    ],
)
def test_a_name_is_judged_by_every_address_it_resolves_to(
    answers: tuple[str, ...], reason: str
) -> None:
    href = "http://127.0.0.1.nip.io/x.tif"
    assert check_asset_href(href) == href  # as written, a name: planning stays offline
    with pytest.raises(UnsafeHrefError, match=reason) as refused:
        check_asset_href(href, resolver=_answers(*answers))
    assert href in str(refused.value) and "allowed_hosts" in str(refused.value)


def test_public_answers_pass_and_an_allowance_lifts_internal_ones() -> None:
    assert check_asset_href("https://a.example/x", resolver=_answers("93.184.216.34"))
    mine = HrefPolicy(internal_hosts=frozenset({"10.0.0.0/8", ".corp.example"}))
    assert check_asset_href("http://10.1.2.3/x", mine)
    assert check_asset_href("http://data.corp.example/x", mine, _answers("192.168.5.5"))
    with pytest.raises(UnsafeHrefError, match="private network"):
        check_asset_href("http://192.168.5.5/x", mine)
    with pytest.raises(UnsafeHrefError, match="metadata"):  # never lifted
        check_asset_href(
            "http://169.254.169.254/", HrefPolicy(internal_hosts=frozenset({"169.254.0.0/16"}))
        )
    with pytest.raises(ValueError, match="neither a host nor a CIDR"):
        HrefPolicy(internal_hosts=frozenset({"10.0.0.0/99"}))


def test_session_has_no_hidden_urllib3_retries() -> None:
    adapter = make_session().get_adapter("https://example.com")
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    assert adapter.max_retries.total == 0
