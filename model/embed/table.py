"""The tile table: pooled per-tile embeddings as GeoParquet 1.1 (geopandas reads it).

One row per embedded sample: `tile_id`, `sample`, `geometry` (the tile in lon/lat, WKB,
OGC:CRS84: GeoParquet's one-CRS-per-column rule admits no per-row UTM zone),
`geometry_tile_crs` (the same tile in its own UTM CRS, WKB) with `epsg`, `center_lon` /
`center_lat`, `start_datetime` / `end_datetime` ([start of the first, end of the last)
encoded period that had any input; the end is exclusive),
`tokens` (encoded tokens pooled) and `embedding` (fixed-size list of float32). The footer
holds the GeoParquet `geo` metadata and the run's provenance (`terracube:embeddings`).

Each shard task writes its rows as one part file (temp name, then rename); when every
shard is done the parts are streamed, in shard order, into `tiles.parquet` (row group by
row group: memory is one part whatever the corpus size).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.timescheme import add_months

TABLE_NAME = "tiles.parquet"
PARTS_DIR = "tiles.parts"
EDGE_POINTS = 8
"""Vertices per tile edge in lon/lat: a UTM square is not a lon/lat rectangle."""


def part_path(out: Path, shard: int) -> Path:
    return out / PARTS_DIR / f"part-{shard:07d}.parquet"


def _tile_polygons(epsg: int, x0: np.ndarray, y0: np.ndarray) -> tuple[Any, Any]:
    """(tile-CRS squares, their lon/lat polygons) of tiles with upper-left (x0, y0)."""
    s = TILE_SIZE_M
    t = np.linspace(0.0, 1.0, EDGE_POINTS, endpoint=False)
    # counter-clockwise (GeoParquet's orientation): down the west edge, east along the
    # south edge, up the east edge, west along the north edge
    ring_x = np.concatenate([np.zeros_like(t), t * s, np.full_like(t, s), s - t * s])
    ring_y = np.concatenate([-t * s, np.full_like(t, -s), -s + t * s, np.zeros_like(t)])
    xs, ys = x0[:, None] + ring_x, y0[:, None] + ring_y
    square = shapely.box(x0, y0 - s, x0 + s, y0)
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    lon, lat = to_lonlat.transform(xs, ys)
    rings = np.stack([lon, lat], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)
    return square, shapely.polygons(rings)


def geo_metadata(bbox: list[float] | None) -> dict[str, Any]:
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": CRS.from_user_input("OGC:CRS84").to_json_dict(),
        "edges": "planar",
        "orientation": "counterclockwise",
    }
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def schema(dim: int, prov: dict[str, Any]) -> pa.Schema:
    fields = [
        pa.field("tile_id", pa.string()),
        pa.field("sample", pa.int64()),
        pa.field("geometry", pa.binary()),
        pa.field("geometry_tile_crs", pa.binary()),
        pa.field("epsg", pa.int32()),
        pa.field("center_lon", pa.float64()),
        pa.field("center_lat", pa.float64()),
        pa.field("start_datetime", pa.date32()),
        pa.field("end_datetime", pa.date32()),
        pa.field("tokens", pa.int64()),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
    ]
    meta = {
        b"geo": json.dumps(geo_metadata(None)).encode(),
        b"terracube:embeddings": json.dumps(prov).encode(),
    }
    return pa.schema(fields, metadata=meta)


def period_end(start_days: np.ndarray, period: str) -> np.ndarray:
    """Exclusive end (days since epoch) of periods starting at `start_days`: `P1M` (calendar
    month, the day clamped) or `P<n>D`."""
    days = re.fullmatch(r"P(\d+)D", period)
    if days:
        return start_days + int(days.group(1))
    if period != "P1M":
        raise ValueError(f"period {period!r}: expected P1M or P<n>D")
    starts = [date(1970, 1, 1) + timedelta(days=int(d)) for d in start_days.ravel()]
    ends = [(add_months(d, 1) - date(1970, 1, 1)).days for d in starts]
    return np.asarray(ends, dtype=np.int64).reshape(start_days.shape)


def shard_table(
    samples: np.ndarray,
    index: dict[str, np.ndarray],
    pooled: np.ndarray,
    tokens: np.ndarray,
    periods_present: np.ndarray,
    period: str,
    prov: dict[str, Any],
) -> pa.Table:
    """Rows of the embedded samples of one shard; `periods_present` (rows, T) says which
    encoded periods had any input, and sets the row's [start_datetime, end_datetime)."""
    epsg = index["epsg"].astype(np.int64)
    square = np.empty(len(samples), dtype=object)
    lonlat = np.empty(len(samples), dtype=object)
    for code in np.unique(epsg):
        rows = np.flatnonzero(epsg == code)
        sq, ll = _tile_polygons(int(code), index["x0"][rows], index["y0"][rows])
        square[rows], lonlat[rows] = sq, ll
    days = index["period_start"].astype(np.int64)
    rows = np.arange(len(samples))
    if len(samples) and not periods_present.any(axis=1).all():
        raise ValueError("a table row needs at least one period with input")
    first_period = periods_present.argmax(axis=1)
    last_period = periods_present.shape[1] - 1 - periods_present[:, ::-1].argmax(axis=1)
    first = days[rows, first_period]
    last = period_end(days[rows, last_period], period)
    columns = {
        "tile_id": pa.array([str(v) for v in index["tile_id"]], pa.string()),
        "sample": pa.array(samples.astype(np.int64)),
        "geometry": pa.array(shapely.to_wkb(lonlat), pa.binary()),
        "geometry_tile_crs": pa.array(shapely.to_wkb(square), pa.binary()),
        "epsg": pa.array(epsg.astype(np.int32)),
        "center_lon": pa.array(index["center_lon"].astype(np.float64)),
        "center_lat": pa.array(index["center_lat"].astype(np.float64)),
        "start_datetime": pa.array(first.astype(np.int32), pa.date32()),
        "end_datetime": pa.array(last.astype(np.int32), pa.date32()),
        "tokens": pa.array(tokens.astype(np.int64)),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(pooled.astype(np.float32).ravel()), pooled.shape[1]
        ),
    }
    return pa.table(columns, schema=schema(pooled.shape[1], prov))


def _atomic_write(table: pa.Table, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_part(out: Path, shard: int, table: pa.Table) -> None:
    _atomic_write(table, part_path(out, shard))


def has_part(out: Path, shard: int) -> bool:
    return part_path(out, shard).is_file()


def consolidate(out: Path, n_shards: int, dim: int, prov: dict[str, Any]) -> Path:
    """Stream every part, in shard order, into tiles.parquet (with the overall bbox)."""
    target = out / TABLE_NAME
    bounds = [np.inf, np.inf, -np.inf, -np.inf]
    for shard in range(n_shards):
        part = pq.read_table(part_path(out, shard), columns=["geometry"])
        if part.num_rows:
            b = shapely.total_bounds(shapely.from_wkb(part.column("geometry").to_numpy()))
            low, high = np.minimum(bounds[:2], b[:2]), np.maximum(bounds[2:], b[2:])
            bounds = [*low, *high]
    final = schema(dim, prov)
    if np.isfinite(bounds).all():
        meta = dict(final.metadata)
        meta[b"geo"] = json.dumps(geo_metadata([float(v) for v in bounds])).encode()
        final = final.with_metadata(meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{TABLE_NAME}.", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, final, compression="zstd") as writer:
            for shard in range(n_shards):
                part = pq.read_table(part_path(out, shard))
                if part.num_rows:
                    writer.write_table(part.cast(final))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
