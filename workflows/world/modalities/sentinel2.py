"""Sentinel-2 L2A scenes in Earth Search v1 layout (COG per band, SCL at 20 m)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import shapely
from terracube.catalog.registry import (
    S2_GROUPS,
    modality,
)
from terracube.catalog.s2_baseline import S2_BOA_ADD_OFFSET_DN, s2_offset_applies
from terracube.workflows.world.clouds import (
    CIRRUS,
    CLEAR,
    CLOUD_HIGH,
    CLOUD_MEDIUM,
    SHADOW,
    cloud_cover_percent,
    draw_sky,
    draw_sky_params,
)
from terracube.workflows.world.cogs import write_cog
from terracube.workflows.world.context import WorldContext
from terracube.workflows.world.landcover import BARE, BUILT, SNOW, WATER, upsample
from terracube.workflows.world.scenes import ALL_CLOUD_PERIOD, Scene
from terracube.workflows.world.spectra import S2_BANDS
from terracube.workflows.world.stac import (
    EXT_EO,
    EXT_MGRS,
    CollectionInfo,
    RasterSpec,
    footprint_lonlat,
    item_dict,
    raster_asset,
)

COLLECTION = CollectionInfo(
    "sentinel-2-l2a",
    "Sentinel-2 Level-2A (synthetic)",
    "Synthetic Sentinel-2 L2A scenes in Earth Search v1 layout; values follow the truth exactly.",
    "proprietary",
    ("terracube synthetic world",),
)

SCL_FOR_SKY = {CLOUD_HIGH: 9, CLOUD_MEDIUM: 8, SHADOW: 3, CIRRUS: 10}
_CLOUD_REFLECTANCE = {"B11": 0.50, "B12": 0.38, "B09": 0.25}
"""Bright clouds: 0.65 in visible/NIR, lower in SWIR and in the water-vapour band."""


def scl_for_class(code: int) -> int:
    """SCL class of a clear pixel: 6 water, 5 not vegetated, 11 snow, else 4 vegetation."""
    if code == WATER:
        return 6
    if code in (BUILT, BARE):
        return 5
    if code == SNOW:
        return 11
    return 4


def _asset_key(band_name: str) -> str:
    """Earth Search asset key: the band's common name from the registry aliases."""
    band = next(b for g in S2_GROUPS for b in g.bands if b.name == band_name)
    return band.aliases[1]


def _wavelength_um(description: str) -> float | None:
    match = re.search(r"(\d+) nm", description)
    return int(match.group(1)) / 1000 if match else None


