"""Batched search: one paged search per region x collection x time range, cached.

Searching per tile or per month multiplies requests by tiles x periods; a STAC API
answers a larger bbox in a few pages. Tiles are grouped into regions (square blocks of
at most `max_region_km` per side within one zone), each region is searched once per
collection over the whole time range, and each answer is kept as GeoParquet keyed by
the search parameters so that a re-plan does not query again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.grid import Tile
from terracube.catalog.plan import Plan, PlanParams, make_plan
from terracube.catalog.registry import modality
from terracube.catalog.stac.http import RequestCounter
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.catalog.stac.rejections import doubtful_offset_flags, metadata_fetcher, rejection
from terracube.catalog.stac.sources import Bbox, ItemSource, Query, SourceError, dedupe_items
from terracube.catalog.timescheme import TimeScheme


@dataclass(frozen=True)
class RegionParams:
    """How tiles are grouped into one search area."""

    max_region_km: float = 100.0

    def __post_init__(self) -> None:
        if self.max_region_km * 1000 < TILE_SIZE_M:
            raise ValueError(
                f"RegionParams.max_region_km={self.max_region_km} is smaller than one tile "
                f"({TILE_SIZE_M / 1000} km)"
            )

    @property
    def tiles_per_side(self) -> int:
        return int(self.max_region_km * 1000 // TILE_SIZE_M)


@dataclass(frozen=True)
class Region:
    id: str
    epsg: int
    tiles: tuple[Tile, ...]
    bbox: Bbox
    """Lon/lat union of the tiles' footprints."""


