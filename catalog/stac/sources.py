"""Where items come from: a STAC API (pystac-client) or our static catalog, one contract.

Every source answers `search(bbox, start, end, collections, query)` with plain item
dicts (asset hrefs absolute) and counts the requests it made, so a plan can report
what its searches cost. Normalization happens later (`catalog.stac.items`), with the
source's `href_policy`: remote catalogs may not point at local files or internal hosts.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import pystac
import requests
import shapely
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from terracube.catalog.stac.egress import egress_proxy
from terracube.catalog.stac.http import (
    DEFAULT_RETRY,
    LOCAL_CATALOG_POLICY,
    REMOTE_POLICY,
    HrefPolicy,
    RequestCounter,
    RetryPolicy,
    UnsafeHrefError,
    check_asset_href,
    send_with_retries,
)
from terracube.catalog.stac.items import ItemNormalizationError, modality_of

Bbox = tuple[float, float, float, float]
Query = Mapping[str, Mapping[str, Any]]
"""STAC API query extension: {"eo:cloud_cover": {"lt": 30}, "platform": {"in": [...]}}."""


@runtime_checkable
class ItemSource(Protocol):
    """The one contract planning needs from a catalog."""

    name: str
    counter: RequestCounter
    href_policy: HrefPolicy

    def search(
        self,
        bbox: Bbox,
        start: datetime,
        end: datetime,
        collections: Sequence[str],
        query: Query | None = None,
    ) -> list[dict[str, Any]]: ...

    def collection_for(self, modality: str) -> str: ...


class SourceError(ValueError):
    """A source asked for something it cannot serve; the message says what instead."""


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _interval(when: datetime | str) -> str:
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(when, datetime) else when


# --------------------------------------------------------------------------- STAC API


class RetryingStacApiIO(StacApiIO):
    """pystac-client IO whose every request goes through our timeouts, retries and counter.

    Only public pystac-client API: `request` is StacApiIO's documented override point.
    (`Client.open(stac_io=...)` resets a request modifier and the timeout through
    `update()`; we use neither, `send_with_retries` applies `retry`'s timeouts.)
    """

    def __init__(
        self,
        retry: RetryPolicy,
        counter: RequestCounter,
        headers: dict[str, str] | None = None,
        link_policy: HrefPolicy | None = None,
    ) -> None:
        super().__init__(headers=headers, timeout=retry.timeout, max_retries=None)
        self.retry = retry
        self.counter = counter
        self.link_policy = link_policy
        """Judges every URL the API's answers lead to (paging `next` links, redirects):
        the API's own host is allowed, any other host must be public (or allowed). Set,
        the session goes through the egress check (`egress.py`), so redirects and DNS
        answers are judged at connection time too."""
        if link_policy is not None:
            proxy = egress_proxy(link_policy.internal_hosts)
            self.session.proxies = {
                "http": f"http://{proxy.address}",
                "https": f"http://{proxy.address}",
            }

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        method = (method or "GET").upper()
        if self.link_policy is not None:
            try:
                check_asset_href(href, self.link_policy)
            except UnsafeHrefError as exc:
                raise SourceError(f"the STAC API led to a refused URL: {exc}") from None
        if method in ("POST", "PUT", "PATCH"):
            req = requests.Request(method, href, headers=headers, json=parameters)
        else:
            req = requests.Request(
                method, href, headers=headers, params=copy.deepcopy(parameters or {})
            )
        prepared = self.session.prepare_request(req)
        assert prepared.url is not None  # prepare_url always sets a str
        settings = self.session.merge_environment_settings(prepared.url, {}, None, True, None)
        response = send_with_retries(self.session, prepared, self.retry, self.counter, **settings)
        if not 200 <= response.status_code < 300:
            raise APIError.from_response(response)
        return response.content.decode("utf-8")


@dataclass(frozen=True)
class StacProfile:
    """A known STAC API: its URL, which collection holds each modality, what it lacks."""

    name: str
    url: str
    collections: Mapping[str, str]
    unavailable: Mapping[str, str] = field(default_factory=dict)
    queries: Mapping[str, Query] = field(default_factory=dict)
    """Per-collection query always added (e.g. Landsat 8/9 only)."""
    signs_assets: bool = False
    """Assets need a short-lived token at read time (see `href_signer`)."""


_LANDSAT_OLI = {"platform": {"in": ["landsat-8", "landsat-9"]}}

PROFILES: dict[str, StacProfile] = {
    "earth-search": StacProfile(
        name="earth-search",
        url="https://earth-search.aws.element84.com/v1",
        collections={"sentinel2_l2a": "sentinel-2-l2a", "landsat_c2l2": "landsat-c2-l2"},
        unavailable={
            "sentinel1": "Earth Search v1 has only sentinel-1-grd (radar geometry, "
            "requester-pays); use the planetary-computer profile for sentinel-1-rtc",
            "worldcover": "Earth Search v1 has no ESA WorldCover collection; use "
            "planetary-computer (esa-worldcover)",
        },
        queries={"landsat-c2-l2": _LANDSAT_OLI},
    ),
    "planetary-computer": StacProfile(
        name="planetary-computer",
        url="https://planetarycomputer.microsoft.com/api/stac/v1",
        collections={
            "sentinel2_l2a": "sentinel-2-l2a",
            "sentinel1": "sentinel-1-rtc",
            "landsat_c2l2": "landsat-c2-l2",
            "worldcover": "esa-worldcover",
        },
        queries={"landsat-c2-l2": _LANDSAT_OLI},
        signs_assets=True,
    ),
}


def generic_profile(url: str, collections: Mapping[str, str]) -> StacProfile:
    """Any STAC API: the caller says which collection holds which modality."""
    return StacProfile(name="generic", url=url, collections=dict(collections))


def _profile_collection(profile: StacProfile, modality: str) -> str:
    if modality in profile.collections:
        return profile.collections[modality]
    if modality in profile.unavailable:
        raise SourceError(f"{profile.name}: no {modality}: {profile.unavailable[modality]}")
    raise SourceError(
        f"{profile.name}: no collection configured for modality {modality!r} "
        f"(configured: {', '.join(profile.collections) or 'none'})"
    )


class StacApiSource:
    """A STAC API searched through pystac-client, one paged search per call."""

    def __init__(
        self,
        profile: StacProfile | str,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        page_size: int = 100,
        href_policy: HrefPolicy = REMOTE_POLICY,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.name = f"stac-api:{self.profile.url}"
        self.counter = RequestCounter()
        self.href_policy = href_policy
        self.page_size = page_size
        api_host = urlsplit(self.profile.url).hostname or ""
        links = replace(
            href_policy,
            allow_local_files=False,
            hosts=None,
            internal_hosts=href_policy.internal_hosts | {api_host.lower()},
        )
        self._io = RetryingStacApiIO(retry, self.counter, headers, link_policy=links)
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """Opened on first use, so building a source never touches the network."""
        if self._client is None:
            self._client = Client.open(self.profile.url, stac_io=self._io)
        return self._client

    def collection_for(self, modality: str) -> str:
        return _profile_collection(self.profile, modality)

    def search(
        self,
        bbox: Bbox,
        start: datetime,
        end: datetime,
        collections: Sequence[str],
        query: Query | None = None,
    ) -> list[dict[str, Any]]:
        merged: dict[str, Any] = {}
        for collection in collections:
            merged.update(self.profile.queries.get(collection, {}))
        merged.update(query or {})
        search = self.client.search(
            collections=list(collections),
            bbox=list(bbox),
            datetime=f"{_interval(start)}/{_interval(end)}",
            query=merged or None,
            limit=self.page_size,
        )
        return [feature for page in search.pages_as_dicts() for feature in page["features"]]


def href_signer(profile: StacProfile) -> Callable[[str], str] | None:
    """A read-time href signer for profiles that need one (Planetary Computer), else None.

    Imported lazily: the planetary-computer package is only needed by those who read there.
    """
    if not profile.signs_assets:
        return None
    import planetary_computer

    return planetary_computer.sign_url


# --------------------------------------------------------------------------- static catalog

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "in": lambda value, options: value in options,
}


def matches_query(properties: Mapping[str, Any], query: Query | None) -> bool:
    """The STAC API query extension's simple comparisons, evaluated in-process."""
    for prop, conditions in (query or {}).items():
        value = properties.get(prop)
        for op, expected in conditions.items():
            if op not in _OPS:
                raise SourceError(
                    f"query operator {op!r} on {prop!r} unsupported; use {', '.join(_OPS)}"
                )
            if value is None or not _OPS[op](value, expected):
                return False
    return True


@dataclass(frozen=True)
class _Indexed:
    geometry: shapely.Geometry
    start: datetime
    end: datetime
    collection: str
    item: dict[str, Any]


def _item_interval(item: pystac.Item) -> tuple[datetime, datetime]:
    props = item.properties
    if props.get("start_datetime") and props.get("end_datetime"):
        start = datetime.fromisoformat(props["start_datetime"])
        end = datetime.fromisoformat(props["end_datetime"])
        return _utc(start), _utc(end)
    if item.datetime is None:
        raise SourceError(f"item {item.id} has neither datetime nor start/end_datetime")
    return _utc(item.datetime), _utc(item.datetime)


def _bbox_geometry(bbox: Bbox) -> shapely.Geometry:
    minx, miny, maxx, maxy = bbox
    if minx > maxx:  # crosses the antimeridian
        return shapely.union(
            shapely.box(minx, miny, 180, maxy), shapely.box(-180, miny, maxx, maxy)
        )
    return shapely.box(minx, miny, maxx, maxy)


class StaticCatalogSource:
    """A local static STAC catalog, walked once with pystac and searched in memory.

    pystac-client cannot search a static catalog; this indexes footprint, time span and
    collection of every item and filters like a STAC API would (geometry intersects,
    closed datetime interval, query extension comparisons). No requests are made.
    """

    def __init__(
        self,
        catalog: str | Path | pystac.Catalog,
        *,
        href_policy: HrefPolicy = LOCAL_CATALOG_POLICY,
        collection_modalities: Mapping[str, str] | None = None,
    ) -> None:
        root = (
            catalog
            if isinstance(catalog, pystac.Catalog)
            else pystac.Catalog.from_file(str(catalog))
        )
        self.name = f"static:{root.get_self_href()}"
        self.counter = RequestCounter()
        self.href_policy = href_policy
        self._modalities = dict(collection_modalities or {})
        self._index = [self._entry(item) for item in root.get_items(recursive=True)]
        if not self._index:
            raise SourceError(f"static catalog {root.get_self_href()} holds no items")

    @staticmethod
    def _entry(item: pystac.Item) -> _Indexed:
        item = item.clone()
        item.make_asset_hrefs_absolute()
        start, end = _item_interval(item)
        data = item.to_dict(include_self_link=True, transform_hrefs=False)
        if item.geometry:
            geometry = shapely.geometry.shape(item.geometry)
        elif item.bbox is not None:
            geometry = shapely.box(*item.bbox)
        else:
            raise SourceError(f"static catalog item {item.id} has neither a geometry nor a bbox")
        return _Indexed(geometry, start, end, item.collection_id or "", data)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def collections(self) -> dict[str, str]:
        """collection id -> modality for every collection the catalog holds."""
        found: dict[str, str] = {}
        for entry in self._index:
            if entry.collection not in found:
                try:
                    found[entry.collection] = modality_of(entry.item, self._modalities)
                except ItemNormalizationError:
                    continue
        return found

    def collection_for(self, modality: str) -> str:
        """The collection configured for `modality`, else the first (by id) that holds it."""
        configured = [c for c, m in self._modalities.items() if m == modality]
        if configured:
            if configured[0] not in self.collections:
                raise SourceError(
                    f"{self.name}: the configured collection {configured[0]!r} for {modality!r} "
                    f"is not in the catalog (collections: {', '.join(sorted(self.collections))})"
                )
            return configured[0]
        matching = sorted(c for c, m in self.collections.items() if m == modality)
        if not matching:
            raise SourceError(
                f"{self.name}: no collection holds {modality!r} "
                f"(collections: {', '.join(sorted(self.collections)) or 'none'})"
            )
        return matching[0]

    def search(
        self,
        bbox: Bbox,
        start: datetime,
        end: datetime,
        collections: Sequence[str],
        query: Query | None = None,
    ) -> list[dict[str, Any]]:
        area = _bbox_geometry(bbox)
        start, end = _utc(start), _utc(end)
        wanted = set(collections)
        return [
            copy.deepcopy(e.item)
            for e in self._index
            if e.collection in wanted
            and e.start <= end
            and e.end >= start
            and e.geometry.intersects(area)
            and matches_query(e.item.get("properties", {}), query)
        ]


def dedupe_items(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Items found by overlapping region searches, each once (first seen wins)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):  # kept, so that normalizing refuses it out loud
            seen[("", f"<entry {n}>")] = item
            continue
        item_id = item.get("id")
        key = str(item_id) if item_id is not None else f"<entry {n} without id>"
        seen.setdefault((str(item.get("collection")), key), dict(item))
    return list(seen.values())
