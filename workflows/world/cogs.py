"""Cloud-optimised GeoTIFF writing, one band per file as the providers publish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

COG_BLOCK = 256
COG_OPTIONS = {
    "BLOCKSIZE": COG_BLOCK,
    "COMPRESS": "DEFLATE",
    "LEVEL": 1,
    "OVERVIEW_RESAMPLING": "NEAREST",
}
"""Tiled 256 px, deflate, nearest overviews (right for classes and bit masks, cheap)."""


def write_cog(
    path: Path,
    data: np.ndarray,
    epsg: int,
    transform: tuple[float, float, float, float, float, float],
    nodata: float,
) -> None:
    """Write a single-band COG; overviews are added while the image exceeds one block."""
    if data.ndim != 2:
        raise ValueError(f"write_cog {path}: expected a 2-D array, got shape {data.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(COG_OPTIONS)
    if data.dtype.kind == "f":
        options["PREDICTOR"] = 3
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype.name,
        crs=f"EPSG:{epsg}",
        transform=Affine(*transform),
        nodata=nodata,
        **options,
    ) as dst:
        dst.write(data, 1)
