"""The embedding store: a Zarr v3 group of per-patch embedding maps on the corpus' tile grid.

Layout (dims in brackets; every per-sample array is sharded like the corpus, so a shard
task's write owns whole zarr shards and never races another task):

- `embedding` [sample, y, x, dim] float32, NaN where no token was encoded; one chunk per
  sample. Patch (y, x) covers corpus pixels [y*p, (y+1)*p) of the tile, so its cell is
  `patch_size * 10` m and the map's affine is the corpus' with that pixel size.
- `tokens` [sample, y, x] uint16: tokens encoded into each patch (groups x timesteps).
- `input_present` [sample, group, time] bool: the group had valid pixels at that period.
- `tile_id`, `epsg`, `x0`, `y0`, `center_lon`, `center_lat` [sample] and `period_start`
  [sample, time]: copied from the corpus, so the store georeferences itself.
- `state` [sample] uint8: 0 pending, 1 done, 2 empty (nothing to encode), 3 partial
  (embedded while inputs were still pending). Written last in a shard's write: a shard
  is finished exactly when its states are not pending.

Georeferencing follows the corpus: the CRS is per sample (`epsg`), the transform a
template over `x0`/`y0`, and `embedding_sample` gives one sample as a DataArray with a CF
grid mapping and `proj:code` / `spatial:transform` (rioxarray reads it back). Root
attributes hold the provenance (`terracube:embeddings`) and the fields of the
geo-embeddings Zarr proposal (`geoemb:*`, docs/embeddings.md says how far they apply).
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, cast

import numpy as np
import xarray as xr
import zarr
from affine import Affine
from terracube.model.data.plan import TILE_PIXELS
from terracube.model.embed.spec import EMBED_FORMAT_VERSION, EmbedError, Resolved, identity
from terracube.pipeline.corpus.geo import _crs_attrs
from terracube.pipeline.corpus.schema import (
    PERIOD_START_ATTRS,
    PROJ_CONVENTION,
    SPATIAL_CONVENTION,
)
from terracube.pipeline.corpus.store import Corpus, complete_chunks
from zarr.codecs import BytesCodec, ZstdCodec

STORE_NAME = "embeddings.zarr"
PROVENANCE_ATTR = "terracube:embeddings"


class EmbedState(IntEnum):
    PENDING = 0
    DONE = 1
    EMPTY = 2
    """Nothing to encode: every input modality empty or failed, or no valid pixel."""
    PARTIAL = 3
    """Embedded while some input modality was still pending in the corpus (--allow-pending):
    a later run recomputes it once the build has finished those inputs."""


@dataclass(frozen=True)
class ShardRows:
    """Everything one shard writes, one row per sample of the shard."""

    maps: np.ndarray
    tokens: np.ndarray
    present: np.ndarray
    state: np.ndarray
    index: dict[str, np.ndarray]
    """tile_id, epsg, x0, y0, center_lon, center_lat, period_start of the shard."""


INDEX_ARRAYS = ("tile_id", "epsg", "x0", "y0", "center_lon", "center_lat")


def _array(
    group: zarr.Group,
    name: str,
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    dtype: Any,
    fill: Any,
    shards: tuple[int, ...],
    chunks: tuple[int, ...],
    attrs: dict[str, Any] | None = None,
) -> None:
    string = dtype is str
    group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        fill_value=fill,
        dimension_names=dims,
        attributes=attrs or {},
        serializer="auto" if string else BytesCodec(),
        compressors=(ZstdCodec(level=3, checksum=True),),
    )


def create_store(root: Path, corpus: Corpus, resolved: Resolved, prov: dict[str, Any]) -> None:
    """Create the empty store (every sample pending)."""
    n, k = corpus.n_samples, corpus.params.samples_per_shard
    p, d = resolved.patch_size, resolved.dim
    side = TILE_PIXELS // p
    t = resolved.periods[1] - resolved.periods[0]
    g = len(resolved.groups)
    gsd = 10.0 * p
    attrs: dict[str, Any] = {
        PROVENANCE_ATTR: prov,
        "geoemb:type": "pixel",
        "geoemb:dimensions": d,
        "geoemb:data_type": "float32",
        "geoemb:gsd": gsd,
        "geoemb:model": {
            "name": f"terracube LatentMIM {resolved.model.size}",
            "checkpoint_sha256": prov["checkpoint"]["sha256"],
            "step": prov["checkpoint"]["step"],
        },
        "geoemb:source_data": {"corpus": corpus.url, "groups": list(resolved.groups)},
        "geoemb:spatial_layout": "per-sample UTM: epsg, x0, y0 arrays along `sample`",
    }
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w-", zarr_format=3)
    group.attrs.update(attrs)
    map_attrs = {
        "long_name": "per-patch embedding: mean of the patch's encoded tokens",
        "zarr_conventions": [SPATIAL_CONVENTION, PROJ_CONVENTION],
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [side, side],
        "spatial:transform_type": "affine",
        "spatial:registration": "pixel",
        "terracube:transform_template": [gsd, 0.0, "x0[sample]", 0.0, -gsd, "y0[sample]"],
        "terracube:crs": "EPSG:{epsg[sample]}",
    }
    _array(
        group,
        "embedding",
        ("sample", "y", "x", "dim"),
        (n, side, side, d),
        "float32",
        float("nan"),
        (k, side, side, d),
        (1, side, side, d),
        map_attrs,
    )
    _array(
        group,
        "tokens",
        ("sample", "y", "x"),
        (n, side, side),
        "uint16",
        0,
        (k, side, side),
        (1, side, side),
        {"long_name": "tokens encoded into the patch (band groups x timesteps)"},
    )
    _array(
        group,
        "input_present",
        ("sample", "group", "time"),
        (n, g, t),
        "bool",
        False,
        (k, g, t),
        (k, g, t),
        {"long_name": "the input group had valid pixels at that period"},
    )
    _array(group, "group", ("group",), (g,), str, "", (g,), (g,))
    cast(zarr.Array, group["group"])[:] = np.array(resolved.groups, dtype=object)
    for name, dtype, fill in (
        ("tile_id", str, ""),
        ("epsg", "int32", 0),
        ("x0", "float64", float("nan")),
        ("y0", "float64", float("nan")),
        ("center_lon", "float64", float("nan")),
        ("center_lat", "float64", float("nan")),
    ):
        _array(group, name, ("sample",), (n,), dtype, fill, (k,), (k,))
    _array(
        group,
        "period_start",
        ("sample", "time"),
        (n, t),
        "int32",
        PERIOD_START_ATTRS["missing_value"],
        (k, t),
        (k, t),
        dict(PERIOD_START_ATTRS),
    )
    states = {s.name.lower(): int(s) for s in EmbedState}
    _array(
        group,
        "state",
        ("sample",),
        (n,),
        "uint8",
        0,
        (k,),
        (k,),
        {"flag_values": list(states.values()), "flag_meanings": " ".join(states)},
    )
    with warnings.catch_warnings():  # zarr: "not part of the v3 spec" (xarray reads it)
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(group.store)  # metadata never changes after creation


def open_embeddings(root: Path, writable: bool = False) -> zarr.Group:
    """Open an embedding store, checking that it is one (and of this format)."""
    try:
        group = zarr.open_group(
            zarr.storage.LocalStore(root, read_only=not writable),
            mode="r+" if writable else "r",
            zarr_format=3,
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise EmbedError(f"no embedding store at {root}; run `terracube embed` first") from None
    prov = group.attrs.get(PROVENANCE_ATTR)
    if not isinstance(prov, dict):
        raise EmbedError(f"{root} is a zarr group but not a terracube embedding store")
    if prov.get("format_version") != EMBED_FORMAT_VERSION:
        raise EmbedError(
            f"{root} has embedding format {prov.get('format_version')!r}; this terracube "
            f"writes {EMBED_FORMAT_VERSION}: choose another --out"
        )
    return group


def store_provenance(group: zarr.Group) -> dict[str, Any]:
    return cast(dict[str, Any], group.attrs[PROVENANCE_ATTR])


def open_or_create(
    root: Path, corpus: Corpus, resolved: Resolved, prov: dict[str, Any], create: bool = True
) -> zarr.Group:
    """The store at `root`, reopened when it was made by the same request, else created
    (`create`). Creation happens under a temporary name renamed into place, so a crash
    leaves no half-made store and of two processes creating at once one wins."""
    if not root.exists():
        if not create:
            raise EmbedError(
                f"no embedding store at {root} on this machine: the output folder must be on "
                "a filesystem every Dask worker sees (a shared mount), not a local disk"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.with_name(f".{root.name}.{uuid.uuid4().hex}.tmp")
        try:
            create_store(staging, corpus, resolved, prov)
            os.rename(staging, root)
        except OSError:
            if not root.exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not (root / "zarr.json").is_file():
        raise EmbedError(
            f"{root} exists but is not an embedding store (no zarr.json: empty, or another "
            "kind of folder): delete it or choose another --out"
        )
    group = open_embeddings(root, writable=True)
    old = store_provenance(group)
    if identity(old) != identity(prov):
        diff = sorted(k for k in identity(prov) if identity(old).get(k) != identity(prov)[k])
        raise EmbedError(
            f"{root} holds embeddings made differently ({', '.join(diff)} differ): resume "
            "only with the same checkpoint, corpus and options, or choose another --out"
        )
    return group


def write_shard(group: zarr.Group, span: range, rows: ShardRows) -> None:
    """Write one shard of every array; the states last (they mark the shard finished)."""
    sel = slice(span.start, span.stop)
    with complete_chunks():
        arrays = {name: cast(zarr.Array, group[name]) for name in group.array_keys()}
        arrays["embedding"][sel] = rows.maps
        arrays["tokens"][sel] = rows.tokens
        arrays["input_present"][sel] = rows.present
        for name in (*INDEX_ARRAYS, "period_start"):
            arrays[name][sel] = rows.index[name]
        arrays["state"][sel] = rows.state


def states(group: zarr.Group) -> np.ndarray:
    return np.asarray(cast(zarr.Array, group["state"])[:])


def embedding_sample(root: Path | str, index: int) -> xr.DataArray:
    """Sample `index`'s embedding map as a georeferenced (y, x, dim) DataArray: pixel-centre
    coordinates in metres, CF grid mapping `spatial_ref` (crs_wkt + GeoTransform),
    `proj:code` and `spatial:transform`, so `.rio.crs` / `.rio.transform()` work."""
    ds = xr.open_zarr(root)
    if not 0 <= index < ds.sizes["sample"]:
        raise IndexError(f"sample {index} is outside this store (0..{ds.sizes['sample'] - 1})")
    one = ds.isel(sample=index)
    epsg = int(one["epsg"].values)
    x0, y0 = float(one["x0"].values), float(one["y0"].values)
    if int(one["state"].values) == EmbedState.PENDING or epsg == 0:
        raise EmbedError(f"sample {index} of {root} is not embedded yet; run embed again")
    gsd = float(ds.attrs[PROVENANCE_ATTR]["gsd_m"])
    side = one.sizes["y"]
    centres = (np.arange(side) + 0.5) * gsd
    transform = Affine(gsd, 0.0, x0, 0.0, -gsd, y0)
    grid = xr.Variable(
        (),
        0,
        {**_crs_attrs(epsg), "GeoTransform": " ".join(str(v) for v in transform.to_gdal())},
    )
    out = one["embedding"].assign_coords(
        x=("x", x0 + centres, {"axis": "X", "standard_name": "projection_x_coordinate"}),
        y=("y", y0 - centres, {"axis": "Y", "standard_name": "projection_y_coordinate"}),
        spatial_ref=grid,
    )
    return out.assign_attrs(
        grid_mapping="spatial_ref",
        **{"proj:code": f"EPSG:{epsg}", "spatial:transform": list(transform)[:6]},
        tile_id=str(one["tile_id"].values),
    )
