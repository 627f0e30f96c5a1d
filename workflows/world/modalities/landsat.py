"""Landsat 8/9 Collection 2 Level-2 scenes in Planetary Computer layout.

SR DN = round((reflectance + 0.2) / 2.75e-5), ST_B10 DN from a surface
temperature with scale 0.00341802 / offset 149, and QA_PIXEL bit patterns as
USGS writes them (e.g. 21824 clear land, 21952 clear water, 22280 high
confidence cloud, 23888 shadow, 54596 cirrus, 1 fill). The NW and SE corners
of each scene are fill, as real WRS-2 scenes are rotated in their UTM frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from terracube.catalog.registry import band_group
from terracube.workflows.world.clouds import (
    CIRRUS,
    CLEAR,
    CLOUD_HIGH,
    CLOUD_MEDIUM,
    DILATED,
    FILL,
    SHADOW,
    cloud_cover_percent,
    draw_sky,
    draw_sky_params,
)
from terracube.workflows.world.cogs import write_cog
from terracube.workflows.world.config import BLOCK_M, MARGIN_TILES, ZoneGrid
from terracube.workflows.world.context import WorldContext
from terracube.workflows.world.landcover import WATER, upsample
from terracube.workflows.world.scenes import Scene
from terracube.workflows.world.spectra import LANDSAT_BANDS
from terracube.workflows.world.stac import (
    EXT_CLASSIFICATION,
    EXT_EO,
    EXT_LANDSAT,
    EXT_VIEW,
    CollectionInfo,
    RasterSpec,
    footprint_lonlat,
    item_dict,
    raster_asset,
)

COLLECTION = CollectionInfo(
    "landsat-c2-l2",
    "Landsat Collection 2 Level-2 (synthetic)",
    "Synthetic Landsat 8/9 C2 L2 scenes in Planetary Computer layout; values follow the truth exactly.",
    "proprietary",
    ("terracube synthetic world",),
)

LANDSAT_RES = 30
_LOW, _MED, _HIGH = 1, 2, 3


def _qa(
    bit: int | None,
    cloud_conf: int = _LOW,
    shadow_conf: int = _LOW,
    cirrus_conf: int = _LOW,
    water: bool = False,
) -> int:
    value = (cloud_conf << 8) | (shadow_conf << 10) | (_LOW << 12) | (cirrus_conf << 14)
    if bit is not None:
        value |= 1 << bit
    if water:
        value |= 1 << 7
    return value


QA_CLEAR_LAND = _qa(6)
QA_CLEAR_WATER = _qa(6, water=True)
QA_FOR_SKY = {
    CLOUD_HIGH: _qa(3, cloud_conf=_HIGH),
    CLOUD_MEDIUM: _qa(3, cloud_conf=_MED),
    SHADOW: _qa(4, shadow_conf=_HIGH),
    CIRRUS: _qa(2, cirrus_conf=_HIGH),
    DILATED: _qa(1),
    FILL: 1,
}
ASSET_KEYS = {b.name: b.aliases[1] for b in band_group("landsat").bands}
"""Registry band -> PC asset key (coastal .. swir22, lwir11)."""

_CLOUD_REFLECTANCE = 0.6
_CLOUD_TEMPERATURE_K = 252.0


def fill_blocks(grid: ZoneGrid) -> np.ndarray:
    """True for blocks outside the footprint: NW and SE corner triangles inside the margin."""
    corner = MARGIN_TILES * 2560 // BLOCK_M - 1
    rows, cols = np.indices((grid.blocks_y, grid.blocks_x))
    north_west = rows + cols < corner
    south_east = (grid.blocks_y - 1 - rows) + (grid.blocks_x - 1 - cols) < corner
    return north_west | south_east


def footprint_polygon(grid: ZoneGrid) -> shapely.Polygon:
    """The scene's valid area in the zone CRS (block-centre rule of `fill_blocks`)."""
    cut = (MARGIN_TILES * 2560 // BLOCK_M - 1) * BLOCK_M
    minx, miny, maxx, maxy = grid.bounds
    return shapely.Polygon(
        [
            (minx + cut, maxy),
            (maxx, maxy),
            (maxx, miny + cut),
            (maxx - cut, miny),
            (minx, miny),
            (minx, maxy - cut),
        ]
    )


def observed_dn(values: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Per-block DN as the sky lets them through (values: clear-sky DN, bands last)."""
    sr = band_group("landsat").bands[0].radiometry
    st = band_group("landsat").bands[-1].radiometry
    out = values.astype(np.int64)
    cloud = np.array(
        [round((_CLOUD_REFLECTANCE - sr.offset) / sr.scale)] * (len(LANDSAT_BANDS) - 1)
        + [round((_CLOUD_TEMPERATURE_K - st.offset) / st.scale)]
    )
    out[sky == CLOUD_HIGH] = cloud
    out[sky == CLOUD_MEDIUM] = cloud - 4000
    cirrus = sky == CIRRUS
    out[cirrus, :-1] += round(0.09 / sr.scale)
    shadow = sky == SHADOW
    reflect = out[shadow, :-1] * sr.scale + sr.offset
    out[shadow, :-1] = np.round((np.maximum(reflect * 0.35, 0.0) - sr.offset) / sr.scale)
    out[sky == FILL] = 0
    return np.clip(out, 0, 65535).astype(np.uint16)


def write_landsat(scene: Scene, ctx: WorldContext) -> tuple[dict[str, Any], np.ndarray]:
    """Write one scene's COGs; returns its STAC item (relative hrefs) and block sky codes."""
    grid = scene.grid
    rng = ctx.rng(8, grid.epsg, scene.ordinal)
    params = draw_sky_params(rng, all_cloud=False, dilate=True)
    sky = draw_sky(rng, (grid.blocks_y, grid.blocks_x), params, fill=fill_blocks(grid))
    dn = observed_dn(ctx.block_values(ctx.landsat_table, grid.epsg, scene.period), sky)

    classes = ctx.classes[grid.epsg]
    qa = np.where(classes == WATER, QA_CLEAR_WATER, QA_CLEAR_LAND).astype(np.uint16)
    for code, value in QA_FOR_SKY.items():
        qa[sky == code] = value

    folder = ctx.item_dir(scene.collection, scene.item_id)
    stem = f"{scene.item_id[:25]}_{scene.when:%Y%m%d}{scene.item_id[25:]}"
    shape, transform = grid.shape(LANDSAT_RES), grid.transform(LANDSAT_RES)
    assets: dict[str, dict[str, Any]] = {}
    for index, band in enumerate(band_group("landsat").bands):
        file = f"{stem}_{band.name}.TIF"
        write_cog(folder / file, upsample(dn[..., index], LANDSAT_RES), grid.epsg, transform, 0)
        thermal = band.name.startswith("ST_")
        spec = RasterSpec(
            shape,
            transform,
            "uint16",
            0,
            LANDSAT_RES,
            scale=band.radiometry.scale,
            offset=band.radiometry.offset,
            unit="kelvin" if thermal else None,
        )
        common = ASSET_KEYS[band.name]
        assets[common] = raster_asset(
            f"./{file}",
            "Surface Temperature Band" if thermal else f"{common} band",
            ["data", "temperature" if thermal else "reflectance"],
            spec,
            **{"eo:bands": [{"name": band.name, "common_name": common}]},
        )
    file = f"{stem}_QA_PIXEL.TIF"
    write_cog(folder / file, upsample(qa, LANDSAT_RES), grid.epsg, transform, 1)
    assets["qa_pixel"] = raster_asset(
        f"./{file}",
        "Pixel Quality Assessment Band",
        ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
        RasterSpec(shape, transform, "uint16", 1, LANDSAT_RES, unit="bit index"),
        description="Collection 2 Level-2 Pixel Quality Assessment Band (QA_PIXEL)",
    )
    return _item(scene, sky, assets), sky


def _item(scene: Scene, sky: np.ndarray, assets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    grid = scene.grid
    cover = cloud_cover_percent(sky)
    properties = {
        "datetime": scene.when.isoformat().replace("+00:00", "Z"),
        "platform": scene.platform,
        "instruments": ["oli", "tirs"],
        "description": "Landsat Collection 2 Level-2",
        "gsd": LANDSAT_RES,
        "eo:cloud_cover": cover,
        "view:off_nadir": 0,
        "landsat:cloud_cover_land": cover,
        "landsat:wrs_type": "2",
        "landsat:wrs_path": f"{scene.wrs_path:03d}",
        "landsat:wrs_row": f"{scene.wrs_row:03d}",
        "landsat:scene_id": f"L{scene.item_id[1]}{scene.item_id[3]}{scene.wrs_path:03d}{scene.wrs_row:03d}{scene.when:%Y%j}LGN00",
        "landsat:collection_category": "T1",
        "landsat:collection_number": "02",
        "landsat:correction": "L2SP",
        "terracube:clear_percentage": round(100.0 * float((sky == CLEAR).mean()), 4),
    }
    footprint = footprint_lonlat(grid.epsg, footprint_polygon(grid))
    return item_dict(
        scene.item_id,
        scene.collection,
        grid.epsg,
        footprint,
        grid.bounds,
        properties,
        assets,
        (EXT_EO, EXT_VIEW, EXT_LANDSAT, EXT_CLASSIFICATION),
    )