def group_regions(tiles: Iterable[Tile], params: RegionParams = RegionParams()) -> list[Region]:
    """Tiles -> regions: blocks of tiles_per_side x tiles_per_side tiles in one zone."""
    side = params.tiles_per_side
    blocks: dict[tuple[int, int, int], list[Tile]] = defaultdict(list)
    for tile in sorted(set(tiles)):
        blocks[(tile.epsg, tile.col // side, tile.row // side)].append(tile)
    regions = []
    for (epsg, bcol, brow), members in sorted(blocks.items()):
        footprint = shapely.union_all([t.footprint_lonlat() for t in members])
        regions.append(
            Region(f"{epsg}_{bcol}_{brow}_{side}", epsg, tuple(members), tuple(footprint.bounds))
        )
    return regions


@dataclass(frozen=True)
class SearchRequest:
    """One paged search; its key identifies the answer in the cache."""

    source: str
    bbox: Bbox
    start: datetime
    end: datetime
    collection: str
    query: str = ""
    """Canonical JSON of the query, '' when none."""

    @property
    def key(self) -> str:
        text = json.dumps(
            [
                self.source,
                [round(v, 9) for v in self.bbox],
                self.start.isoformat(),
                self.end.isoformat(),
                self.collection,
                self.query,
            ],
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class SearchCache:
    """Search answers as GeoParquet files under `root`, one per SearchRequest.key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, request: SearchRequest) -> Path:
        return self.root / f"search-{request.key}.parquet"

    def get(self, request: SearchRequest) -> list[dict[str, Any]] | None:
        path = self.path(request)
        if not path.exists():
            return None
        table = gpd.read_parquet(path)
        return [json.loads(text) for text in table["item"]]

    def put(self, request: SearchRequest, items: Sequence[Mapping[str, Any]]) -> Path:
        geometries = [
            shapely.geometry.shape(i["geometry"]) if i.get("geometry") else None for i in items
        ]
        table = gpd.GeoDataFrame(
            {
                "id": [str(i["id"]) for i in items],
                "collection": [str(i.get("collection") or "") for i in items],
                "datetime": [str((i.get("properties") or {}).get("datetime")) for i in items],
                "item": [json.dumps(i) for i in items],
            },
            geometry=gpd.GeoSeries(geometries, crs="EPSG:4326"),
        )
        path = self.path(request)
        tmp = path.with_suffix(".parquet.tmp")
        table.to_parquet(tmp)
        os.replace(tmp, path)  # a crash never leaves a half-written answer behind
        return path


STATIC_SEARCH_START = datetime(1970, 1, 1, tzinfo=UTC)
"""Static maps (WorldCover 2021) are dated before the periods they describe: they are
searched from here to the end of the span, not over the span only."""


@dataclass
class SearchResult:
    """What the searches found, normalized, plus what they cost."""

    items: dict[str, list[NormalizedItem]]
    requests: list[SearchRequest]
    http_requests: int
    """Every request the source sent (landing page and retries included)."""
    cache_hits: int
    rejected: list[dict[str, str]] = field(default_factory=list)
    """{item_id, reason, message} per item set aside (catalog/stac/rejections.py)."""
    warnings: list[str] = field(default_factory=list)
    """What was kept but may be wrong, said once per search (e.g. doubtful offset flags)."""
    pages: list[int] = field(default_factory=list)
    """Requests to a /search endpoint per entry of `requests` (0: cache hit or no HTTP);
    without faults that is the number of result pages."""

    @property
    def search_pages(self) -> int:
        return sum(self.pages)


def search_endpoint_requests(counter: RequestCounter) -> int:
    """Requests the counter saw to STAC item-search endpoints (paths ending in /search)."""
    return sum(n for endpoint, n in counter.by_endpoint.items() if endpoint.endswith("/search"))


class SearchError(SourceError):
    """A source failed while searching `modality` (the caller names the config key)."""

    def __init__(self, modality: str, error: SourceError) -> None:
        super().__init__(str(error))
        self.modality = modality


def search_tiles(
    source: ItemSource,
    tiles: Iterable[Tile],
    start: datetime,
    end: datetime,
    modalities: Sequence[str],
    *,
    params: RegionParams = RegionParams(),
    query: Mapping[str, Query] | None = None,
    cache: SearchCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Search every region once per modality's collection over [start, end];
    `progress(done, total)` after each region's answer.

    `query` maps modality -> STAC query (e.g. {"sentinel2_l2a": {"eo:cloud_cover": {"lt": 60}}}).
    """
    regions = group_regions(tiles, params)
    before = source.counter.requests
    found: dict[str, list[dict[str, Any]]] = {m: [] for m in modalities}
    requests: list[SearchRequest] = []
    pages: list[int] = []
    hits = 0
    collections: dict[str, str] = {}
    for name in modalities:
        try:
            collections[name] = collection = source.collection_for(name)
        except SourceError as err:
            raise SearchError(name, err) from None
        modality_query = (query or {}).get(name)
        for region in regions:
            request = SearchRequest(
                source.name,
                region.bbox,
                start,
                end,
                collection,
                json.dumps(modality_query, sort_keys=True) if modality_query else "",
            )
            requests.append(request)
            if progress is not None:
                progress(len(requests) - 1, len(regions) * len(modalities))
            cached = cache.get(request) if cache is not None else None
            if cached is not None:
                hits += 1
                pages.append(0)
                found[name].extend(cached)
                continue
            searched_before = search_endpoint_requests(source.counter)
            try:
                answer = source.search(region.bbox, start, end, [collection], modality_query)
            except SourceError as err:
                raise SearchError(name, err) from None
            pages.append(search_endpoint_requests(source.counter) - searched_before)
            if cache is not None:
                cache.put(request, answer)
            found[name].extend(answer)
    if progress is not None:
        progress(len(requests), len(regions) * len(modalities))
    items, rejected = _normalize_all(found, collections, source)
    doubtful = doubtful_offset_flags(found, items)
    return SearchResult(
        items,
        requests,
        source.counter.requests - before,
        hits,
        rejected=rejected,
        pages=pages,
        warnings=[doubtful] if doubtful else [],
    )


def _normalize_all(
    found: Mapping[str, list[dict[str, Any]]], collections: Mapping[str, str], source: ItemSource
) -> tuple[dict[str, list[NormalizedItem]], list[dict[str, str]]]:
    """Normalize every item found; anything an item holds that cannot be used (a bad
    field, an unsafe href, a reader error on its content) sets that item aside with its
    reason, never stops the plan."""
    items: dict[str, list[NormalizedItem]] = {}
    rejected: list[dict[str, str]] = []
    fetch = metadata_fetcher(source)
    for name, raw in found.items():
        items[name] = []
        # the collection searched for `name` holds `name`, whatever the provider called it
        searched = {collections[name]: name}
        for item in dedupe_items(raw):
            try:
                normalized = normalize_item(
                    item, policy=source.href_policy, collection_modalities=searched, fetch=fetch
                )
            except Exception as err:  # item content must not crash a plan
                rejected.append(rejection(item, err))
                continue
            if normalized.modality == name:
                items[name].append(normalized)
            else:
                message = f"item {normalized.id}: is {normalized.modality}, searched {name}"
                rejected.append(
                    {"item_id": normalized.id, "reason": "other modality", "message": message}
                )
    return items, rejected


def search_and_plan(
    sources: Mapping[str, ItemSource],
    tiles: Sequence[Tile],
    scheme: TimeScheme,
    *,
    region_params: RegionParams = RegionParams(),
    plan_params: PlanParams | None = None,
    query: Mapping[str, Query] | None = None,
    cache: SearchCache | None = None,
    anchors: Sequence[date] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Plan:
    """Search once per region x collection, then plan (pure): the one orchestration of
    the plan stage (`terracube plan` and `build` call it through workflows.planning).

    `sources` maps each modality to its catalog, in plan order; modalities sharing one
    source object are searched in one pass. Temporal modalities are searched over the
    whole span of all anchors; static maps from STATIC_SEARCH_START to the span's end
    (they predate the periods they describe). A failing source raises `SearchError`
    naming the modality it was searching (from `search_tiles`).
    """
    spans = [scheme.span(a) for a in (anchors or [scheme.start])]
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    groups: dict[int, list[str]] = {}
    for name in sources:
        groups.setdefault(id(sources[name]), []).append(name)
    items: dict[str, list[NormalizedItem]] = {}
    search: dict[str, Any] = {
        "source": [],
        "search_calls": 0,
        "http_requests": 0,
        "search_pages": 0,
        "cache_hits": 0,
        "rejected": [],
        "warnings": [],
    }
    for names in groups.values():
        source = sources[names[0]]
        search["source"].append(source.name)
        temporal = [m for m in names if modality(m).temporal]
        static = [m for m in names if not modality(m).temporal]
        for group, group_start in ((temporal, start), (static, min(STATIC_SEARCH_START, start))):
            if not group:
                continue
            result = search_tiles(
                source,
                tiles,
                group_start,
                end,
                group,
                params=region_params,
                query=query,
                cache=cache,
                progress=None if progress is None else _stage(progress, f"search {source.name}"),
            )
            items.update(result.items)
            search["search_calls"] += len(result.requests)
            search["http_requests"] += result.http_requests
            search["search_pages"] += result.search_pages
            search["cache_hits"] += result.cache_hits
            search["rejected"] += result.rejected
            search["warnings"] += result.warnings
    plan = make_plan(
        tiles,
        scheme,
        {m: items[m] for m in sources},
        params=plan_params or PlanParams(),
        anchors=anchors,
        progress=None if progress is None else _stage(progress, "plan"),
    )
    plan.search = search
    return plan


def _stage(progress: Callable[[str, int, int], None], stage: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(stage, done, total)
