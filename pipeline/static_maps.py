"""Static maps on the tile grid: ESA WorldCover classes and OSM category coverage.

WorldCover: nearest from a 10 m source on the tile's CRS (pixels are copied),
mode from anything else (coarser pixels, EPSG:4326 tiles) so a class is never
invented by interpolation; codes outside the registry's classes become nodata.

OSM: each category is burned with `all_touched` on a finer raster (2 m by
default), then every 10 m pixel stores the percent of its fine pixels covered.
A touched 10 m pixel therefore stores >= 1 (one 2 m pixel = 4 %), and every
feature's representative point is burned as well, so a point, a hairline or a
sliver on the tile edge is never lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from terracube.catalog.grid import Tile
from terracube.catalog.registry import OSM_CATEGORIES, OSM_GROUPS, BandGroup
from terracube.catalog.stac.items import NormalizedItem
from terracube.pipeline.read.reader import Reader, ReadRequest


@dataclass(frozen=True)
class OsmRasterParams:
    fine_m: float = 2.0
    """Fine raster pixel; must divide the OSM group resolution."""

    def __post_init__(self) -> None:
        res = OSM_GROUPS[0].resolution
        if self.fine_m <= 0 or (res / self.fine_m) % 1:
            raise ValueError(
                f"OsmRasterParams.fine_m={self.fine_m} must divide the {res} m OSM grid (e.g. 1 or 2)"
            )


def class_map_resampling(item: NormalizedItem, tile: Tile, group: BandGroup) -> Resampling:
    """Nearest for a source on the tile CRS at the group's resolution, mode otherwise."""
    ref = item.asset(group.bands[0].name)
    res = group.resolution
    same_grid = (
        item.epsg == tile.epsg
        and ref.transform is not None
        and abs(abs(ref.transform.a) - res) < 1e-9
        and abs(abs(ref.transform.e) - res) < 1e-9
    )
    return Resampling.nearest if same_grid else Resampling.mode


def class_map(
    items: Sequence[NormalizedItem],
    tile: Tile,
    reader: Reader,
    group: BandGroup,
    classes: Mapping[int, str],
) -> tuple[np.ndarray, list[str]]:
    """(1, rows, cols) classes of a map group (WorldCover) and the ids of the items that
    gave pixels; codes outside `classes` become nodata.

    Items are in plan order (most coverage first); later items fill only pixels
    earlier ones left as nodata (tiles straddling two WorldCover 3x3 degree tiles).
    """
    valid_codes = np.array(sorted(classes), dtype=group.dtype)
    out = np.full((1, group.pixels, group.pixels), group.nodata, dtype=group.dtype)
    used: list[str] = []
    for item in items:
        request = ReadRequest(
            items=(item,),
            bands=group.band_names,
            tile=tile,
            resolution=group.resolution,
            dtype=group.dtype,
            fill_value=group.nodata,
            resampling=class_map_resampling(item, tile, group),
        )
        values = reader.read(request)[0]
        values = np.where(np.isin(values, valid_codes), values, group.nodata).astype(group.dtype)
        take = (out == group.nodata) & (values != group.nodata)
        if take.any():
            out[take] = values[take]
            used.append(item.id)
    return out, used


def osm_raster(
    features: gpd.GeoDataFrame,
    tile: Tile,
    params: OsmRasterParams = OsmRasterParams(),
    group: BandGroup = OSM_GROUPS[0],
) -> np.ndarray:
    """(categories, rows, cols) uint8 percent cover per registry OSM category.

    `features` are in the tile CRS with a `category` column (catalog.osm.features
    `OsmFeatures.features_for_tile`); unknown categories raise.
    """
    n = group.pixels
    factor = round(group.resolution / params.fine_m)
    fine = n * factor
    out = np.zeros((len(group.bands), n, n), dtype=np.uint8)
    if features is None or len(features) == 0:
        return out
    _check_features(features, tile)
    names = [c.name for c in OSM_CATEGORIES]
    unknown = sorted(set(features["category"]) - set(names))
    if unknown:
        raise ValueError(
            f"OSM features carry categories {unknown} the registry does not know; "
            f"categorize them with terracube.catalog.osm.features.categorize"
        )
    transform = tile.transform(params.fine_m)
    minx, _, _, maxy = tile.bounds
    for name, rows in features.groupby("category"):
        geoms = [g for g in rows.geometry if g is not None and not g.is_empty]
        if not geoms:
            continue
        burned = rasterize(
            ((g, 1) for g in geoms),
            out_shape=(fine, fine),
            transform=transform,
            all_touched=True,
            fill=0,
            dtype=np.uint8,
        )
        # The representative point of each feature, clamped onto the raster, so a
        # feature on the closed max edge of the tile still marks its pixel.
        points = shapely.get_coordinates(shapely.point_on_surface(np.asarray(geoms)))
        cols = np.clip(np.floor((points[:, 0] - minx) / params.fine_m), 0, fine - 1).astype(int)
        rows_ = np.clip(np.floor((maxy - points[:, 1]) / params.fine_m), 0, fine - 1).astype(int)
        burned[rows_, cols] = 1
        counts = burned.reshape(n, factor, n, factor).sum(axis=(1, 3), dtype=np.int32)
        percent = np.where(counts > 0, np.maximum(1, (counts * 100) // (factor * factor)), 0)
        out[names.index(str(name))] = percent.astype(np.uint8)
    return out


def _check_features(features: gpd.GeoDataFrame, tile: Tile) -> None:
    if "category" not in features.columns:
        raise ValueError("OSM features need a 'category' column (catalog.osm.features.categorize)")
    if features.crs is None or features.crs.to_epsg() != tile.epsg:
        raise ValueError(
            f"OSM features are in {features.crs}, tile {tile.id} is EPSG:{tile.epsg}; "
            "use OsmFeatures.features_for_tile(tile), which clips and reprojects them"
        )
