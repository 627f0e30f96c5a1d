"""The plan's assignment, computed on columns: linear in tiles, not tiles x items.

`make_plan_reference` (plan.py) tests every item against every tile and recomputes the
coverage of a footprint once per item, so a scene footprint revisited 36 times in a
year is intersected and projected 36 times per tile. Measured on 10k worldwide tiles
that was 148 ms of CPU per tile; at 300k tiles, 24 hours. Here:

- item footprints are de-duplicated per modality (WKB equality) and put in one STRtree,
  so a chunk of tiles finds its (tile, footprint) pairs in one C-level query;
- coverage is computed once per (footprint, tile) pair, with shapely's vectorised
  functions: the same GEOS operations in the same order as `plan._coverage`, so the
  values are bit-identical, not just close;
- pairs are expanded to (tile, item) rows with numpy, filtered to periods with a
  `searchsorted`, and ranked with one `lexsort` per modality;
- only the rare groups near a zone boundary whose own-CRS scenes each cover part of
  the tile go back to shapely for the union test, as the reference does.

The rules (candidate filter, same-CRS preference, ranking, truncation) are the
reference's; `tests/catalog/test_plan_engine.py` checks both give the same tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import shapely
from terracube.catalog.coverage import coverage_of_pairs, tile_coverage
from terracube.catalog.grid import Tile
from terracube.catalog.plan_items import ItemTable, datetime_ns
from terracube.catalog.registry import modality
from terracube.catalog.tile_arrays import footprints_lonlat, tile_bounds
from terracube.catalog.timescheme import TimeScheme

STATIC_PERIOD = -1
"""Period value of rows for static modalities (WorldCover): one answer for all periods."""


@dataclass(frozen=True)
class EngineParams:
    """The plan rules the engine applies (the fields of `plan.PlanParams`)."""

    max_candidates: int
    min_coverage: float
    prefer_same_crs: bool
    full_coverage: float


@dataclass(frozen=True)
class TileChunk:
    """A run of consecutive samples: their tiles, anchors and lon/lat footprints."""

    first_sample: int
    tiles: Sequence[Tile]
    period_edges: np.ndarray
    """(tiles, periods + 1) int64 UTC nanoseconds: the [start, end) edges of each period."""
    footprints: np.ndarray
    epsg: np.ndarray
    bounds: np.ndarray
    """(tiles, 4) minx, miny, maxx, maxy in metres of each tile's CRS."""

    @classmethod
    def of(
        cls, first_sample: int, tiles: Sequence[Tile], anchors: Sequence[date], scheme: TimeScheme
    ) -> TileChunk:
        edges_by_anchor: dict[date, np.ndarray] = {}
        rows = []
        for anchor in anchors:
            if anchor not in edges_by_anchor:
                bounds = scheme.bounds(anchor)
                edges = [start for start, _ in bounds] + [bounds[-1][1]]
                edges_by_anchor[anchor] = np.array([datetime_ns(e) for e in edges], dtype=np.int64)
            rows.append(edges_by_anchor[anchor])
        return cls(
            first_sample=first_sample,
            tiles=tiles,
            period_edges=np.stack(rows) if rows else np.zeros((0, scheme.periods + 1), np.int64),
            footprints=footprints_lonlat(tiles),
            epsg=np.array([t.epsg for t in tiles], dtype=np.int64),
            bounds=tile_bounds(tiles),
        )


@dataclass(frozen=True)
class Assigned:
    """One modality's rows for one chunk, as columns (positions into the chunk / table)."""

    tile: np.ndarray
    """Position of the tile in the chunk."""
    period: np.ndarray
    rank: np.ndarray
    item: np.ndarray
    """Row of the item in the modality's ItemTable."""
    coverage: np.ndarray


@dataclass(frozen=True)
class Availability:
    """One row per (tile, period) of one modality and chunk, every period included."""

    tile: np.ndarray
    period: np.ndarray
    candidates: np.ndarray
    other_crs_dropped: np.ndarray


