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
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from terracube.catalog.stac.href_hosts import (
    InternalAllowance,
    Resolver,
    UnsafeHostError,
    allowance_of,
    judge,
    resolve_checked,
)

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


@dataclass(frozen=True)
class HrefPolicy:
    """Which asset URLs may be opened.

    `hosts` None means any host that is not refused below; otherwise an allow-list of
    exact hosts or ".suffix" entries (".amazonaws.com"). Hosts that are not public
    addresses (`href_hosts.refusal`: loopback, private, link-local, CGNAT, multicast,
    metadata services, in any spelling a reader accepts) are refused unless
    `internal_hosts` names them (hosts, ".suffix" names, addresses or CIDR networks;
    the tests name "127.0.0.1"). Local files only with `allow_local_files` (the
    embedded static catalog).
    """

    schemes: frozenset[str] = DEFAULT_SCHEMES
    hosts: frozenset[str] | None = None
    internal_hosts: frozenset[str] = frozenset()
    allow_local_files: bool = False

    def __post_init__(self) -> None:
        allowance_of(self.internal_hosts)  # a malformed entry fails here, not at read time

    @property
    def allowance(self) -> InternalAllowance:
        return allowance_of(self.internal_hosts)


REMOTE_POLICY = HrefPolicy()
"""Default for items that came from a remote STAC API."""

LOCAL_CATALOG_POLICY = HrefPolicy(allow_local_files=True)
"""Default for our own static catalog on local disk."""


class UnsafeHrefError(ValueError):
    """An asset href that the active HrefPolicy refuses."""


def _refuse(href: str, reason: str, fix: str) -> UnsafeHrefError:
    return UnsafeHrefError(f"refusing asset href {href!r}: {reason}. {fix}")


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    return any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowed)


def url_host(href: str) -> tuple[str, int]:
    """(host, port) a reader of `href` connects to."""
    parts = urlsplit(href)
    default = 443 if parts.scheme.lower() == "https" else 80
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return (parts.hostname or "").lower(), port


def check_asset_href(
    href: str, policy: HrefPolicy = REMOTE_POLICY, resolver: Resolver | None = None
) -> str:
    """Return `href` when `policy` allows opening it; raise UnsafeHrefError otherwise.

    Without `resolver` a host is judged as written (planning works offline); with one,
    a name is resolved and every address it answers is judged too (the read-time check).
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
    if parts.username is not None or parts.password is not None:
        raise _refuse(href, "it carries credentials (user:password@)", "Never allowed.")
    host, port = url_host(href)
    host = host.rstrip(".")
    if not host:
        raise _refuse(href, "the URL has no host", "Use an absolute URL.")
    fix = (
        f"If {host!r} is yours, allow it: `allowed_hosts: [{host}]` in the modality's "
        "source (or HrefPolicy.internal_hosts); docs/security.md."
    )
    reason = judge(host, policy.allowance)
    if reason is not None:
        raise _refuse(href, reason, fix)
    if policy.hosts is not None and not _host_allowed(host, policy.hosts):
        raise _refuse(
            href,
            f"host {host!r} is not in the allowed hosts ({', '.join(sorted(policy.hosts))})",
            "Add it to HrefPolicy.hosts if it is trusted.",
        )
    if resolver is not None and scheme in ("http", "https"):
        try:
            resolve_checked(host, port, policy.allowance, resolver)
        except UnsafeHostError as exc:
            raise _refuse(href, str(exc), fix) from None
    return href
