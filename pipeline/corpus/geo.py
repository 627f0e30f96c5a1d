"""Georeferencing of corpus samples: CRS and affine per sample and band group.

Samples of one corpus sit in different UTM zones, so the store keeps the CRS
per sample (`epsg`, `x0`, `y0`) and each group array carries a transform
template. These helpers turn one sample into a normal georeferenced view:
`sample_geobox` for code and `sample_dataset` for xarray / rioxarray users.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, cast

import numpy as np
import xarray as xr
from affine import Affine
from terracube.catalog.registry import band_group
from terracube.pipeline.corpus.schema import (
    PROJ_CONVENTION,
    SAMPLE_DIM,
    SPATIAL_CONVENTION,
    resolution_label,
    spatial_dims,
)
from terracube.pipeline.corpus.store import Corpus, CorpusError, SampleState

CorpusLike = xr.Dataset | Corpus | str | os.PathLike[str]


def _as_dataset(source: CorpusLike) -> xr.Dataset:
    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, Corpus):
        return xr.open_zarr(source.url, storage_options=source.storage_options or None)
    return xr.open_zarr(os.fspath(source))


def _sample_origin(ds: xr.Dataset, index: int) -> tuple[int, float, float]:
    if not 0 <= index < ds.sizes[SAMPLE_DIM]:
        raise IndexError(f"sample {index} is outside this corpus (0..{ds.sizes[SAMPLE_DIM] - 1})")
    epsg = int(ds["epsg"][index].values)
    x0, y0 = float(ds["x0"][index].values), float(ds["y0"][index].values)
    if epsg == 0 or not (np.isfinite(x0) and np.isfinite(y0)):
        raise CorpusError(
            f"sample {index} has no georeferencing yet (epsg={epsg}, x0={x0}, y0={y0}): "
            "it is pending; write it first"
        )
    return epsg, x0, y0


def sample_geobox(
    source: CorpusLike, index: int, group: str
) -> tuple[str, Affine, tuple[int, int]]:
    """(CRS as "EPSG:n", affine of the group's pixel grid, (height, width)) of one sample."""
    g = band_group(group)
    if isinstance(source, Corpus):
        # one element of a 1-D array: a numpy scalar (zarr types it as any array-like)
        epsg = int(cast(np.integer, source.array("epsg")[index]))
        x0 = float(cast(np.floating, source.array("x0")[index]))
        y0 = float(cast(np.floating, source.array("y0")[index]))
        if epsg == 0:
            raise CorpusError(f"sample {index} has no georeferencing yet; it is pending")
    else:
        epsg, x0, y0 = _sample_origin(_as_dataset(source), index)
    res = float(g.resolution)
    return f"EPSG:{epsg}", Affine(res, 0.0, x0, 0.0, -res, y0), (g.pixels, g.pixels)


@lru_cache(maxsize=64)
def _crs_attrs(epsg: int) -> dict[str, Any]:
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    attrs = dict(crs.to_cf())
    attrs["crs_wkt"] = crs.to_wkt()
    attrs["spatial_ref"] = attrs["crs_wkt"]
    return attrs


def grid_mapping_name(resolution: float) -> str:
    """One CF grid-mapping variable per resolution: a GeoTransform fits one pixel size only."""
    return f"spatial_ref_{resolution_label(resolution)}"


def sample_dataset(source: CorpusLike, index: int) -> xr.Dataset:
    """Sample `index` as a georeferenced Dataset (lazy when `source` is lazy).

    Each group keeps its own y/x dims (`y10`/`x10`...), with pixel-centre
    coordinates in metres and a CF grid mapping `spatial_ref_<res>` (crs_wkt +
    GeoTransform), so `ds[group].rio.crs` / `.rio.transform()` give back what
    the build wrote. Index, quality and state variables become scalars.
    """
    ds = _as_dataset(source)
    epsg, x0, y0 = _sample_origin(ds, index)
    one = ds.isel({SAMPLE_DIM: index})
    crs_attrs = _crs_attrs(epsg)
    coords: dict[str, Any] = {}
    for name in list(one.data_vars):
        group = one[name].attrs.get("terracube:group")
        if group is None:
            continue
        g = band_group(group)
        res = float(g.resolution)
        ydim, xdim = spatial_dims(g)
        centres = (np.arange(g.pixels) + 0.5) * res
        coords[xdim] = xr.Variable(
            xdim,
            x0 + centres,
            {"axis": "X", "standard_name": "projection_x_coordinate", "units": "m"},
        )
        coords[ydim] = xr.Variable(
            ydim,
            y0 - centres,
            {"axis": "Y", "standard_name": "projection_y_coordinate", "units": "m"},
        )
        transform = Affine(res, 0.0, x0, 0.0, -res, y0)
        gm = grid_mapping_name(res)
        coords[gm] = xr.Variable(
            (), 0, {**crs_attrs, "GeoTransform": " ".join(str(v) for v in transform.to_gdal())}
        )
        one[name] = one[name].assign_attrs(
            {
                "grid_mapping": gm,
                "zarr_conventions": [SPATIAL_CONVENTION, PROJ_CONVENTION],
                "proj:code": f"EPSG:{epsg}",
                "spatial:transform": list(transform)[:6],
            }
        )
    one = one.assign_coords(coords)
    one.attrs["terracube:sample"] = index
    one.attrs["terracube:state_codes"] = {s.name.lower(): int(s) for s in SampleState}
    return one
