"""Every stackstac 0.5.1 workaround in one place.

stackstac is the reader DESIGN.md names, but 0.5.1 has traps that silently give
wrong pixels or crash, so nothing else in the pipeline talks to it directly:

- it reads only `proj:epsg` (pystac 1.15 rewrites that to `proj:code`), so the
  dicts we hand it carry `proj:epsg` (and `proj:transform` / `proj:shape`) on
  every asset, taken from the NormalizedItem;
- it cannot open relative hrefs (it does not know the item's location): every
  href is made absolute (local paths with os.path.abspath);
- `fill_value` must be a numpy scalar of the output dtype, or the masked fill
  upcasts or fails;
- its default `errors_as_nodata` turns an HTTP 404 into silent nodata; we pass
  `()` so a missing asset fails the modality with a reason instead;
- `rescale=True` applies raster:bands scale/offset, but the catalog's Conversion
  decides radiometry, so rescaling is off;
- its reader wraps every asset in a WarpedVRT unless the asset's whole grid equals
  the output grid, which a tile window of a larger scene never does, and enters a
  GDAL environment per open and per read; together that cost more than the reads.
  The default reader (`reader.PasteOrWarpReader`) therefore sends every asset on the
  tile's grid lattice to `direct.py` (same pixels, proven against this warp)
  and only the rest here, as `TileStack.only` subsets. `NestedGridReader`
  (passed as stackstac's `reader=`) still reads an asset lying on the output grid
  with a plain shifted window instead of a VRT (nearest on an identical grid is
  a copy);
- one asset per chunk (its default) makes a dask task pair per asset and a graph
  optimisation per compute that cost more than the reads of a tile; the tile is
  one chunk here, and all arrays of a modality are computed in one call;
- pandas must be < 3 (pinned in pyproject.toml).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import dask
import numpy as np
import rasterio
import stackstac
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from stackstac.nodata_reader import NodataReader, exception_matches
from stackstac.raster_spec import RasterSpec
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import (
    DEFAULT_GDAL_ENV,
    MULTITHREADED_DRIVER_ALLOWLIST,
    AutoParallelRioReader,
    SelfCleaningDatasetReader,
    SingleThreadedRioDataset,
    ThreadLocalRioDataset,
)
from terracube.catalog.grid import Tile
from terracube.catalog.stac.items import AssetRef, NormalizedItem

GDAL_HTTP_OPTIONS: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no .aux/.msk/.ovr probes per open
    "GDAL_HTTP_MAX_RETRY": 4,  # 429 / 5xx / timeouts are retried by GDAL's curl layer
    "GDAL_HTTP_RETRY_DELAY": 0.5,  # seconds, doubled by GDAL on each retry
    "GDAL_HTTP_TIMEOUT": 30,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
}
"""GDAL configuration for /vsicurl reads; the raw-read floor uses the same set."""


def gdal_env(extra: Mapping[str, Any] | None = None) -> LayeredEnv:
    """stackstac's layered GDAL environment plus our HTTP options."""
    return DEFAULT_GDAL_ENV.updated(always={**GDAL_HTTP_OPTIONS, **(extra or {})})


def gdal_href(href: str) -> str:
    """A path GDAL can open: absolute local paths, http(s) via /vsicurl/ implicitly, s3 via /vsis3/."""
    scheme = urlsplit(href).scheme
    if len(scheme) <= 1:  # a local path (or a Windows drive letter)
        return os.path.abspath(href)
    if scheme == "file":
        return urlsplit(href).path
    if scheme == "s3":
        return "/vsis3/" + href[len("s3://") :]
    return href


def _asset_dict(ref: AssetRef, epsg: int | None) -> dict[str, Any]:
    asset: dict[str, Any] = {"href": gdal_href(ref.href), "type": "image/tiff"}
    if epsg is not None:
        asset["proj:epsg"] = int(epsg)
    if ref.transform is not None and ref.shape is not None:
        asset["proj:transform"] = list(ref.transform)[:6]
        asset["proj:shape"] = list(ref.shape)
    return asset


def stackstac_item(item: NormalizedItem, bands: Sequence[str]) -> dict[str, Any]:
    """The minimal item dict stackstac 0.5.1 reads correctly; asset keys are registry band names.

    Bands the item lacks (optional bands, missing masks) are left out, which stackstac
    fills with `fill_value`.
    """
    refs = {ref.band: ref for ref in item.assets}
    if item.mask is not None:
        refs[item.mask.band] = item.mask
    assets = {band: _asset_dict(refs[band], item.epsg) for band in bands if band in refs}
    props: dict[str, Any] = {"datetime": item.datetime.isoformat()}
    if item.epsg is not None:
        props["proj:epsg"] = int(item.epsg)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item.id,
        "bbox": list(item.geometry.bounds),
        "geometry": None,
        "properties": props,
        "assets": assets,
    }


