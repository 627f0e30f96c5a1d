"""OpenStreetMap features for tiles, mapped to the registry's 30 categories.

Features come from a local extract (.osm.pbf, .osm, .osm.bz2: catalog/osm/extract.py,
pyosmium reading, osmnx geometry rules, clipped elements set aside and counted) or from
Overpass (one query per region polygon, never per tile). Each feature gets one row per
matching category (TagRule.matches); `features_for_tile` returns the features meeting a
tile, clipped to it, in the tile's CRS, ready to rasterize.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import pandas as pd
import shapely
from terracube.catalog.grid import Tile
from terracube.catalog.registry import OSM_CATEGORIES

if TYPE_CHECKING:
    from terracube.catalog.osm.extract import ExtractReport

OSM_TAG_QUERY: dict[str, bool | str | list[str]] = {c.rule.key: True for c in OSM_CATEGORIES}
"""osmnx tag filter fetching every key any category looks at (filtered exactly later)."""

_TAG_KEYS = sorted(
    {c.rule.key for c in OSM_CATEGORIES} | {k for c in OSM_CATEGORIES for k, _ in c.rule.also}
)


def categories_of(tags: Mapping[str, Any]) -> list[str]:
    """Names of the registry categories whose TagRule matches these tags."""
    clean = {
        k: str(v)
        for k, v in tags.items()
        if v is not None and not (isinstance(v, float) and pd.isna(v))
    }
    return [c.name for c in OSM_CATEGORIES if c.rule.matches(clean)]


def categorize(raw: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """osmnx features -> one row per (feature, category): osm_type, osm_id, category, geometry."""
    rows: list[dict[str, Any]] = []
    keys = [k for k in _TAG_KEYS if k in raw.columns]
    for (element, osm_id), record in zip(raw.index, raw[keys].to_dict("records"), strict=True):
        for name in categories_of(record):
            rows.append({"osm_type": element, "osm_id": int(osm_id), "category": name})
    geometry = [raw.geometry.loc[(r["osm_type"], r["osm_id"])] for r in rows]
    return gpd.GeoDataFrame(
        rows, columns=["osm_type", "osm_id", "category"], geometry=geometry, crs="EPSG:4326"
    )


def empty_features() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"osm_type": [], "osm_id": [], "category": []}, geometry=[], crs="EPSG:4326"
    )


def read_osm_extract(
    path: str | Path, polygon: shapely.Geometry | None = None
) -> tuple[gpd.GeoDataFrame, ExtractReport]:
    """Categorized features of a local extract (any libosmium format, offline), and what
    was set aside as clipped, counted per category (catalog/osm/extract.py)."""
    from terracube.catalog.osm.extract import ExtractReport, read_raw_features

    raw, removed = read_raw_features(Path(path), OSM_TAG_QUERY, polygon)
    report = ExtractReport(str(path))
    for tags in removed["ways"]:
        report.clipped_ways.update(categories_of(tags))
    for tags in removed["relations"]:
        report.clipped_relations.update(categories_of(tags))
    return (empty_features() if raw is None else categorize(raw)), report


def read_extract(path: str | Path, polygon: shapely.Geometry | None = None) -> gpd.GeoDataFrame:
    """Categorized features of a local extract (PBF or XML, offline)."""
    return read_osm_extract(path, polygon)[0]


def fetch_overpass(region: shapely.Geometry) -> gpd.GeoDataFrame:
    """Categorized features inside a lon/lat region polygon, in one Overpass query.

    osmnx settings (ox.settings.overpass_url, requests_timeout, cache_folder) apply.
    """
    import osmnx

    return categorize(osmnx.features_from_polygon(region, tags=OSM_TAG_QUERY))


class OsmFeatures:
    """Categorized features of one region, indexed for per-tile queries."""

    def __init__(self, features: gpd.GeoDataFrame, report: ExtractReport | None = None) -> None:
        if features.crs is None or features.crs.to_epsg() != 4326:
            raise ValueError(
                f"OsmFeatures wants lon/lat (EPSG:4326) features, got CRS {features.crs}"
            )
        self.features = features.reset_index(drop=True)
        self.report = report
        """What reading the extract set aside (None for Overpass)."""

    @classmethod
    def from_extract(cls, path: str | Path, polygon: shapely.Geometry | None = None) -> OsmFeatures:
        return cls(*read_osm_extract(path, polygon))

    def features_for_tile(self, tile: Tile) -> gpd.GeoDataFrame:
        """Features meeting the tile, clipped to its square, in the tile CRS."""
        hits = self.features.sindex.query(tile.footprint_lonlat(), predicate="intersects")
        near = self.features.iloc[sorted(hits)].to_crs(tile.crs)
        square = shapely.box(*tile.bounds)
        clipped = near.geometry.intersection(square)
        keep = ~clipped.is_empty
        out = near.loc[keep].copy()
        out["geometry"] = clipped[keep]
        return out.reset_index(drop=True)
