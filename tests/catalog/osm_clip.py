"""Clip a real extract to a lon/lat box the way `osmium extract --strategy simple` does:
nodes inside the box, ways with at least one node inside (their node lists untouched, so
nodes outside are missing), relations with at least one member kept. The result is a
PBF with exactly the defects of a regional extract's edge."""

from __future__ import annotations

from pathlib import Path

import osmium


def clip_simple(source: Path, box: tuple[float, float, float, float], out: Path) -> Path:
    west, south, east, north = box
    inside: set[int] = set()
    for node in osmium.FileProcessor(str(source), osmium.osm.osm_entity_bits.NODE):
        loc = node.location
        if loc.valid() and west <= loc.lon <= east and south <= loc.lat <= north:
            inside.add(node.id)
    ways: set[int] = set()
    for way in osmium.FileProcessor(str(source), osmium.osm.osm_entity_bits.WAY):
        if any(n.ref in inside for n in way.nodes):
            ways.add(way.id)
    relations: set[int] = set()
    for rel in osmium.FileProcessor(str(source), osmium.osm.osm_entity_bits.RELATION):
        if any(
            (m.type == "n" and m.ref in inside) or (m.type == "w" and m.ref in ways)
            for m in rel.members
        ):
            relations.add(rel.id)
    out.unlink(missing_ok=True)
    writer = osmium.SimpleWriter(str(out))
    try:
        for obj in osmium.FileProcessor(str(source)):
            if obj.is_node() and obj.id in inside:
                writer.add_node(obj)
            elif obj.is_way() and obj.id in ways:
                writer.add_way(obj)
            elif obj.is_relation() and obj.id in relations:
                writer.add_relation(obj)
    finally:
        writer.close()
    return out
