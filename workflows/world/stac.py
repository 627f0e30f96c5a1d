"""STAC documents: item/asset dicts, the static catalog and the NDJSON for a STAC API.

The static catalog uses relative hrefs (as saved self-contained catalogs do);
the NDJSON copies carry absolute file paths so pypgstac can load them, and
`rewrite_hrefs` maps those paths onto an HTTP server serving the same files.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer

EXT_PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EXT_RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EXT_EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
EXT_SAR = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
EXT_SAT = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
EXT_VIEW = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
EXT_LANDSAT = "https://landsat.usgs.gov/stac/landsat-extension/v1.1.1/schema.json"
EXT_CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.0.0/schema.json"
EXT_MGRS = "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_VERSION = "1.0.0"


@dataclass(frozen=True)
class RasterSpec:
    """What a COG asset's STAC entry must state about the file."""

    shape: tuple[int, int]
    transform: tuple[float, float, float, float, float, float]
    data_type: str
    nodata: float
    resolution: float
    scale: float | None = None
    offset: float | None = None
    unit: str | None = None


def raster_asset(
    href: str, title: str, roles: list[str], spec: RasterSpec, **extra: Any
) -> dict[str, Any]:
    band: dict[str, Any] = {
        "nodata": spec.nodata,
        "data_type": spec.data_type,
        "spatial_resolution": spec.resolution,
    }
    if spec.scale is not None:
        band["scale"] = spec.scale
    if spec.offset is not None:
        band["offset"] = spec.offset
    if spec.unit:
        band["unit"] = spec.unit
    return {
        "href": href,
        "type": COG_TYPE,
        "title": title,
        "roles": roles,
        **extra,
        "proj:shape": list(spec.shape),
        "proj:transform": list(spec.transform),
        "raster:bands": [band],
    }


def footprint_lonlat(epsg: int, polygon: shapely.Polygon, step_m: float = 500.0) -> shapely.Polygon:
    """A projected footprint as a lon/lat polygon, densified so its edges stay true."""
    dense = shapely.segmentize(polygon, step_m)
    transformer = Transformer.from_crs(epsg, 4326, always_xy=True)
    coords = np.asarray(dense.exterior.coords)
    lon, lat = transformer.transform(coords[:, 0], coords[:, 1])
    return shapely.Polygon(np.column_stack([np.round(lon, 7), np.round(lat, 7)]))


def item_dict(
    item_id: str,
    collection: str,
    epsg: int,
    footprint: shapely.Polygon,
    projected_bounds: tuple[float, float, float, float],
    properties: dict[str, Any],
    assets: dict[str, dict[str, Any]],
    extensions: Iterable[str],
) -> dict[str, Any]:
    """A STAC item with geometry/bbox in lon/lat and both proj:code and proj:epsg."""
    geometry = shapely.geometry.mapping(shapely.orient_polygons(footprint))
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted({EXT_PROJ, EXT_RASTER, *extensions}),
        "id": item_id,
        "collection": collection,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[list(c) for c in geometry["coordinates"][0]]],
        },
        "bbox": [round(v, 7) for v in footprint.bounds],
        "properties": {
            **properties,
            "proj:code": f"EPSG:{epsg}",
            "proj:epsg": epsg,
            "proj:bbox": [float(v) for v in projected_bounds],
        },
        "assets": assets,
        "links": [],
    }


@dataclass(frozen=True)
class CollectionInfo:
    id: str
    title: str
    description: str
    license: str
    providers: tuple[str, ...]


