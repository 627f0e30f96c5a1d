"""Read assets that share the tile's grid lattice straight into the output, without a warp.

stackstac wraps every asset in a WarpedVRT and enters a GDAL environment per open
and per read; for a 12-period tile that overhead cost more than the reads. For an
asset whose grid relates to the tile grid by pure index arithmetic
(`grid_index.plan_direct`: same CRS, north-up, centres decidable exactly) nearest
resampling is a gather, so this path opens the file, reads exactly the window the
raw-read floor reads, and gathers the target pixels in numpy, with one GDAL
environment for the whole batch. Target centres exactly on source pixel edges
are settled by GDAL itself (nearest_probe), once per grid relation.

Values match stackstac's (checked in tests/pipeline/test_grid_index.py): source
nodata or masked pixels and pixels outside the asset become the fill value, no
scale/offset is applied (we call stackstac with rescale=False), and errors name
the file the way stackstac's reader does. The plan is made from the opened file's
own grid (as stackstac's warp is), so assets without proj metadata take this path
too; assets whose metadata or file grid needs a warp (other CRS, rotation, mode
resampling, centres on edges of an irregular grid) are returned to the caller,
which reads them through stackstac.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.windows import Window
from stackstac.rio_env import LayeredEnv
from terracube.catalog.stac.items import AssetRef, NormalizedItem
from terracube.pipeline.read.grid_index import covering_window, plan_direct
from terracube.pipeline.read.nearest_probe import GdalNearestProbe
from terracube.pipeline.read.stackstac_adapter import TileStack, gdal_href

Leftover = tuple[int, int]
"""(item index, band index) of an asset the direct path did not read."""


def asset_ref(item: NormalizedItem, band: str) -> AssetRef | None:
    """The item's asset (or mask) for a registry band name; None when the product lacks it."""
    if item.mask is not None and item.mask.band == band:
        return item.mask
    return next((ref for ref in item.assets if ref.band == band), None)


def read_direct_many(
    stacks: Sequence[TileStack], outputs: Sequence[np.ndarray], env: LayeredEnv
) -> list[list[Leftover]]:
    """Fill `outputs` (one per stack, pre-filled with its fill value) for every asset the
    direct path reads exactly; per stack, the assets left for stackstac.

    One GDAL environment (stackstac's read layer: our HTTP options, no VSI cache)
    is entered for the whole batch instead of one per open and per read.
    """
    with env.read:
        return [_read_stack(s, out) for s, out in zip(stacks, outputs, strict=True)]


def _read_stack(stack: TileStack, out: np.ndarray) -> list[Leftover]:
    leftovers: list[Leftover] = []
    for i, item in enumerate(stack.items):
        for b, band in enumerate(stack.bands):
            ref = asset_ref(item, band)
            if ref is None:
                continue  # a band the product lacks stays fill, as with stackstac
            verdict = _from_metadata(stack, item, ref)
            if verdict == "warp" or (verdict == "open" and not _read_asset(stack, ref, out[i, b])):
                leftovers.append((i, b))
    return leftovers


def _from_metadata(stack: TileStack, item: NormalizedItem, ref: AssetRef) -> str:
    """'warp', 'skip' (misses the tile: stays fill, as stackstac skips it) or 'open'.

    Unknown grids (no proj metadata) are opened to find out.
    """
    if stack.resampling != Resampling.nearest:
        return "warp"
    if ref.transform is None or ref.shape is None or item.epsg is None:
        return "open"
    t = ref.transform
    if item.epsg != stack.tile.epsg or t.b or t.d or t.a <= 0 or t.e >= 0:
        return "warp"
    return "open" if _meets(tuple(t)[:6], tuple(ref.shape), stack.tile.bounds) else "skip"


@lru_cache(maxsize=4096)
def _meets(
    transform: tuple[float, ...], shape: tuple[int, int], bounds: tuple[float, float, float, float]
) -> bool:
    """Whether the grid has pixels in `bounds` (scenes of one tile share a few grids)."""
    return covering_window(Affine(*transform), shape, bounds) is not None


def _read_asset(stack: TileStack, ref: AssetRef, out: np.ndarray) -> bool:
    """Gather the asset into `out` (rows, cols), planned from the file's own grid (as
    stackstac's warp is); False when that grid needs a warp after all."""
    url = gdal_href(ref.href)
    try:
        ds = _open(url)
    except Exception as e:
        raise RuntimeError(f"Error opening {url!r}: {e!r}") from e
    with ds:
        if ds.count != 1:
            raise RuntimeError(
                f"Assets must have exactly 1 band, but file {url!r} has {ds.count}; "
                "give each band its own STAC asset"
            )
        epsg = ds.crs.to_epsg() if ds.crs is not None else None
        ties = GdalNearestProbe(masked_by_nodata=ds.nodata is not None)
        plan = plan_direct(ds.transform, ds.shape, epsg, stack.tile, stack.resolution, ties)
        if plan is None:
            return False
        if plan.window is None:
            return True  # the asset does not meet the tile: all fill
        try:
            data = _read_window(ds, plan.window, stack.dtype, stack.fill_value)
        except Exception as e:
            raise RuntimeError(f"Error reading {plan.window} from {url!r}: {e!r}") from e
    plan.gather(data, out)
    return True


def _open(url: str) -> DatasetReader:
    """Local files as stackstac opens them (DatasetReader inside the batch env: rasterio.open's
    per-call env and path handling cost ~10 % of a small windowed read); remote ones with
    rasterio.open, which also sets up the session credentials of /vsis3/ and friends."""
    if os.path.isabs(url) and not url.startswith("/vsi"):
        return DatasetReader(url, sharing=False)
    return rasterio.open(url, sharing=False)


def _read_window(
    ds: rasterio.DatasetReader, window: Window, dtype: str, fill_value: float
) -> np.ndarray:
    """The window as stackstac's reader returns it: masked pixels (nodata, per-dataset
    masks) set to `fill_value`, values cast to `dtype`, no scale/offset."""
    flags = tuple(ds.mask_flag_enums[0])
    if ds.dtypes[0] != _dtype_name(dtype) or flags not in (
        (MaskFlags.all_valid,),
        (MaskFlags.nodata,),
    ):
        masked = ds.read(1, window=window, out_dtype=dtype, masked=True)
        return np.ma.filled(masked, fill_value=fill_value)
    data = ds.read(1, window=window)
    nodata = ds.nodata
    if flags == (MaskFlags.nodata,) and not _same(nodata, fill_value):
        data[np.isnan(data) if math.isnan(nodata) else data == nodata] = fill_value
    return data


@lru_cache(maxsize=64)
def _dtype_name(dtype: str) -> str:
    return np.dtype(dtype).name


def _same(nodata: float, fill_value: float) -> bool:
    if math.isnan(nodata) or math.isnan(fill_value):
        return math.isnan(nodata) and math.isnan(fill_value)
    return nodata == fill_value
