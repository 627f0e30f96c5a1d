"""The plan: which items feed which (sample, modality, period), ranked, as tables.

Pure: items come in already searched and normalized (`catalog.stac.search`), so the whole
assignment is testable without a server. Tables:

- samples: one row per sample (tile id, CRS, bounds, centre, period starts, footprint);
- assignments: one row per candidate (sample, modality, period, rank, item, cloud, coverage);
- availability: one row per (sample, modality, period) with the candidate count (and
  how many other-CRS candidates the same-CRS preference dropped), so "no data" is
  recorded, not inferred from a missing row;
- items: every assigned NormalizedItem (hrefs, conversions) for the build stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from terracube.catalog.coverage import coverage_in_tile as _coverage
from terracube.catalog.coverage import tile_coverage
from terracube.catalog.grid import Tile
from terracube.catalog.plan_engine import (
    STATIC_PERIOD,
    EngineParams,
    chunk_columns,
    chunks,
    footprint_indexes,
)
from terracube.catalog.plan_items import ItemTable
from terracube.catalog.plan_store import PlanFiles, PlanWriter
from terracube.catalog.registry import modality
from terracube.catalog.stac.items import NormalizedItem
from terracube.catalog.tile_arrays import centers_lonlat, footprints_lonlat, tile_bounds
from terracube.catalog.timescheme import TimeScheme


@dataclass(frozen=True)
class PlanParams:
    max_candidates: int = 8
    """Candidates kept per (sample, modality, period), best first."""
    min_coverage: float = 1e-6
    """Items covering less of the tile footprint than this are not candidates."""
    prefer_same_crs: bool = True
    """Near a UTM zone boundary a tile is covered by scenes of both zones. Reading the
    other zone's scene means resampling across CRSs (inexact and slower), so when items
    in the tile's own CRS cover it (see `full_coverage`), other-CRS items are dropped;
    otherwise they stay, ranked after same-CRS items at equal cloud cover."""
    full_coverage: float = 0.999
    """Union coverage of the same-CRS items at which the tile counts as fully covered."""

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise ValueError(f"PlanParams.max_candidates must be >= 1, got {self.max_candidates}")
        if not 0 < self.full_coverage <= 1:
            raise ValueError(
                f"PlanParams.full_coverage must be in (0, 1], got {self.full_coverage}"
            )


Candidate = tuple[NormalizedItem, float]
"""An item and the fraction of the tile it covers."""


def covering_items(
    items: Sequence[NormalizedItem], tile: Tile, min_coverage: float
) -> list[Candidate]:
    """(item, coverage) of the items covering at least `min_coverage` of the tile.

    A vectorised intersects test first, so items far from the tile cost nothing more.
    """
    footprint = tile.footprint_lonlat()
    geometries = np.array([i.geometry for i in items], dtype=object)
    meeting = shapely.intersects(geometries, footprint) if len(items) else []
    return [
        (item, c)
        for item, meets in zip(items, meeting, strict=True)
        if meets and (c := _coverage(item.geometry, tile, footprint)) >= min_coverage
    ]


def _cloud_key(item: NormalizedItem) -> float:
    """Sensors without a cloud cover (S1, WorldCover) rank as clear."""
    return item.cloud_cover if item.cloud_cover is not None else 0.0


def rank_candidates(
    candidates: Iterable[Candidate], tile_epsg: int | None = None
) -> list[Candidate]:
    """Lower cloud cover first, then (with `tile_epsg`) the tile's own CRS, then higher
    coverage, then earlier, then id (deterministic)."""
    return sorted(
        candidates,
        key=lambda c: (
            _cloud_key(c[0]),
            _other_crs(c[0], tile_epsg),
            -c[1],
            c[0].datetime,
            c[0].id,
        ),
    )


def _other_crs(item: NormalizedItem, tile_epsg: int | None) -> bool:
    """True when reading the item onto the tile means a reprojection (unknown CRS included)."""
    return tile_epsg is not None and item.epsg != tile_epsg


def prefer_same_crs(
    candidates: Sequence[Candidate], tile: Tile, full_coverage: float
) -> list[Candidate]:
    """Drop other-CRS candidates when the same-CRS ones together cover the tile.

    The union of the same-CRS footprints is measured, so two half-scenes of the tile's
    own zone are enough; a same-CRS scene with a gap keeps the neighbours as fallback.
    """
    own = [c for c in candidates if not _other_crs(c[0], tile.epsg)]
    if not own or len(own) == len(candidates):
        return list(candidates)
    if max(c for _, c in own) < full_coverage:
        union = shapely.union_all([i.geometry for i, _ in own])
        if tile_coverage(union, tile) < full_coverage:
            return list(candidates)
    return own


@dataclass
class Plan:
    scheme: TimeScheme
    samples: gpd.GeoDataFrame
    assignments: pd.DataFrame
    availability: pd.DataFrame
    items: dict[str, NormalizedItem]
    """Keyed by item id."""
    search: dict[str, Any] = field(default_factory=dict)
    """What the searches cost (requests, cache hits, rejected items), for the summary."""

    def candidates(self, tile_id: str, modality_name: str, period: int) -> list[NormalizedItem]:
        rows = self.assignments[
            (self.assignments.tile_id == tile_id)
            & (self.assignments.modality == modality_name)
            & (self.assignments.period == period)
        ].sort_values("rank")
        return [self.items[i] for i in rows.item_id]

    # ------------------------------------------------------------------ persistence

    def to_parquet(self, directory: str | Path) -> Path:
        """Write the plan in format 2 (`plan_store`)."""
        names = list(dict.fromkeys([*self.availability.get("modality", []),
                                    *self.assignments.modality]))  # fmt: skip
        by_modality: dict[str, list[NormalizedItem]] = {n: [] for n in names}
        for item in self.items.values():
            by_modality.setdefault(item.modality, []).append(item)
        tables = {n: ItemTable.from_items(by_modality.get(n, [])) for n in names}
        row_of = {n: {item_id: r for r, item_id in enumerate(t.ids)} for n, t in tables.items()}
        position = {n: p for p, n in enumerate(names)}
        a = self.assignments
        rows = {
            "sample": a.sample_index.to_numpy(np.int64),
            "modality": np.array([position[m] for m in a.modality], dtype=np.int64),
            "period": a.period.to_numpy(np.int64),
            "rank": a["rank"].to_numpy(np.int64),
            "item": np.array(
                [row_of[m][i] for m, i in zip(a.modality, a.item_id, strict=True)], dtype=np.int64
            ),
            "coverage": a.coverage.to_numpy(np.float64),
        }
        v = self.availability
        avail = {
            "sample": v.sample_index.to_numpy(np.int64) if len(v) else np.zeros(0, np.int64),
            "modality": np.array([position[m] for m in v.get("modality", [])], dtype=np.int64),
            "period": v.period.to_numpy(np.int64) if len(v) else np.zeros(0, np.int64),
            "candidates": v.candidates.to_numpy(np.int64) if len(v) else np.zeros(0, np.int64),
            "other_crs_dropped": (
                v.other_crs_dropped.to_numpy(np.int64) if len(v) else np.zeros(0, np.int64)
            ),
        }
        writer = PlanWriter(directory, names, tables)
        writer.add(np.asarray(self.samples.tile_id, dtype=object), rows, avail)
        return writer.close(self.samples, self.scheme, self.search)

    @classmethod
    def read_parquet(cls, directory: str | Path) -> Plan:
        """A saved plan, whole, in memory (a build task reads only its rows: `PlanFiles`)."""
        files = PlanFiles(directory)
        return cls(
            scheme=files.scheme,
            samples=files.samples,
            assignments=files.assignments,
            availability=files.availability,
            items=files.all_items(),
            search=files.search,
        )


def _samples_table(
    tiles: Sequence[Tile], scheme: TimeScheme, anchors: Sequence[date]
) -> gpd.GeoDataFrame:
    """One row per sample, built on columns (`tile_arrays`): the per-tile version spent
    1.8 s per 10k tiles asking each tile for its centre and outline."""
    bounds = tile_bounds(tiles)
    centres = centers_lonlat(tiles)
    starts: dict[date, list[str]] = {}
    for anchor in anchors:
        if anchor not in starts:
            starts[anchor] = [d.isoformat() for d in scheme.period_starts(anchor)[:-1]]
    frame = pd.DataFrame(
        {
            "sample_index": np.arange(len(tiles), dtype=np.int64),
            "tile_id": pd.Series([t.id for t in tiles], dtype=object),
            "epsg": np.array([t.epsg for t in tiles], dtype=np.int64),
            "minx": bounds[:, 0],
            "miny": bounds[:, 1],
            "maxx": bounds[:, 2],
            "maxy": bounds[:, 3],
            "center_lon": centres[:, 0],
            "center_lat": centres[:, 1],
            "period_starts": pd.Series([starts[a] for a in anchors], dtype=object),
        }
    )
    geometry = gpd.GeoSeries(footprints_lonlat(tiles), crs="EPSG:4326")
    return gpd.GeoDataFrame(frame, geometry=geometry)


_ASSIGNMENT_COLUMNS = [
    "sample_index", "tile_id", "modality", "period", "rank", "item_id", "collection",
    "datetime", "cloud_cover", "coverage",
]  # fmt: skip


def make_plan_reference(
    tiles: Sequence[Tile],
    scheme: TimeScheme,
    items_by_modality: Mapping[str, Sequence[NormalizedItem]],
    *,
    params: PlanParams = PlanParams(),
    anchors: Sequence[date] | None = None,
) -> Plan:
    """The per-tile planner `make_plan` replaced (tiles x items; 148 ms per tile at 10k
    worldwide tiles): kept as the executable statement of the rules, which the engine's
    tests and `benchmarks/plan_scale.py` compare against."""
    if anchors is not None and len(anchors) != len(tiles):
        raise ValueError(
            f"make_plan: {len(anchors)} anchors for {len(tiles)} tiles; give one per tile"
        )
    sample_anchors = list(anchors) if anchors is not None else [scheme.start] * len(tiles)
    rows: list[dict[str, Any]] = []
    availability: list[dict[str, Any]] = []
    used: dict[str, NormalizedItem] = {}
    for index, (tile, anchor) in enumerate(zip(tiles, sample_anchors, strict=True)):
        for name, items in items_by_modality.items():
            covering = covering_items(items, tile, params.min_coverage)
            temporal = modality(name).temporal
            periods = (
                [(p, [(i, c) for i, c in covering if start <= i.datetime < end])
                 for p, (start, end) in enumerate(scheme.bounds(anchor))]
                if temporal else [(STATIC_PERIOD, covering)]
            )  # fmt: skip
            crs_key = tile.epsg if params.prefer_same_crs else None
            for period, found in periods:
                candidates = (
                    prefer_same_crs(found, tile, params.full_coverage)
                    if params.prefer_same_crs
                    else found
                )
                ranked = (
                    rank_candidates(candidates, crs_key)
                    if temporal
                    else _best_covering(candidates, crs_key)
                )
                kept = ranked[: params.max_candidates]
                availability.append(
                    {"sample_index": index, "tile_id": tile.id, "modality": name, "period": period,
                     "candidates": len(candidates), "other_crs_dropped": len(found) - len(candidates),
                     "has_data": bool(kept)}
                )  # fmt: skip
                for rank, (item, coverage) in enumerate(kept):
                    used[item.id] = item
                    rows.append(
                        {"sample_index": index, "tile_id": tile.id, "modality": name, "period": period,
                         "rank": rank, "item_id": item.id, "collection": item.collection,
                         "datetime": item.datetime, "cloud_cover": item.cloud_cover, "coverage": coverage}
                    )  # fmt: skip
    assignments = pd.DataFrame(rows, columns=_ASSIGNMENT_COLUMNS)
    return Plan(
        scheme=scheme,
        samples=_samples_table(tiles, scheme, sample_anchors),
        assignments=assignments.astype(
            {"sample_index": "int64", "period": "int64", "rank": "int64"}
        ),
        availability=pd.DataFrame(availability),
        items=used,
    )


PLAN_CHUNK_TILES = 4096
"""Tiles planned together: one STRtree query and one lexsort per modality per chunk
(bigger chunks gain nothing measurable and hold more pairs in memory)."""


def make_plan(
    tiles: Sequence[Tile],
    scheme: TimeScheme,
    items_by_modality: Mapping[str, Sequence[NormalizedItem]],
    *,
    params: PlanParams = PlanParams(),
    anchors: Sequence[date] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Assign items to every (sample, modality, period); one sample per tile, in order.
    `progress(done, total)` is called after each chunk of tiles.

    The rules are `make_plan_reference`'s, computed on columns (`plan_engine`)."""
    if anchors is not None and len(anchors) != len(tiles):
        raise ValueError(
            f"make_plan: {len(anchors)} anchors for {len(tiles)} tiles; give one per tile"
        )
    sample_anchors = list(anchors) if anchors is not None else [scheme.start] * len(tiles)
    names = list(items_by_modality)
    item_lists = {n: list(items_by_modality[n]) for n in names}
    tables = {n: ItemTable.from_items(item_lists[n]) for n in names}
    indexes = footprint_indexes(tables)
    rule = engine_params(params)
    assigned, available = [], []
    for chunk in chunks(tiles, sample_anchors, scheme, PLAN_CHUNK_TILES):
        rows, avail = chunk_columns(chunk, names, tables, indexes, rule)
        assigned.append(rows)
        available.append(avail)
        if progress is not None:
            progress(chunk.first_sample + len(chunk.tiles), len(tiles))
    rows = _concat_columns(assigned, ("sample", "modality", "period", "rank", "item", "coverage"))
    avail = _concat_columns(
        available, ("sample", "modality", "period", "candidates", "other_crs_dropped")
    )
    tile_ids = np.array([t.id for t in tiles], dtype=object)
    name_of = np.array(names, dtype=object)
    used: dict[str, NormalizedItem] = {}
    item_ids, collections, times, clouds = [], [], [], []
    for position, item_row in zip(rows["modality"], rows["item"], strict=True):
        item = item_lists[names[position]][item_row]
        used[item.id] = item
        item_ids.append(item.id)
        collections.append(item.collection)
        times.append(item.datetime)
        clouds.append(item.cloud_cover)
    assignments = pd.DataFrame(
        {
            "sample_index": rows["sample"].astype("int64"),
            "tile_id": tile_ids[rows["sample"]],
            "modality": name_of[rows["modality"]] if len(names) else [],
            "period": rows["period"].astype("int64"),
            "rank": rows["rank"].astype("int64"),
            "item_id": item_ids,
            "collection": collections,
            "datetime": times,
            "cloud_cover": clouds,
            "coverage": rows["coverage"],
        },
        columns=_ASSIGNMENT_COLUMNS,
    )
    availability = pd.DataFrame(
        {
            "sample_index": avail["sample"].astype("int64"),
            "tile_id": tile_ids[avail["sample"]],
            "modality": name_of[avail["modality"]] if len(names) else [],
            "period": avail["period"].astype("int64"),
            "candidates": avail["candidates"].astype("int64"),
            "other_crs_dropped": avail["other_crs_dropped"].astype("int64"),
            "has_data": avail["candidates"] > 0,
        }
    )
    return Plan(
        scheme=scheme,
        samples=_samples_table(tiles, scheme, sample_anchors),
        assignments=assignments,
        availability=availability,
        items=used,
    )


