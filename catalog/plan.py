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

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.grid import Tile
from terracube.catalog.registry import modality
from terracube.catalog.stac.item_records import item_from_record, item_to_record
from terracube.catalog.stac.items import NormalizedItem
from terracube.catalog.timescheme import TimeScheme

PLAN_FORMAT_VERSION = 1
STATIC_PERIOD = -1
"""Period value of rows for static modalities (WorldCover): one answer for all periods."""


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


def tile_coverage(geometry_lonlat: shapely.Geometry, tile: Tile) -> float:
    """Fraction (0-1) of the tile's square covered by a lon/lat footprint, in the tile CRS."""
    return _coverage(geometry_lonlat, tile, tile.footprint_lonlat())


@functools.lru_cache(maxsize=64)
def _lonlat_to(epsg: int) -> Transformer:
    """One transformer per CRS: building one costs more than projecting a footprint."""
    return Transformer.from_crs(4326, epsg, always_xy=True)


def _coverage(geometry_lonlat: shapely.Geometry, tile: Tile, footprint: shapely.Geometry) -> float:
    near = shapely.intersection(geometry_lonlat, footprint)
    if near.is_empty:
        return 0.0
    to_tile = _lonlat_to(tile.epsg)

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = to_tile.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    projected = shapely.transform(near, project)
    square = shapely.box(*tile.bounds)
    covered = shapely.intersection(shapely.make_valid(projected), square).area
    return float(min(1.0, covered / (TILE_SIZE_M * TILE_SIZE_M)))


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
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.samples.to_parquet(out / "samples.parquet")
        self.assignments.to_parquet(out / "assignments.parquet", index=False)
        self.availability.to_parquet(out / "availability.parquet", index=False)
        records = [item_to_record(i) for i in self.items.values()]
        items = gpd.GeoDataFrame(
            {"item_id": [r["id"] for r in records], "record": [json.dumps(r) for r in records]},
            geometry=gpd.GeoSeries([i.geometry for i in self.items.values()], crs="EPSG:4326"),
        )
        items.to_parquet(out / "items.parquet")
        meta = {
            "format_version": PLAN_FORMAT_VERSION,
            "scheme": self.scheme.to_dict(),
            "search": self.search,
        }
        (out / "plan.json").write_text(json.dumps(meta, indent=2, default=str))
        return out

    @classmethod
    def read_parquet(cls, directory: str | Path) -> Plan:
        src = Path(directory)
        meta_path = src / "plan.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{src} is not a plan directory (no plan.json); write one with Plan.to_parquet"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != PLAN_FORMAT_VERSION:
            raise ValueError(
                f"plan {src} has format version {meta.get('format_version')}, this code reads "
                f"{PLAN_FORMAT_VERSION}; re-run the plan"
            )
        items_table = gpd.read_parquet(src / "items.parquet")
        items = {r["id"]: item_from_record(r) for r in map(json.loads, items_table["record"])}
        return cls(
            scheme=TimeScheme.from_dict(meta["scheme"]),
            samples=gpd.read_parquet(src / "samples.parquet"),
            assignments=pd.read_parquet(src / "assignments.parquet"),
            availability=pd.read_parquet(src / "availability.parquet"),
            items=items,
            search=meta.get("search", {}),
        )


def _samples_table(
    tiles: Sequence[Tile], scheme: TimeScheme, anchors: Sequence[date]
) -> gpd.GeoDataFrame:
    rows = []
    for index, (tile, anchor) in enumerate(zip(tiles, anchors, strict=True)):
        lon, lat = tile.center_lonlat
        minx, miny, maxx, maxy = tile.bounds
        rows.append(
            {
                "sample_index": index,
                "tile_id": tile.id,
                "epsg": tile.epsg,
                "minx": minx,
                "miny": miny,
                "maxx": maxx,
                "maxy": maxy,
                "center_lon": lon,
                "center_lat": lat,
                "period_starts": [d.isoformat() for d in scheme.period_starts(anchor)[:-1]],
            }
        )
    geometry = gpd.GeoSeries([t.footprint_lonlat() for t in tiles], crs="EPSG:4326")
    return gpd.GeoDataFrame(pd.DataFrame(rows), geometry=geometry)


_ASSIGNMENT_COLUMNS = [
    "sample_index", "tile_id", "modality", "period", "rank", "item_id", "collection",
    "datetime", "cloud_cover", "coverage",
]  # fmt: skip


def make_plan(
    tiles: Sequence[Tile],
    scheme: TimeScheme,
    items_by_modality: Mapping[str, Sequence[NormalizedItem]],
    *,
    params: PlanParams = PlanParams(),
    anchors: Sequence[date] | None = None,
) -> Plan:
    """Assign items to every (sample, modality, period); one sample per tile, in order."""
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