class FootprintIndex:
    """The distinct footprints of one modality's items, in an STRtree, and which items
    share each (CSR: `members[offsets[g]:offsets[g + 1]]` are the rows of footprint g,
    ascending, so item order inside a footprint is the table's order)."""

    def __init__(self, table: ItemTable) -> None:
        # an item store numbers its footprints: then no WKB to compare
        footprint = table.footprint
        keys = footprint if footprint is not None else shapely.to_wkb(table.geometry)
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        self.geometries = table.geometry[first]
        self.tree = shapely.STRtree(self.geometries)
        order = np.argsort(inverse, kind="stable")
        self.members = order.astype(np.int64)
        counts = np.bincount(inverse, minlength=len(unique))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def assign_modality(
    name: str,
    table: ItemTable,
    index: FootprintIndex,
    chunk: TileChunk,
    params: EngineParams,
) -> tuple[Assigned, Availability]:
    """Candidates of every (tile, period) of one modality in one chunk, ranked and cut."""
    temporal = modality(name).temporal
    n_tiles = len(chunk.tiles)
    periods = chunk.period_edges.shape[1] - 1 if temporal else 1
    tile_pos, footprint = index.tree.query(chunk.footprints, predicate="intersects")
    coverage = coverage_of_pairs(
        index.geometries[footprint],
        chunk.footprints[tile_pos],
        chunk.epsg[tile_pos],
        chunk.bounds[tile_pos],
    )
    keep = coverage >= params.min_coverage
    tile_pos, footprint, coverage = tile_pos[keep], footprint[keep], coverage[keep]
    # (tile, footprint) -> (tile, item): every item sharing the footprint
    counts = index.offsets[footprint + 1] - index.offsets[footprint]
    tile_rows = np.repeat(tile_pos, counts)
    coverage_rows = np.repeat(coverage, counts)
    starts = np.repeat(index.offsets[footprint], counts)
    within = np.arange(len(tile_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    item_rows = index.members[starts + within]
    if temporal:
        period_rows = _periods_of(table.datetime_ns[item_rows], tile_rows, chunk.period_edges)
        inside = (period_rows >= 0) & (period_rows < periods)
        tile_rows, item_rows = tile_rows[inside], item_rows[inside]
        coverage_rows, period_rows = coverage_rows[inside], period_rows[inside]
    else:
        period_rows = np.zeros(len(tile_rows), dtype=np.int64)
    group = tile_rows * periods + period_rows
    other = table.epsg[item_rows] != chunk.epsg[tile_rows]
    found = np.bincount(group, minlength=n_tiles * periods)
    kept = np.ones(len(group), dtype=bool)
    if params.prefer_same_crs and len(group):
        kept = _same_crs_kept(group, other, coverage_rows, item_rows, table, chunk, periods, params)
    group, other = group[kept], other[kept]
    item_rows, coverage_rows = item_rows[kept], coverage_rows[kept]
    candidates = np.bincount(group, minlength=n_tiles * periods)
    crs_key = other if params.prefer_same_crs else np.zeros(len(group), dtype=bool)
    if temporal:
        cloud = np.nan_to_num(table.cloud[item_rows], nan=0.0)
        order = np.lexsort(
            (table.id_rank[item_rows], table.datetime_ns[item_rows], -coverage_rows, crs_key,
             cloud, group)
        )  # fmt: skip
    else:
        order = np.lexsort(
            (table.id_rank[item_rows], -table.datetime_ns[item_rows], -coverage_rows, crs_key,
             group)
        )  # fmt: skip
    group, item_rows, coverage_rows = group[order], item_rows[order], coverage_rows[order]
    first_of_group = np.concatenate([[0], np.cumsum(candidates)])[group]
    rank = np.arange(len(group)) - first_of_group
    top = rank < params.max_candidates
    group, rank = group[top], rank[top]
    tile_of_group, period_of_group = np.divmod(np.arange(n_tiles * periods), periods)
    period_value = period_of_group if temporal else np.full(n_tiles * periods, STATIC_PERIOD)
    assigned = Assigned(
        tile=group // periods,
        period=period_value[group],
        rank=rank,
        item=item_rows[top],
        coverage=coverage_rows[top],
    )
    available = Availability(
        tile=tile_of_group,
        period=period_value,
        candidates=candidates,
        other_crs_dropped=found - candidates,
    )
    return assigned, available


def _periods_of(when: np.ndarray, tile_rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Period index of each row (-1 before the first, `periods` after the last), one
    `searchsorted` per distinct anchor (usually one per chunk)."""
    out = np.empty(len(when), dtype=np.int64)
    distinct, which = np.unique(edges, axis=0, return_inverse=True)
    row_anchor = which.reshape(-1)[tile_rows]
    for k, row in enumerate(distinct):
        chosen = row_anchor == k
        out[chosen] = np.searchsorted(row, when[chosen], side="right") - 1
    return out


def _same_crs_kept(
    group: np.ndarray,
    other: np.ndarray,
    coverage: np.ndarray,
    item_rows: np.ndarray,
    table: ItemTable,
    chunk: TileChunk,
    periods: int,
    params: EngineParams,
) -> np.ndarray:
    """`plan.prefer_same_crs` per group: other-CRS rows are dropped where the own-CRS
    candidates cover the tile (one of them alone, or their union)."""
    size = int(group.max()) + 1
    n_found = np.bincount(group, minlength=size)
    n_own = np.bincount(group, weights=~other, minlength=size).astype(np.int64)
    best_own = np.zeros(size)
    np.maximum.at(best_own, group[~other], coverage[~other])
    mixed = (n_own > 0) & (n_own < n_found)
    drop = mixed & (best_own >= params.full_coverage)
    undecided = np.flatnonzero(mixed & ~drop)
    if not len(undecided):
        return ~(drop[group] & other)
    own = np.flatnonzero(~other & np.isin(group, undecided))
    own = own[np.lexsort((item_rows[own], group[own]))]
    edges = np.searchsorted(group[own], np.append(undecided, undecided[-1] + 1))
    for k, g in enumerate(undecided):
        rows = own[edges[k] : edges[k + 1]]
        tile = chunk.tiles[int(g) // periods]
        union = shapely.union_all(list(table.geometry[item_rows[rows]]))
        drop[g] = tile_coverage(union, tile) >= params.full_coverage
    return ~(drop[group] & other)


def chunks(
    tiles: Sequence[Tile], anchors: Sequence[date], scheme: TimeScheme, size: int
) -> Iterator[TileChunk]:
    """Consecutive runs of `size` samples (the last one shorter)."""
    for start in range(0, len(tiles), size):
        stop = min(start + size, len(tiles))
        yield TileChunk.of(start, tiles[start:stop], anchors[start:stop], scheme)


def footprint_indexes(tables: Mapping[str, ItemTable]) -> dict[str, FootprintIndex]:
    return {name: FootprintIndex(table) for name, table in tables.items()}


def chunk_columns(
    chunk: TileChunk,
    names: Sequence[str],
    tables: Mapping[str, ItemTable],
    indexes: Mapping[str, FootprintIndex],
    params: EngineParams,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Assignment and availability columns of one chunk, all modalities, in the order
    of the reference plan: sample, modality (`names` order), period, rank.

    Samples are absolute (`chunk.first_sample` added); `modality` is the position in
    `names`; `item` is the row in that modality's table."""
    parts: list[tuple[int, Assigned, Availability]] = []
    for position, name in enumerate(names):
        assigned, offered = assign_modality(name, tables[name], indexes[name], chunk, params)
        parts.append((position, assigned, offered))
    rows = {
        "sample": np.concatenate([a.tile for _, a, _ in parts] or [np.zeros(0, np.int64)]),
        "modality": np.concatenate(
            [np.full(len(a.tile), p, dtype=np.int64) for p, a, _ in parts]
            or [np.zeros(0, np.int64)]
        ),
        "period": np.concatenate([a.period for _, a, _ in parts] or [np.zeros(0, np.int64)]),
        "rank": np.concatenate([a.rank for _, a, _ in parts] or [np.zeros(0, np.int64)]),
        "item": np.concatenate([a.item for _, a, _ in parts] or [np.zeros(0, np.int64)]),
        "coverage": np.concatenate([a.coverage for _, a, _ in parts] or [np.zeros(0)]),
    }
    order = np.lexsort((rows["rank"], rows["period"], rows["modality"], rows["sample"]))
    rows = {k: v[order] for k, v in rows.items()}
    rows["sample"] = rows["sample"] + chunk.first_sample
    avail = {
        "sample": np.concatenate([v.tile for _, _, v in parts] or [np.zeros(0, np.int64)]),
        "modality": np.concatenate(
            [np.full(len(v.tile), p, dtype=np.int64) for p, _, v in parts]
            or [np.zeros(0, np.int64)]
        ),
        "period": np.concatenate([v.period for _, _, v in parts] or [np.zeros(0, np.int64)]),
        "candidates": np.concatenate(
            [v.candidates for _, _, v in parts] or [np.zeros(0, np.int64)]
        ),
        "other_crs_dropped": np.concatenate(
            [v.other_crs_dropped for _, _, v in parts] or [np.zeros(0, np.int64)]
        ),
    }
    order = np.lexsort((avail["period"], avail["modality"], avail["sample"]))
    avail = {k: v[order] for k, v in avail.items()}
    avail["sample"] = avail["sample"] + chunk.first_sample
    return rows, avail
