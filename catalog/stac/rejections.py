"""Items the plan set aside, with their reason, and how the plan says so.

A provider's catalog holds items terracube cannot use (another platform, a band the
product lacks, an unknown baseline, a field of the wrong type). None of them may stop
a plan, and none may vanish: each becomes a `Rejection` (item id, a fixed reason from
items.REASONS, the full message), `plan --dry-run` prints them counted by reason with
example ids, and `plan.json` keeps every one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from terracube.catalog.stac.conversion import offset_already_applied
from terracube.catalog.stac.egress import egress_proxy
from terracube.catalog.stac.http import (
    RemoteServiceError,
    UnsafeHrefError,
    make_session,
    request_with_retries,
)
from terracube.catalog.stac.item_errors import ItemNormalizationError
from terracube.catalog.stac.items import NormalizedItem
from terracube.catalog.stac.sources import ItemSource, href_signer

EXAMPLES_PER_REASON = 3


def rejection(item: Mapping[str, Any] | Any, err: Exception) -> dict[str, str]:
    """The record of one refused item: id, reason (items.REASONS), message."""
    item_id = str(item.get("id")) if isinstance(item, Mapping) else "<not an item>"
    if isinstance(err, ItemNormalizationError):
        reason = err.reason
    elif isinstance(err, UnsafeHrefError):
        reason = "unsafe href"
    else:
        reason = "malformed item"
    message = str(err) if reason != "malformed item" else f"{type(err).__name__}: {err}"
    if item_id not in message:
        message = f"item {item_id}: {message}"
    return {"item_id": item_id, "reason": reason, "message": message}


def reason_table(rejected: Iterable[Mapping[str, str] | Sequence[str]]) -> dict[str, Any]:
    """{reason: {"count", "examples" (item ids), "message" (the first one)}}, most first.

    Also reads the (item id, message) pairs of plans written before reasons existed.
    """
    table: dict[str, dict[str, Any]] = {}
    for entry in rejected:
        if isinstance(entry, Mapping):
            item_id, reason, message = entry["item_id"], entry["reason"], entry["message"]
        else:
            item_id, message = entry[0], entry[1]
            reason = "unrecorded reason"
        row = table.setdefault(reason, {"count": 0, "examples": [], "message": message})
        row["count"] += 1
        if len(row["examples"]) < EXAMPLES_PER_REASON:
            row["examples"].append(item_id)
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["count"]))


def metadata_fetcher(source: ItemSource) -> Callable[[str], bytes] | None:
    """Reads a metadata asset of `source`'s items (local path or http(s)), retried and
    counted on the source's counter; signed where the source's profile signs assets.

    Object-store hrefs (s3://, gs://) are not read at plan time: such an item with no
    baseline in its properties is refused, not guessed.
    """
    profile = getattr(source, "profile", None)
    sign = href_signer(profile) if profile is not None else None
    session = None

    def fetch(href: str) -> bytes:
        nonlocal session
        scheme = urlsplit(href).scheme
        if scheme in ("", "file"):
            return Path(urlsplit(href).path if scheme else href).read_bytes()
        if scheme not in ("http", "https"):
            raise ItemNormalizationError(
                f"metadata asset {href} is on an object store, not read at plan time",
                "unknown S2 baseline",
            )
        proxy = egress_proxy(source.href_policy.internal_hosts)
        if session is None:  # every hop, redirects included, through the egress check
            session = make_session()
            session.proxies = {
                "http": f"http://{proxy.address}",
                "https": f"http://{proxy.address}",
            }
        before = len(proxy.refusals)
        try:
            response = request_with_retries(
                session, "GET", sign(href) if sign else href, counter=source.counter
            )
        except RemoteServiceError as err:
            raise ItemNormalizationError(
                f"metadata asset {href} could not be read: {err}", "unknown S2 baseline"
            ) from None
        refused = proxy.refusals[before:]
        if refused:
            raise ItemNormalizationError(
                f"metadata asset {href} refused at connection time: {refused[0]}",
                "unsafe href",
            )
        if response.status_code >= 400:
            raise ItemNormalizationError(
                f"metadata asset {href} answered HTTP {response.status_code}",
                "unknown S2 baseline",
            )
        return response.content

    return fetch


def doubtful_offset_flags(
    found: Mapping[str, Sequence[Mapping[str, Any]]], items: Mapping[str, Sequence[NormalizedItem]]
) -> str | None:
    """A warning when kept Earth Search items say `boa_offset_applied: false` and so get
    -1000 DN: Element84 reports that flag wrong for some scenes whose COGs had already
    lost the offset (Element84/earth-search#66, #71; cirrus-geo/cirrus-earth-search#33),
    which would then be stored 1000 DN low. Nothing in the item tells which."""
    kept = {i.id: i for group in items.values() for i in group}
    doubtful = []
    for raw in (r for group in found.values() for r in group):
        item = kept.get(str(raw.get("id")))
        props = raw.get("properties") or {}
        if item is None or offset_already_applied(props) is not False:
            continue
        if any(a.conversion.dn_offset != 0 for a in item.assets):
            doubtful.append(item.id)
    if not doubtful:
        return None
    ids = sorted(set(doubtful))
    return (
        f"{len(ids)} Earth Search item(s) say boa_offset_applied: false at baseline >= 04.00 "
        f"(e.g. {', '.join(ids[:3])}) and get -1000 DN; Element84 reports that flag wrong for "
        "some scenes whose COGs already lost the offset (Element84/earth-search#66, #71). "
        "Check a few against ESA's JP2 or search sentinel-2-c1-l2a, which has no such flag"
    )