def numpy_fill(fill_value: float, dtype: str) -> np.generic:
    """The numpy scalar stackstac needs; refuses a fill the dtype cannot hold."""
    kind = np.dtype(dtype)
    if kind.kind in "ui" and (np.isnan(fill_value) or fill_value != int(fill_value)):
        raise ValueError(
            f"fill value {fill_value!r} cannot be stored in {dtype}; use an integer fill"
        )
    return kind.type(fill_value)


@dataclass(frozen=True)
class TileStack:
    """One stackstac array: `bands` of `items` on `tile`'s grid at `resolution`."""

    items: Sequence[NormalizedItem]
    bands: Sequence[str]
    tile: Tile
    resolution: float
    dtype: str
    fill_value: float
    resampling: Resampling = Resampling.nearest
    only: frozenset[tuple[int, int]] | None = None
    """Read only these (item index, band index) assets (the rest stay fill); None = all."""


def stack_tile(
    items: Sequence[NormalizedItem],
    bands: Sequence[str],
    tile: Tile,
    resolution: float,
    dtype: str,
    fill_value: float,
    resampling: Resampling = Resampling.nearest,
    scheduler: str = "synchronous",
    env: LayeredEnv | None = None,
) -> np.ndarray:
    """(items, bands, rows, cols) of `bands` of every item on the tile grid at `resolution`."""
    stack = TileStack(items, bands, tile, resolution, dtype, fill_value, resampling)
    return stack_tiles([stack], scheduler=scheduler, env=env)[0]


def stack_tiles(
    stacks: Sequence[TileStack], scheduler: str = "synchronous", env: LayeredEnv | None = None
) -> list[np.ndarray]:
    """Every stack as (items, bands, rows, cols), computed in ONE local dask call.

    Computed inside the caller with a local scheduler: the outer Dask cluster
    schedules whole tiles, and nesting a distributed compute here would deadlock it.
    "synchronous" is the default because the cluster already runs one tile per
    core; threads here only oversubscribe them.
    """
    env = env or gdal_env()
    outputs: list[np.ndarray] = []
    lazy: list[tuple[int, list[str], Any]] = []
    for n, stack in enumerate(stacks):
        out, asked, arr = _stack_lazy(stack, env)
        outputs.append(out)
        if arr is not None:
            lazy.append((n, asked, arr))
    # optimize_graph=False: the graph is one chunk per stack, nothing to fuse or cull.
    # The outer rasterio.Env makes stackstac's per-open/per-read Envs cheap nested ones
    # (a top-level Env re-runs GDAL/PROJ data discovery, ~0.5 ms each, 3 per asset);
    # rasterio envs are thread-local, so this helps the synchronous scheduler only.
    if not lazy:
        return outputs
    with rasterio.Env():
        values = dask.compute(
            *(arr for _, _, (_, arr) in lazy), scheduler=scheduler, optimize_graph=False
        )
    for (n, asked, (keep, _)), value in zip(lazy, values, strict=True):
        index = [list(stacks[n].bands).index(b) for b in asked]
        if len(index) == len(stacks[n].bands) and len(keep) == len(stacks[n].items):
            outputs[n] = value
        else:
            outputs[n][np.ix_(keep, index)] = value
    return outputs


def _stack_lazy(stack: TileStack, env: LayeredEnv) -> tuple[np.ndarray, list[str], Any]:
    """The output filled with fill_value, the bands stackstac reads, and (the indices of
    the items it reads, its dask array)."""
    tile, resolution, dtype = stack.tile, stack.resolution, stack.dtype
    rows, cols = tile.shape(resolution)
    fill = np.full((len(stack.items), len(stack.bands), rows, cols), stack.fill_value, dtype)
    if not stack.items:
        return fill, [], None
    keep, dicts = _item_dicts(stack)
    present = {key for d in dicts for key in d["assets"]}
    # stackstac refuses asset ids no item has; those bands come back as fill.
    asked = [b for b in stack.bands if b in present]
    if not asked:
        return fill, [], None
    arr = stackstac.stack(
        dicts,
        assets=asked,
        epsg=tile.epsg,
        resolution=float(resolution),
        bounds=tile.bounds,
        snap_bounds=False,
        resampling=stack.resampling,
        chunksize=(-1, -1, rows, cols),  # the whole tile in one task (see module docstring)
        dtype=np.dtype(dtype),
        fill_value=numpy_fill(stack.fill_value, dtype),
        rescale=False,
        sortby_date=False,
        xy_coords="topleft",
        properties=False,
        band_coords=False,
        gdal_env=env,
        errors_as_nodata=(),
        reader=NestedGridReader,
    )
    if arr.shape[-2:] != (rows, cols):
        raise RuntimeError(
            f"stackstac returned a {arr.shape[-2:]} grid for tile {tile.id} at {resolution} m, "
            f"expected {(rows, cols)}; the tile bounds {tile.bounds} must be multiples of it"
        )
    return fill, asked, (keep, arr.data)