def write_plan(
    tiles: Sequence[Tile],
    scheme: TimeScheme,
    tables: Mapping[str, ItemTable],
    directory: str | Path,
    *,
    params: PlanParams = PlanParams(),
    anchors: Sequence[date] | None = None,
    search: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Plan item tables straight to a saved plan, chunk by chunk: memory is one chunk of
    rows plus the tables, whatever the number of tiles (`make_plan` returns it whole).
    `progress(done, total)` is called after each chunk."""
    if anchors is not None and len(anchors) != len(tiles):
        raise ValueError(
            f"write_plan: {len(anchors)} anchors for {len(tiles)} tiles; give one per tile"
        )
    sample_anchors = list(anchors) if anchors is not None else [scheme.start] * len(tiles)
    names = list(tables)
    indexes = footprint_indexes(tables)
    writer = PlanWriter(directory, names, tables)
    tile_ids = np.array([t.id for t in tiles], dtype=object)
    rule = engine_params(params)
    for chunk in chunks(tiles, sample_anchors, scheme, PLAN_CHUNK_TILES):
        rows, avail = chunk_columns(chunk, names, tables, indexes, rule)
        writer.add(tile_ids, rows, avail)
        if progress is not None:
            progress(chunk.first_sample + len(chunk.tiles), len(tiles))
    samples = _samples_table(tiles, scheme, sample_anchors)
    return writer.close(samples, scheme, search or {})


def engine_params(params: PlanParams) -> EngineParams:
    return EngineParams(
        max_candidates=params.max_candidates,
        min_coverage=params.min_coverage,
        prefer_same_crs=params.prefer_same_crs,
        full_coverage=params.full_coverage,
    )


def _concat_columns(
    parts: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    if not parts:
        return {n: np.zeros(0, dtype=np.float64 if n == "coverage" else np.int64) for n in names}
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def _best_covering(
    candidates: Iterable[Candidate], tile_epsg: int | None = None
) -> list[Candidate]:
    """Static maps (no cloud: all rank equal there): the tile's own CRS first (with
    `tile_epsg`), then the item covering most of the tile, newest next, then id."""
    return sorted(
        candidates,
        key=lambda c: (
            _other_crs(c[0], tile_epsg),
            -c[1],
            -c[0].datetime.timestamp(),
            c[0].id,
        ),
    )
