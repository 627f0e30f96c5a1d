"""HTTP safety for everything the catalog fetches: bounded retries and an asset-URL policy.

Two concerns live here because every remote read needs both:

- `send_with_retries` / `request_with_retries`: timeouts on every request and bounded
  exponential backoff with jitter on 5xx, 429 (honouring Retry-After), timeouts and
  connection errors, then one error naming the endpoint and the attempts made.
- `check_asset_href`: a catalog we do not control decides which URLs we open. Items from
  a remote catalog may only point at allowed schemes and hosts; local files, loopback,
  link-local and cloud metadata addresses are refused (an SSRF / local-file-read guard).

Why the retry loop is ours and not urllib3's `Retry` (checked against urllib3 2.8): its
first retry waits 0 s (backoff starts at the second), it does not retry POST (every
STAC item search) unless `allowed_methods=None`, a malformed Retry-After raises instead
of falling back to backoff, and it has no hook that sees each attempt, so the per-endpoint
request counts the tests and the dry-run rely on would need five overrides of its
internals (`new`, `increment`, `sleep`, `get_backoff_time`, `parse_retry_after`). The
35-line loop below is smaller than that and depends on nothing internal.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

# --------------------------------------------------------------------------- retries

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request; the defaults suit public STAC APIs."""

    attempts: int = 5
    """Total tries, the first included."""
    backoff_s: float = 0.5
    """Wait before the second try; doubles each try."""
    max_backoff_s: float = 30.0
    jitter: float = 0.5
    """Each wait is multiplied by a uniform factor in [1 - jitter, 1 + jitter]."""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    max_retry_after_s: float = 120.0
    """A server's Retry-After is honoured up to this many seconds."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryPolicy backoff times must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter}")

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry `retry_number` (1-based), jittered and capped."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (retry_number - 1))
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


DEFAULT_RETRY = RetryPolicy()


@dataclass
class RequestCounter:
    """Thread-safe accounting of requests sent, so plans can report what a search cost."""

    requests: int = 0
    retries: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, endpoint: str, retry: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retries += int(retry)
            self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1


class RemoteServiceError(RuntimeError):
    """A remote endpoint kept failing after every allowed attempt."""

    def __init__(self, endpoint: str, attempts: int, last_failure: str) -> None:
        self.endpoint = endpoint
        self.attempts = attempts
        self.last_failure = last_failure
        super().__init__(
            f"{endpoint} failed after {attempts} attempt(s); last failure: {last_failure}. "
            "Check that the service is up and reachable, or raise RetryPolicy.attempts."
        )


def endpoint_of(url: str) -> str:
    """scheme://host/path without the query string (which may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def send_with_retries(
    session: requests.Session,
    prepared: requests.PreparedRequest,
    policy: RetryPolicy = DEFAULT_RETRY,
    counter: RequestCounter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    **send_kwargs: Any,
) -> requests.Response:
    """Send `prepared`, retrying transient failures; non-retryable responses are returned.

    4xx other than 429 come back to the caller as they are (they will not get better).
    """
    rng = rng or random.Random()
    endpoint = endpoint_of(prepared.url or "")
    last_failure = "no attempt made"
    for attempt in range(1, policy.attempts + 1):
        if counter is not None:
            counter.record(endpoint, retry=attempt > 1)
        wait: float | None = None
        try:
            response = session.send(prepared, timeout=policy.timeout, **send_kwargs)
        except (requests.ConnectionError, requests.Timeout) as err:
            last_failure = f"{type(err).__name__}: {err}"
        else:
            if response.status_code not in policy.retry_statuses:
                return response
            last_failure = f"HTTP {response.status_code} {response.reason}"
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                wait = min(retry_after, policy.max_retry_after_s)
            response.close()
        if attempt < policy.attempts:
            sleep(wait if wait is not None else policy.backoff(attempt, rng))
    raise RemoteServiceError(endpoint, policy.attempts, last_failure)


