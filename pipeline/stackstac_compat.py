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
- pandas must be < 3 (pinned in pyproject.toml).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import stackstac
from rasterio.enums import Resampling
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import DEFAULT_GDAL_ENV
from terracube.catalog.grid import Tile
from terracube.catalog.normalize import AssetRef, NormalizedItem

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


def stack_tile(
    items: Sequence[NormalizedItem],
    bands: Sequence[str],
    tile: Tile,
    resolution: float,
    dtype: str,
    fill_value: float,
    resampling: Resampling = Resampling.nearest,
    scheduler: str = "threads",
    env: LayeredEnv | None = None,
) -> np.ndarray:
    """(items, bands, rows, cols) of `bands` of every item on the tile grid at `resolution`.

    Computed inside the caller with a local scheduler: the outer Dask cluster
    schedules whole tiles, and nesting a distributed compute here would deadlock it.
    """
    rows, cols = tile.shape(resolution)
    if not items:
        return np.full((0, len(bands), rows, cols), fill_value, dtype=dtype)
    dicts = [stackstac_item(item, bands) for item in items]
    present = {key for d in dicts for key in d["assets"]}
    # stackstac refuses asset ids no item has; those bands come back as fill.
    asked = [b for b in bands if b in present]
    out = np.full((len(items), len(bands), rows, cols), fill_value, dtype=dtype)
    if not asked:
        return out
    arr = stackstac.stack(
        dicts,
        assets=asked,
        epsg=tile.epsg,
        resolution=float(resolution),
        bounds=tile.bounds,
        snap_bounds=False,
        resampling=resampling,
        chunksize=max(rows, cols),
        dtype=np.dtype(dtype),
        fill_value=numpy_fill(fill_value, dtype),
        rescale=False,
        sortby_date=False,
        xy_coords="topleft",
        properties=False,
        band_coords=False,
        gdal_env=env or gdal_env(),
        errors_as_nodata=(),
    )
    if arr.shape[-2:] != (rows, cols):
        raise RuntimeError(
            f"stackstac returned a {arr.shape[-2:]} grid for tile {tile.id} at {resolution} m, "
            f"expected {(rows, cols)}; the tile bounds {tile.bounds} must be multiples of it"
        )
    values = arr.data.compute(scheduler=scheduler)
    index = [list(bands).index(b) for b in asked]
    out[:, index] = values
    return out
