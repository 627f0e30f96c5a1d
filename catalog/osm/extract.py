"""Local OSM extracts (.osm.pbf, .osm, .osm.bz2, .osm.gz) read with pyosmium, built by osmnx.

Every regional extract is clipped: a multipolygon crossing its edge keeps the relation
but loses member ways, and extracts cut with osmium's `simple` strategy (or an Overpass
bbox) also keep ways whose nodes lie outside. osmnx turns such a way into an empty
geometry, and a multipolygon holding one into `EmptyPartError`, which failed whole
builds. So the file is read with libosmium (any of its formats, PBF included, in three
streaming passes that keep only the tagged elements and the nodes they need), the
broken elements are set aside and counted per registry category, and the elements
that are left go through osmnx's own geometry rules (closed-way polygon tags,
multipolygon assembly, holes): the features are those osmnx builds from a complete
extract, which tests/catalog/test_osm_extract.py checks feature by feature.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely

EXTRACT_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz", ".osm.xml")


@dataclass
class ExtractReport:
    """What reading an extract set aside: element counts by registry category."""

    path: str
    clipped_relations: Counter[str] = field(default_factory=Counter)
    """Relations with a member way missing from the file or missing nodes."""
    clipped_ways: Counter[str] = field(default_factory=Counter)
    """Ways with nodes missing from the file."""

    @property
    def total(self) -> int:
        return sum(self.clipped_relations.values()) + sum(self.clipped_ways.values())

    def describe(self) -> str:
        def part(counts: Counter[str]) -> str:
            return ", ".join(f"{name} {n}" for name, n in counts.most_common())

        bits = []
        if self.clipped_relations:
            bits.append(
                f"{sum(self.clipped_relations.values())} clipped relation(s) "
                f"({part(self.clipped_relations)})"
            )
        if self.clipped_ways:
            bits.append(
                f"{sum(self.clipped_ways.values())} way(s) with nodes outside the extract "
                f"({part(self.clipped_ways)})"
            )
        return f"{self.path}: skipped " + "; ".join(bits) if bits else f"{self.path}: complete"


class ExtractError(ValueError):
    """An OSM extract that cannot be read; the message names the file and the fix."""


def check_extract_path(path: Path) -> None:
    """Refuse a missing file or a format libosmium does not read (before any work)."""
    if not path.is_file():
        raise ExtractError(f"OSM extract {path} does not exist")
    if not path.name.lower().endswith(EXTRACT_SUFFIXES):
        raise ExtractError(
            f"OSM extract {path}: unknown format; expected one of {', '.join(EXTRACT_SUFFIXES)}"
        )


def extract_bounds(path: Path) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) from the file header, else from its nodes (one pass);
    None for a file without nodes."""
    import osmium

    check_extract_path(path)
    try:
        reader = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING)
        box = reader.header().box()
        reader.close()
        if box.valid():
            return (box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)
        lons, lats = [], []
        for node in _each(path, osmium.osm.osm_entity_bits.NODE):
            if node.location.valid():
                lons.append(node.location.lon)
                lats.append(node.location.lat)
    except RuntimeError as err:
        raise ExtractError(f"OSM extract {path} cannot be read: {err}") from None
    return (min(lons), min(lats), max(lons), max(lats)) if lons else None


def _each(path: Path, entities: Any) -> Iterator[Any]:
    """The file's objects of one kind (typed loosely: pyosmium yields a union)."""
    import osmium

    yield from osmium.FileProcessor(str(path), entities)


def _wanted(tags: Any, keys: frozenset[str]) -> bool:
    return any(tag.k in keys for tag in tags)


def read_elements(
    path: Path, keys: frozenset[str], relation_types: frozenset[str]
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, str]]]]:
    """Overpass-style elements of the tagged features (and the nodes and member ways they
    need), with broken ways and relations removed; and the removed ones' tags by kind."""
    import osmium

    check_extract_path(path)
    entity = osmium.osm.osm_entity_bits
    relations: list[dict[str, Any]] = []
    member_ways: set[int] = set()
    try:
        for rel in _each(path, entity.RELATION):
            if rel.tags.get("type") in relation_types and _wanted(rel.tags, keys):
                members = [
                    {"type": {"w": "way", "n": "node", "r": "relation"}[m.type], "ref": m.ref}
                    | {"role": m.role}
                    for m in rel.members
                ]
                relations.append(
                    {"type": "relation", "id": rel.id, "members": members, "tags": dict(rel.tags)}
                )
                member_ways.update(m["ref"] for m in members if m["type"] == "way")
        ways: list[dict[str, Any]] = []
        needed_nodes: set[int] = set()
        for way in _each(path, entity.WAY):
            if way.id in member_ways or _wanted(way.tags, keys):
                refs = [n.ref for n in way.nodes]
                ways.append({"type": "way", "id": way.id, "nodes": refs, "tags": dict(way.tags)})
                needed_nodes.update(refs)
        nodes: list[dict[str, Any]] = []
        for node in _each(path, entity.NODE):
            tagged = _wanted(node.tags, keys)
            if (tagged or node.id in needed_nodes) and node.location.valid():
                loc = node.location
                element = {"type": "node", "id": node.id, "lat": loc.lat, "lon": loc.lon}
                nodes.append(element | {"tags": dict(node.tags)} if tagged else element)
    except RuntimeError as err:
        raise ExtractError(f"OSM extract {path} cannot be read: {err}") from None

    present = {n["id"] for n in nodes}
    broken_ways = {w["id"] for w in ways if any(ref not in present for ref in w["nodes"])}
    way_ids = {w["id"] for w in ways} - broken_ways
    kept_relations: list[dict[str, Any]] = []
    broken_relations: list[dict[str, Any]] = []
    for rel in relations:
        refs = [m["ref"] for m in rel["members"] if m["type"] == "way"]
        (kept_relations if refs and all(r in way_ids for r in refs) else broken_relations).append(
            rel
        )
    removed = {
        "ways": [w["tags"] for w in ways if w["id"] in broken_ways],
        "relations": [r["tags"] for r in broken_relations],
    }
    kept_ways = [w for w in ways if w["id"] not in broken_ways]
    return [*nodes, *kept_ways, *kept_relations], removed


def read_raw_features(
    path: Path, tags: Mapping[str, bool | str | list[str]], polygon: shapely.Geometry | None
) -> tuple[gpd.GeoDataFrame | None, dict[str, list[dict[str, str]]]]:
    """osmnx features (None when there are none) of the extract's intact elements, and the
    tags of the ways and relations set aside."""
    from osmnx import features as ox_features
    from osmnx._errors import InsufficientResponseError

    relation_types = frozenset(ox_features._RELATION_TYPES)
    elements, removed = read_elements(path, frozenset(tags), relation_types)
    try:
        raw = ox_features._create_gdf(
            [{"elements": elements}], polygon or shapely.Polygon(), dict(tags)
        )
    except InsufficientResponseError:
        return None, removed
    return raw, removed
