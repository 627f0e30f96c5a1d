"""Sentinel-1 RTC scenes in Planetary Computer layout (VV/VH linear power, float32).

Each pixel is the class mean (with its seasonal swing) times independent
gamma speckle of `S1_LOOKS` looks, so the truth holds the expectation, not
the pixel: pipeline checks on S1 are statistical (means over a class).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from terracube.catalog.registry import band_group
from terracube.workflows.world.cogs import write_cog
from terracube.workflows.world.context import WorldContext
from terracube.workflows.world.landcover import upsample
from terracube.workflows.world.scenes import Scene
from terracube.workflows.world.spectra import S1_LOOKS
from terracube.workflows.world.stac import (
    EXT_SAR,
    EXT_SAT,
    CollectionInfo,
    RasterSpec,
    footprint_lonlat,
    item_dict,
    raster_asset,
)

COLLECTION = CollectionInfo(
    "sentinel-1-rtc",
    "Sentinel-1 Radiometrically Terrain Corrected (synthetic)",
    "Synthetic Sentinel-1 IW RTC gamma0 in Planetary Computer layout; class means follow the truth.",
    "proprietary",
    ("terracube synthetic world",),
)

S1_NODATA = -32768.0
"""Planetary Computer's sentinel-1-rtc nodata."""
_KEEP_MANTISSA_BITS = 12
"""Speckle is stored with 12 mantissa bits (relative precision 2.4e-4) so the COGs compress."""


def _truncate_mantissa(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    drop = 23 - _KEEP_MANTISSA_BITS
    return (bits & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)).view(np.float32)


def write_sentinel1(scene: Scene, ctx: WorldContext) -> dict[str, Any]:
    """Write one scene's VV/VH COGs; returns its STAC item (relative hrefs)."""
    grid = scene.grid
    rng = ctx.rng(1, grid.epsg, scene.ordinal)
    means = ctx.block_values(ctx.s1_linear, grid.epsg, scene.period)
    folder = ctx.item_dir(scene.collection, scene.item_id)
    assets: dict[str, dict[str, Any]] = {}
    for index, band in enumerate(band_group("s1").bands):
        res = int(band.native_res)
        mean = upsample(means[..., index], res)
        speckle = rng.gamma(S1_LOOKS, 1.0 / S1_LOOKS, size=mean.shape)
        data = _truncate_mantissa(mean * speckle)
        key = band.name.lower()
        write_cog(folder / f"{key}.tif", data, grid.epsg, grid.transform(res), S1_NODATA)
        assets[key] = raster_asset(
            f"./{key}.tif",
            f"{band.name}: {band.name[0]}-transmit, {band.name[1]}-receive",
            ["data"],
            RasterSpec(grid.shape(res), grid.transform(res), "float32", S1_NODATA, res),
            description=f"Terrain-corrected gamma naught values of signal transmitted with {band.name} polarization.",
        )
    stop = scene.item_id.split("_")[5]
    properties = {
        "datetime": scene.when.isoformat().replace("+00:00", "Z"),
        "start_datetime": scene.when.isoformat().replace("+00:00", "Z"),
        "end_datetime": f"{stop[:4]}-{stop[4:6]}-{stop[6:8]}T{stop[9:11]}:{stop[11:13]}:{stop[13:15]}Z",
        "platform": scene.platform,
        "constellation": "Sentinel-1",
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "RTC",
        "sar:resolution_range": 20,
        "sar:resolution_azimuth": 22,
        "sar:looks_equivalent_number": S1_LOOKS,
        "sat:orbit_state": scene.orbit_state,
        "sat:relative_orbit": scene.relative_orbit,
        "sat:absolute_orbit": int(scene.item_id.split("_")[6]),
        "s1:processing_level": "1",
        "s1:product_timeliness": "Fast-24h",
    }
    footprint = footprint_lonlat(grid.epsg, shapely.box(*grid.bounds))
    return item_dict(
        scene.item_id,
        scene.collection,
        grid.epsg,
        footprint,
        grid.bounds,
        properties,
        assets,
        (EXT_SAR, EXT_SAT),
    )