def observed_stored(values: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Per-block stored values (reflectance x 10000) as the sky lets them through."""
    out = values.astype(np.int32)
    high = np.array([round(_CLOUD_REFLECTANCE.get(b, 0.65) * 10000) for b in S2_BANDS])
    out[sky == CLOUD_HIGH] = high
    out[sky == CLOUD_MEDIUM] = np.round(high * 0.7).astype(np.int32)
    out[sky == CIRRUS] = np.minimum(out[sky == CIRRUS] + 900, 10000)
    out[sky == SHADOW] = np.maximum(np.round(out[sky == SHADOW] * 0.35), 1).astype(np.int32)
    return out


def write_sentinel2(scene: Scene, ctx: WorldContext) -> tuple[dict[str, Any], np.ndarray]:
    """Write one scene's COGs; returns its STAC item (relative hrefs) and block sky codes."""
    grid = scene.grid
    rng = ctx.rng(2, grid.epsg, scene.ordinal)
    params = draw_sky_params(rng, all_cloud=scene.period == ALL_CLOUD_PERIOD, dilate=False)
    sky = draw_sky(rng, (grid.blocks_y, grid.blocks_x), params, fill=None)
    stored = observed_stored(ctx.block_values(ctx.s2_table, grid.epsg, scene.period), sky)
    offset_applies = s2_offset_applies(scene.baseline)
    dn = (stored + (S2_BOA_ADD_OFFSET_DN if offset_applies else 0)).astype(np.uint16)

    folder = ctx.item_dir(scene.collection, scene.item_id)
    assets: dict[str, dict[str, Any]] = {}
    for group in S2_GROUPS:
        for band in group.bands:
            res = int(band.native_res)
            data = upsample(dn[..., S2_BANDS.index(band.name)], res)
            write_cog(folder / f"{band.name}.tif", data, grid.epsg, grid.transform(res), 0)
            spec = RasterSpec(
                grid.shape(res),
                grid.transform(res),
                "uint16",
                0,
                res,
                scale=band.radiometry.scale,
                offset=-S2_BOA_ADD_OFFSET_DN * band.radiometry.scale if offset_applies else 0.0,
            )
            common = _asset_key(band.name)
            eo_band: dict[str, Any] = {
                "name": common,
                "common_name": common,
                "description": band.description,
            }
            if wavelength := _wavelength_um(band.description):
                eo_band["center_wavelength"] = wavelength
            assets[common] = raster_asset(
                f"./{band.name}.tif",
                f"{band.description} - {res}m",
                ["data", "reflectance"],
                spec,
                gsd=res,
                **{"eo:bands": [eo_band]},
            )

    mask = modality("sentinel2_l2a").mask
    assert mask is not None
    scl_blocks = np.vectorize(scl_for_class, otypes=[np.uint8])(ctx.classes[grid.epsg])
    for code, scl in SCL_FOR_SKY.items():
        scl_blocks[sky == code] = scl
    res = int(mask.native_res)
    write_cog(folder / "SCL.tif", upsample(scl_blocks, res), grid.epsg, grid.transform(res), 0)
    assets["scl"] = raster_asset(
        "./SCL.tif",
        "Scene classification map (SCL)",
        ["data", "reflectance"],
        RasterSpec(grid.shape(res), grid.transform(res), "uint8", 0, res),
    )
    return _item(scene, sky, scl_blocks, assets), sky


def _item(
    scene: Scene,
    sky: np.ndarray,
    scl: np.ndarray,
    assets: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    grid = scene.grid
    square = scene.item_id.split("_")[1]
    baseline_tag = scene.baseline.replace(".", "")
    stamp = f"{scene.when:%Y%m%dT%H%M%S}"

    def share(*codes: int) -> float:
        return round(100.0 * float(np.isin(scl, codes).mean()), 6)

    properties = {
        "datetime": scene.when.isoformat().replace("+00:00", "Z"),
        "platform": scene.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": cloud_cover_percent(sky),
        "mgrs:utm_zone": int(square[:2]),
        "mgrs:latitude_band": square[2],
        "mgrs:grid_square": square[3:],
        "grid:code": f"MGRS-{square}",
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.baseline,
        "s2:product_uri": f"S2{scene.platform[-1].upper()}_MSIL2A_{stamp}_N{baseline_tag}_R{scene.relative_orbit:03d}_T{square}_{stamp}.SAFE",
        "s2:nodata_pixel_percentage": 0.0,
        "s2:cloud_shadow_percentage": share(3),
        "s2:vegetation_percentage": share(4),
        "s2:not_vegetated_percentage": share(5),
        "s2:water_percentage": share(6),
        "s2:medium_proba_clouds_percentage": share(8),
        "s2:high_proba_clouds_percentage": share(9),
        "s2:thin_cirrus_percentage": share(10),
        "s2:snow_ice_percentage": share(11),
        "sat:relative_orbit": scene.relative_orbit,
        # No earthsearch:boa_offset_applied: true would mean Element84 removed the +1000
        # from its COGs; the world's DN are ESA's own, read by raster:bands and baseline.
        "terracube:sky_all_cloud": bool(np.all(sky == CLOUD_HIGH)),
        "terracube:clear_percentage": round(100.0 * float((sky == CLEAR).mean()), 4),
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
        (EXT_EO, EXT_MGRS),
    )
