"""A small tiled GeoTIFF with known pixels, for the asset-server and S3 tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_test_cog(path: Path) -> np.ndarray:
    """A 1024x1024 uint16 tiled, compressed COG with a known, non-repeating pattern."""
    rows, cols = np.mgrid[0:1024, 0:1024]
    noise = np.random.default_rng(7).integers(0, 64, size=(1024, 1024))
    data = ((rows * 31 + cols * 17 + noise) % 60000).astype("uint16")
    profile = {
        "driver": "COG",
        "width": 1024,
        "height": 1024,
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(399960.0, 5000040.0, 10.0, 10.0),
        "blocksize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return data
