"""ESA WorldCover 2021 stand-in: the class map as one 10 m COG per zone.

Synthetic simplification: the real product is tiled in 3-degree EPSG:4326
tiles; here each zone's map is published in that zone's UTM CRS at 10 m (the
real 4326 tile is covered by the real-data fixture tests instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from terracube.catalog.registry import WORLDCOVER_CLASSES, band_group
from terracube.workflows.world.cogs import write_cog
from terracube.workflows.world.config import ZoneGrid
from terracube.workflows.world.context import WorldContext
from terracube.workflows.world.landcover import upsample
from terracube.workflows.world.stac import (
    EXT_CLASSIFICATION,
    CollectionInfo,
    RasterSpec,
    footprint_lonlat,
    item_dict,
    raster_asset,
)

COLLECTION = CollectionInfo(
    "esa-worldcover",
    "ESA WorldCover (synthetic, UTM)",
    "Synthetic stand-in for ESA WorldCover 2021 v200: the world's class map per UTM zone at 10 m.",
    "CC-BY-4.0",
    ("terracube synthetic world",),
)


def worldcover_item_id(epsg: int) -> str:
    return f"ESA_WorldCover_10m_2021_v200_UTM{epsg % 100:02d}N"


def write_worldcover_cog(path: Any, classes: np.ndarray, grid: ZoneGrid) -> None:
    band = band_group("worldcover").bands[0]
    res = int(band.native_res)
    write_cog(path, upsample(classes, res), grid.epsg, grid.transform(res), band.nodata)


def write_worldcover(grid: ZoneGrid, ctx: WorldContext) -> dict[str, Any]:
    band = band_group("worldcover").bands[0]
    res = int(band.native_res)
    item_id = worldcover_item_id(grid.epsg)
    folder = ctx.item_dir(COLLECTION.id, item_id)
    write_worldcover_cog(folder / f"{item_id}_Map.tif", ctx.classes[grid.epsg], grid)
    assets = {
        "map": raster_asset(
            f"./{item_id}_Map.tif",
            "Land Cover Classes",
            ["data"],
            RasterSpec(grid.shape(res), grid.transform(res), "uint8", band.nodata, res),
            **{
                "classification:classes": [
                    {"value": code, "description": name}
                    for code, name in WORLDCOVER_CLASSES.items()
                ]
            },
        )
    }
    properties = {
        "datetime": "2021-01-01T00:00:00Z",
        "start_datetime": "2021-01-01T00:00:00Z",
        "end_datetime": "2021-12-31T23:59:59Z",
        "esa_worldcover:product_version": "2.0.0",
        "esa_worldcover:product_tile": f"UTM{grid.epsg % 100:02d}N",
        "mission": "sentinel-1, sentinel-2",
        "platform": "sentinel-1a, sentinel-1b, sentinel-2a, sentinel-2b",
        "instruments": ["c-sar", "msi"],
    }
    footprint = footprint_lonlat(grid.epsg, shapely.box(*grid.bounds))
    return item_dict(
        item_id,
        COLLECTION.id,
        grid.epsg,
        footprint,
        grid.bounds,
        properties,
        assets,
        (EXT_CLASSIFICATION,),
    )