def _item_dicts(stack: TileStack) -> tuple[list[int], list[dict[str, Any]]]:
    """Indices of the items stackstac reads and their dicts, restricted to `stack.only`."""
    if stack.only is None:
        return list(range(len(stack.items))), [
            stackstac_item(item, stack.bands) for item in stack.items
        ]
    keep: list[int] = []
    dicts: list[dict[str, Any]] = []
    for i, item in enumerate(stack.items):
        bands = [band for b, band in enumerate(stack.bands) if (i, b) in stack.only]
        if bands:
            keep.append(i)
            dicts.append(stackstac_item(item, bands))
    return keep, dicts


# --------------------------------------------------------------------------- reader


def nested_offset(crs_epsg: int | None, transform: Any, spec: RasterSpec) -> tuple[int, int] | None:
    """(row, col) of the output grid's origin in the asset's pixels when both grids coincide.

    Same CRS, same north-up pixel size and an origin a whole number of pixels away:
    then nearest resampling is a plain copy and no warp is needed. None otherwise.
    """
    out = spec.transform
    if crs_epsg is None or crs_epsg != spec.epsg or transform.b or transform.d:
        return None
    if not (math.isclose(transform.a, out.a) and math.isclose(transform.e, out.e)):
        return None
    col = (out.c - transform.c) / transform.a
    row = (out.f - transform.f) / transform.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


class ShiftedWindowDataset:
    """An opened asset whose grid coincides with the output grid: windows are shifted, not warped.

    Follows stackstac's ThreadsafeRioDataset protocol. Pixels of the window outside
    the asset come back masked (stackstac fills them), as the WarpedVRT would.
    """

    def __init__(self, env: LayeredEnv, ds: Any, offset: tuple[int, int]) -> None:
        self._env = env
        self._ds = ds
        self._row_off, self._col_off = offset
        self.scale_offset = (ds.scales[0], ds.offsets[0])
        self._lock = threading.Lock()  # one GDAL dataset: reads never run concurrently

    def read(self, window: Window, **kwargs: Any) -> np.ma.MaskedArray:
        ds = self._ds
        rows, cols = int(window.height), int(window.width)
        row0 = int(window.row_off) + self._row_off
        col0 = int(window.col_off) + self._col_off
        r0, r1 = max(row0, 0), min(row0 + rows, ds.height)
        c0, c1 = max(col0, 0), min(col0 + cols, ds.width)
        dtype = kwargs.get("out_dtype") or ds.dtypes[0]
        if (r0, r1, c0, c1) == (row0, row0 + rows, col0, col0 + cols):
            with self._lock, self._env.read:
                return ds.read(indexes=[1], window=Window(c0, r0, cols, rows), **kwargs)
        out = np.ma.masked_all((1, rows, cols), dtype=dtype)
        if r1 > r0 and c1 > c0:
            with self._lock, self._env.read:
                part = ds.read(indexes=[1], window=Window(c0, r0, c1 - c0, r1 - r0), **kwargs)
            out[:, r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = part
        return out

    def close(self) -> None:
        with self._lock:
            self._ds.close()


class NestedGridReader(AutoParallelRioReader):
    """stackstac's reader, minus the WarpedVRT for assets already on the output grid.

    Opening mirrors `AutoParallelRioReader._open` of stackstac 0.5.1 (same error
    handling, same VRT parameters for every other asset); reads, masking and
    fill are stackstac's own.
    """

    def _open(self) -> Any:
        with self.gdal_env.open:
            try:
                ds = SelfCleaningDatasetReader(self.url, sharing=False)
            except Exception as e:
                msg = f"Error opening {self.url!r}: {e!r}"
                if exception_matches(e, self.errors_as_nodata):
                    warnings.warn(msg, stacklevel=2)
                    return NodataReader(dtype=self.dtype, fill_value=self.fill_value)
                raise RuntimeError(msg) from e
            if ds.count != 1:
                count = ds.count
                ds.close()
                raise RuntimeError(
                    f"Assets must have exactly 1 band, but file {self.url!r} has {count}; "
                    "give each band its own STAC asset"
                )
            epsg = ds.crs.to_epsg() if ds.crs is not None else None
            offset = nested_offset(epsg, ds.transform, self.spec)
            if offset is not None and self.resampling == Resampling.nearest:
                return ShiftedWindowDataset(self.gdal_env, ds, offset)
            vrt = None
            if self.spec.vrt_params != {
                "crs": epsg,
                "transform": ds.transform,
                "height": ds.height,
                "width": ds.width,
            }:
                with self.gdal_env.open_vrt:
                    vrt = WarpedVRT(
                        ds,
                        sharing=False,
                        resampling=self.resampling,
                        add_alpha=ds.nodata is None,
                        **self.spec.vrt_params,
                    )
        if ds.driver in MULTITHREADED_DRIVER_ALLOWLIST:
            return ThreadLocalRioDataset(self.gdal_env, ds, vrt=vrt)
        return SingleThreadedRioDataset(self.gdal_env, ds, vrt=vrt)
