"""`generate_world`: plan, write every sensor's COGs and STAC, the OSM extract, the truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import yaml
from terracube.catalog.grid import Tile
from terracube.catalog.s2_baseline import S2_BOA_ADD_OFFSET_DN, s2_offset_applies
from terracube.workflows.world.config import (
    WorldSize,
    WorldSizeName,
    period_starts,
    planned_tiles,
    world_size,
    zone_grids,
)
from terracube.workflows.world.context import WorldContext
from terracube.workflows.world.crops import CROP_TYPES, signal_blocks, write_crop_labels
from terracube.workflows.world.landcover import block_classes
from terracube.workflows.world.modalities import landsat, sentinel1, sentinel2, worldcover
from terracube.workflows.world.modalities.osm import build_features, write_osm_xml
from terracube.workflows.world.scenes import (
    ALL_CLOUD_PERIOD,
    Scene,
    plan_landsat,
    plan_sentinel1,
    plan_sentinel2,
)
from terracube.workflows.world.spectra import (
    LANDSAT_BANDS,
    S1_BANDS,
    S2_BANDS,
    landsat_dn,
    s1_mean_linear,
    s2_stored,
)
from terracube.workflows.world.stac import CollectionInfo, write_ndjson, write_static_catalog
from terracube.workflows.world.truth import write_truth

MODALITY_COLLECTIONS = {
    "sentinel2_l2a": "sentinel-2-l2a",
    "sentinel1": "sentinel-1-rtc",
    "landsat_c2l2": "landsat-c2-l2",
    "worldcover": "esa-worldcover",
}


@dataclass(frozen=True)
class WorldManifest:
    """Where everything was written and the facts tests need without reading it back."""

    root: Path
    catalog: Path
    ndjson: dict[str, Path]
    osm: Path
    truth_dir: Path
    build_yaml: Path
    seed: int
    size: str
    epsgs: tuple[int, ...]
    tile_ids: tuple[str, ...]
    period_starts: tuple[str, ...]
    item_ids: dict[str, tuple[str, ...]]
    """collection id -> item ids."""


def generate_world(out: Path, seed: int = 0, size: WorldSizeName = "test") -> WorldManifest:
    """Write the synthetic world into `out` (created; must be empty or absent)."""
    return _generate(Path(out), seed, world_size(size))


def _generate(out: Path, seed: int, preset: WorldSize) -> WorldManifest:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"world output {out} is not empty; pass a new or empty directory")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    out.mkdir(parents=True, exist_ok=True)
    tiles = planned_tiles(preset)
    grids = zone_grids(tiles)
    starts = period_starts(preset)
    months = [d.month for d in starts[:-1]]
    classes = {g.epsg: block_classes(g, seed) for g in grids}
    ctx = WorldContext(
        seed=seed,
        stac_dir=out / "stac",
        grids={g.epsg: g for g in grids},
        classes=classes,
        signal={g.epsg: signal_blocks(g, classes[g.epsg], seed) for g in grids},
        period_starts=starts,
        s2_table=s2_stored(months),
        landsat_table=landsat_dn(months),
        s1_linear={k: v.astype(np.float32) for k, v in s1_mean_linear(months).items()},
    )
    truth_dir = out / "truth"
    truth_dir.mkdir()

    collections: dict[str, tuple[CollectionInfo, list[dict[str, Any]]]] = {}
    scene_truth: list[dict[str, Any]] = []
    for modality, plan, writer, info in (
        ("sentinel2_l2a", plan_sentinel2, sentinel2.write_sentinel2, sentinel2.COLLECTION),
        ("landsat_c2l2", plan_landsat, landsat.write_landsat, landsat.COLLECTION),
    ):
        items = []
        for grid in grids:
            skies: list[np.ndarray] = []
            for scene in (s for s in plan(grids, starts) if s.grid == grid):
                item, sky = writer(scene, ctx)
                items.append(item)
                scene_truth.append(_scene_record(scene, len(skies), item))
                skies.append(sky)
            np.save(truth_dir / f"sky_{modality}_{grid.epsg}.npy", np.stack(skies))
        collections[info.id] = (info, items)
    s1_items = []
    for scene in plan_sentinel1(grids, starts):
        s1_items.append(sentinel1.write_sentinel1(scene, ctx))
        scene_truth.append(_scene_record(scene, -1, s1_items[-1]))
    collections[sentinel1.COLLECTION.id] = (sentinel1.COLLECTION, s1_items)
    wc_items = [worldcover.write_worldcover(g, ctx) for g in grids]
    collections[worldcover.COLLECTION.id] = (worldcover.COLLECTION, wc_items)
    for grid in grids:
        np.save(truth_dir / f"blocks_{grid.epsg}.npy", ctx.classes[grid.epsg])
        np.save(truth_dir / f"signal_{grid.epsg}.npy", ctx.signal[grid.epsg])
        worldcover.write_worldcover_cog(
            truth_dir / f"classes_{grid.epsg}.tif", ctx.classes[grid.epsg], grid
        )

    write_crop_labels(truth_dir, grids, ctx.signal)

    catalog = write_static_catalog(out / "stac", collections)
    ndjson = write_ndjson(out / "ndjson", out / "stac", collections)
    features = build_features(grids, ctx.classes, tiles, seed)
    osm_path = out / "osm" / "world.osm"
    write_osm_xml(osm_path, features)

    write_truth(
        truth_dir,
        {
            "seed": seed,
            "size": preset.name,
            "block_m": 120,
            "period_starts": [d.isoformat() for d in starts[:-1]],
            "period_end": starts[-1].isoformat(),
            "zones": [asdict(g) for g in grids],
            "tiles": [t.id for t in tiles],
            "crop_types": [asdict(t) for t in CROP_TYPES],
            "scenes": scene_truth,
            "sentinel2_l2a": _table_doc(ctx.s2_table, S2_BANDS, "reflectance x 10000 (uint16)"),
            "landsat_c2l2": _table_doc(ctx.landsat_table, LANDSAT_BANDS, "C2 L2 DN (uint16)"),
            "sentinel1": {
                "bands": list(S1_BANDS),
                "units": "gamma0 mean linear power and its dB; pixels carry gamma speckle",
                "mean_linear": {str(k): v.astype(float).tolist() for k, v in ctx.s1_linear.items()},
                "mean_db": {
                    str(k): np.round(10 * np.log10(v.astype(float)), 6).tolist()
                    for k, v in ctx.s1_linear.items()
                },
            },
            "items_by_tile": _items_by_tile(tiles, collections, scene_truth, len(starts) - 1),
            "all_cloud": [
                {
                    "modality": "sentinel2_l2a",
                    "period": ALL_CLOUD_PERIOD,
                    "epsgs": [g.epsg for g in grids],
                    "tiles": [t.id for t in tiles],
                    "reason": "every Sentinel-2 scene of this period is 100 % cloud (SCL 9)",
                }
            ]
            if preset.periods > ALL_CLOUD_PERIOD
            else [],
            "osm": {
                "file": "../osm/world.osm",
                "features": [
                    {
                        "osm_type": f.osm_type,
                        "osm_id": f.osm_id,
                        "category": f.category,
                        "tags": [list(t) for t in f.tags],
                        "coords": [list(c) for c in f.coords],
                        "kind": str(f.kind),
                    }
                    for f in features
                ],
            },
        },
    )
    build_yaml = _write_build_yaml(out, preset)
    return WorldManifest(
        root=out,
        catalog=catalog,
        ndjson=ndjson,
        osm=osm_path,
        truth_dir=truth_dir,
        build_yaml=build_yaml,
        seed=seed,
        size=preset.name,
        epsgs=tuple(g.epsg for g in grids),
        tile_ids=tuple(t.id for t in tiles),
        period_starts=tuple(d.isoformat() for d in starts[:-1]),
        item_ids={cid: tuple(i["id"] for i in items) for cid, (_, items) in collections.items()},
    )


def _scene_record(scene: Scene, sky_index: int, item: dict[str, Any]) -> dict[str, Any]:
    baseline = item["properties"].get("s2:processing_baseline")
    offset = S2_BOA_ADD_OFFSET_DN if baseline and s2_offset_applies(baseline) else 0
    return {
        "item_id": scene.item_id,
        "modality": scene.modality,
        "epsg": scene.grid.epsg,
        "datetime": item["properties"]["datetime"],
        "period": scene.period,
        "sky_index": sky_index,
        "offset_dn": offset,
    }


def _table_doc(table: dict[int, np.ndarray], bands: tuple[str, ...], units: str) -> dict[str, Any]:
    return {
        "bands": list(bands),
        "units": units,
        "values": {str(k): v.tolist() for k, v in table.items()},
    }


def _items_by_tile(
    tiles: list[Tile],
    collections: dict[str, tuple[CollectionInfo, list[dict[str, Any]]]],
    scenes: list[dict[str, Any]],
    periods: int,
) -> dict[str, dict[str, list[list[str]]]]:
    """Which item ids intersect each planned tile, per modality and period (worldcover: all periods)."""
    period_of = {s["item_id"]: s["period"] for s in scenes}
    result: dict[str, dict[str, list[list[str]]]] = {}
    for tile in tiles:
        footprint = tile.footprint_lonlat()
        per_modality: dict[str, list[list[str]]] = {}
        for modality, collection_id in MODALITY_COLLECTIONS.items():
            buckets: list[list[str]] = [[] for _ in range(periods)]
            for item in collections[collection_id][1]:
                if not shapely.geometry.shape(item["geometry"]).intersects(footprint):
                    continue
                if item["id"] in period_of:
                    buckets[period_of[item["id"]]].append(item["id"])
                else:
                    for bucket in buckets:
                        bucket.append(item["id"])
            per_modality[modality] = buckets
        result[tile.id] = per_modality
    return result


def _write_build_yaml(out: Path, preset: WorldSize) -> Path:
    document = {
        "name": f"synthetic-world-{preset.name}",
        "aoi": {"bbox": list(preset.aoi_bbox)},
        "sampling": {"mode": "cover"},
        "time": {"start": preset.start.isoformat(), "periods": preset.periods, "period": "month"},
        "modalities": {
            modality: {"source": "static", "catalog": "stac/catalog.json", "collection": collection}
            for modality, collection in MODALITY_COLLECTIONS.items()
        }
        | {"openstreetmap": {"source": "osm_file", "path": "osm/world.osm"}},
        "output": {"store": "corpus.zarr", "samples_per_shard": preset.samples_per_shard},
    }
    path = out / "build.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None))
    return path