def request_with_retries(
    session: requests.Session,
    method: str,
    url: str,
    policy: RetryPolicy = DEFAULT_RETRY,
    counter: RequestCounter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **request_kwargs: Any,
) -> requests.Response:
    """`session.request` with `send_with_retries` semantics."""
    prepared = session.prepare_request(requests.Request(method.upper(), url, **request_kwargs))
    assert prepared.url is not None  # prepare_url always sets a str
    settings = session.merge_environment_settings(prepared.url, {}, None, None, None)
    return send_with_retries(session, prepared, policy, counter, sleep, **settings)


def make_session(headers: dict[str, str] | None = None) -> requests.Session:
    """A plain session: retries are ours (above), never urllib3's, so they are counted once."""
    session = requests.Session()
    session.headers.update({"User-Agent": "terracube-catalog"})
    session.headers.update(headers or {})
    return session


# --------------------------------------------------------------------------- URL policy

DEFAULT_SCHEMES = frozenset({"https", "http", "s3", "gs", "az"})
METADATA_HOSTS = frozenset(
    {
        "169.254.169.254",
        "metadata.google.internal",
        "metadata",
        "fd00:ec2::254",
        "100.100.100.200",
    }
)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class HrefPolicy:
    """Which asset URLs may be opened.

    `hosts` None means any host that is not refused below; otherwise an allow-list of
    exact hosts or ".suffix" entries (".amazonaws.com"). Loopback hosts are refused unless
    listed in `loopback_hosts` (tests name "127.0.0.1"). Local files only with
    `allow_local_files` (the embedded static catalog).
    """

    schemes: frozenset[str] = DEFAULT_SCHEMES
    hosts: frozenset[str] | None = None
    loopback_hosts: frozenset[str] = frozenset()
    allow_local_files: bool = False


REMOTE_POLICY = HrefPolicy()
"""Default for items that came from a remote STAC API."""

LOCAL_CATALOG_POLICY = HrefPolicy(allow_local_files=True)
"""Default for our own static catalog on local disk."""


class UnsafeHrefError(ValueError):
    """An asset href that the active HrefPolicy refuses."""


def _refuse(href: str, reason: str, fix: str) -> UnsafeHrefError:
    return UnsafeHrefError(f"refusing asset href {href!r}: {reason}. {fix}")


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host.isdigit():  # "2852039166" is 169.254.169.254 to most resolvers
            return ipaddress.IPv4Address(int(host) % 2**32)
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    return any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowed)


def check_asset_href(href: str, policy: HrefPolicy = REMOTE_POLICY) -> str:
    """Return `href` when `policy` allows opening it; raise UnsafeHrefError otherwise.

    Host names are judged as written (no DNS lookup: planning must work offline).
    """
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    is_local = scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha())  # C:\...
    if is_local:
        if policy.allow_local_files:
            return href
        raise _refuse(
            href,
            "local files may not be read from a remote catalog",
            "Only a local static catalog may reference local paths "
            "(HrefPolicy(allow_local_files=True)).",
        )
    if scheme not in policy.schemes:
        raise _refuse(
            href,
            f"scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(policy.schemes))})",
            "Add the scheme to HrefPolicy.schemes if it is trusted.",
        )
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise _refuse(href, "the URL has no host", "Use an absolute URL.")
    ip = _as_ip(host)
    if host in METADATA_HOSTS or (ip is not None and str(ip) in METADATA_HOSTS):
        raise _refuse(href, "it targets a cloud metadata service", "Never allowed.")
    if ip is not None and ip.is_link_local:
        raise _refuse(href, "it targets a link-local address", "Never allowed.")
    loopback = host in LOOPBACK_NAMES or (ip is not None and (ip.is_loopback or ip.is_unspecified))
    if loopback:
        if host in policy.loopback_hosts:
            return href
        raise _refuse(
            href,
            "it targets this machine (loopback)",
            f"Name {host!r} in HrefPolicy.loopback_hosts to allow it explicitly.",
        )
    if policy.hosts is not None and not _host_allowed(host, policy.hosts):
        raise _refuse(
            href,
            f"host {host!r} is not in the allowed hosts ({', '.join(sorted(policy.hosts))})",
            "Add it to HrefPolicy.hosts if it is trusted.",
        )
    return href