def collection_dict(
    info: CollectionInfo, items: list[dict[str, Any]], links: list[dict[str, str]]
) -> dict[str, Any]:
    """A collection whose extent is computed from its items."""
    bboxes = np.array([item["bbox"] for item in items])
    times = sorted(
        t
        for item in items
        for t in (
            item["properties"].get("start_datetime") or item["properties"]["datetime"],
            item["properties"].get("end_datetime") or item["properties"]["datetime"],
        )
    )
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": info.id,
        "title": info.title,
        "description": info.description,
        "license": info.license,
        "providers": [{"name": p, "roles": ["producer"]} for p in info.providers],
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        float(bboxes[:, 0].min()),
                        float(bboxes[:, 1].min()),
                        float(bboxes[:, 2].max()),
                        float(bboxes[:, 3].max()),
                    ]
                ]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": links,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def write_static_catalog(
    stac_dir: Path,
    collections: dict[str, tuple[CollectionInfo, list[dict[str, Any]]]],
) -> Path:
    """catalog.json -> <collection>/collection.json -> <collection>/<item>/<item>.json.

    Asset hrefs in the item dicts are relative to the item's folder (assets lie beside it).
    """
    catalog_links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    for collection_id, (info, items) in collections.items():
        catalog_links.append(
            {
                "rel": "child",
                "href": f"./{collection_id}/collection.json",
                "type": "application/json",
                "title": info.title,
            }
        )
        item_links = [
            {
                "rel": "item",
                "href": f"./{item['id']}/{item['id']}.json",
                "type": "application/geo+json",
            }
            for item in items
        ]
        up = [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        ]
        write_json(
            stac_dir / collection_id / "collection.json",
            collection_dict(info, items, up + item_links),
        )
        for item in items:
            document = copy.deepcopy(item)
            document["links"] = [
                {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            ]
            write_json(stac_dir / collection_id / item["id"] / f"{item['id']}.json", document)
    catalog = {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": "terracube-synthetic-world",
        "title": "terracube synthetic world",
        "description": "Synthetic Sentinel-2, Sentinel-1, Landsat and WorldCover scenes whose exact answer is known (terracube.workflows.world).",
        "links": catalog_links,
    }
    path = stac_dir / "catalog.json"
    write_json(path, catalog)
    return path


def write_ndjson(
    ndjson_dir: Path,
    stac_dir: Path,
    collections: dict[str, tuple[CollectionInfo, list[dict[str, Any]]]],
) -> dict[str, Path]:
    """One NDJSON per collection (items with absolute asset paths) plus collections.ndjson."""
    ndjson_dir.mkdir(parents=True, exist_ok=True)
    root = stac_dir.resolve()
    paths: dict[str, Path] = {}
    lines = []
    for collection_id, (info, items) in collections.items():
        lines.append(json.dumps(collection_dict(info, items, []), separators=(",", ":")))
        path = ndjson_dir / f"{collection_id}.ndjson"
        with path.open("w") as out:
            for item in items:
                document = copy.deepcopy(item)
                for asset in document["assets"].values():
                    asset["href"] = str(
                        root / collection_id / item["id"] / asset["href"].removeprefix("./")
                    )
                out.write(json.dumps(document, separators=(",", ":")) + "\n")
        paths[collection_id] = path
    collections_path = ndjson_dir / "collections.ndjson"
    collections_path.write_text("\n".join(lines) + "\n")
    paths["collections"] = collections_path
    return paths


def rewrite_hrefs(item_dict: dict[str, Any], root: Path, base_url: str) -> dict[str, Any]:
    """Copy of an NDJSON item whose asset paths under `root` become URLs under `base_url`.

    Use it to serve the same COGs over HTTP: `root` is the folder the server
    serves (e.g. the world's `stac/` directory or the world root).
    """
    root = Path(root).resolve()
    rewritten = copy.deepcopy(item_dict)
    for key, asset in rewritten.get("assets", {}).items():
        href = Path(asset["href"])
        if not href.is_absolute():
            raise ValueError(
                f"asset {key!r} of item {item_dict.get('id')!r} has relative href {asset['href']!r}; "
                "rewrite_hrefs needs the NDJSON items (absolute paths), not the static catalog's"
            )
        try:
            relative = href.resolve().relative_to(root)
        except ValueError:
            raise ValueError(
                f"asset {key!r} of item {item_dict.get('id')!r} at {href} is not under root {root}; "
                "pass the folder the HTTP server serves"
            ) from None
        asset["href"] = f"{base_url.rstrip('/')}/{relative.as_posix()}"
    return rewritten
