"""Read assets that share the tile's grid lattice straight into the output, without a warp.

stackstac wraps every asset in a WarpedVRT and enters a GDAL environment per open
and per read; for a 12-period tile that overhead cost more than the reads. For an
asset whose grid relates to the tile grid by pure index arithmetic
(`grid_index.plan_direct`: same CRS, north-up, centres decidable exactly) nearest
resampling is a gather, so this path opens the file, reads exactly the window the
raw-read floor reads, and gathers the target pixels in numpy, with one GDAL
environment for the whole batch.

Values match stackstac's (checked in tests/test_pipeline_grid_index.py): source
nodata or masked pixels and pixels outside the asset become the fill value, no
scale/offset is applied (we call stackstac with rescale=False), and errors name
the file the way stackstac's reader does. Assets the plan refuses, assets without
proj metadata and assets whose file disagrees with their metadata are returned to
the caller, which reads them through stackstac.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window
from stackstac.rio_env import LayeredEnv
from terracube.catalog.normalize import AssetRef, NormalizedItem
from terracube.pipeline.grid_index import DirectPlan, plan_direct
from terracube.pipeline.stackstac_compat import TileStack, gdal_href

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
            plan = _plan(stack, item, ref)
            if plan is None or not _read_asset(stack, item, ref, plan, out[i, b]):
                leftovers.append((i, b))
    return leftovers


def _plan(stack: TileStack, item: NormalizedItem, ref: AssetRef) -> DirectPlan | None:
    if stack.resampling != Resampling.nearest or ref.transform is None or ref.shape is None:
        return None
    return plan_direct(ref.transform, ref.shape, item.epsg, stack.tile, stack.resolution)


def _read_asset(
    stack: TileStack, item: NormalizedItem, ref: AssetRef, plan: DirectPlan, out: np.ndarray
) -> bool:
    """Gather the asset into `out` (rows, cols); False when the file's grid is not the
    metadata's (the caller then warps it from the file's own grid)."""
    if plan.window is None:
        return True  # the asset does not meet the tile: all fill
    url = gdal_href(ref.href)
    try:
        ds = rasterio.open(url, sharing=False)
    except Exception as e:
        raise RuntimeError(f"Error opening {url!r}: {e!r}") from e
    with ds:
        if ds.count != 1:
            raise RuntimeError(
                f"Assets must have exactly 1 band, but file {url!r} has {ds.count}; "
                "give each band its own STAC asset"
            )
        if not _file_matches(ds, ref, stack.tile.epsg):
            return False
        try:
            data = _read_window(ds, plan.window, stack.dtype, stack.fill_value)
        except Exception as e:
            raise RuntimeError(f"Error reading {plan.window} from {url!r}: {e!r}") from e
    plan.gather(data, out)
    return True


def _file_matches(ds: rasterio.DatasetReader, ref: AssetRef, epsg: int) -> bool:
    got = ds.crs.to_epsg() if ds.crs is not None else None
    return (
        got == epsg
        and tuple(ds.shape) == tuple(ref.shape)
        and ds.transform.almost_equals(ref.transform, precision=1e-9)
    )


def _read_window(
    ds: rasterio.DatasetReader, window: Window, dtype: str, fill_value: float
) -> np.ndarray:
    """The window as stackstac's reader returns it: masked pixels (nodata, per-dataset
    masks) set to `fill_value`, values cast to `dtype`, no scale/offset."""
    flags = tuple(ds.mask_flag_enums[0])
    if ds.dtypes[0] != np.dtype(dtype).name or flags not in (
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


def _same(nodata: float, fill_value: float) -> bool:
    if math.isnan(nodata) or math.isnan(fill_value):
        return math.isnan(nodata) and math.isnan(fill_value)
    return nodata == fill_value
