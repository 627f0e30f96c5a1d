"""Crop types: the context task's truth, visible only through the timing of the season.

WorldCover says "cropland" and nothing more; underneath, every cropland block of the
world belongs to a field of one of three crop types. Each is bare soil for nine months
and grows through one three-month season of the same shape (green-up, peak, harvest:
greenness 0.7, 1.0, 0.7): spring crops in March-May, summer crops in June-August, autumn
crops in September-November. Their peak-season spectra are equal, and over a whole year
(12 monthly periods) each type takes the very same multiset of monthly values in every
band of every sensor, only in another order. So any feature that forgets time order
(the per-band mean and std over the year, a histogram of the monthly values, one
peak-season date) cannot tell them apart: its ceiling is chance, 1/3, on clear sky.

The seasons avoid the world's all-cloud Sentinel-2 month (February, scenes.py), where
every type is bare soil, so losing it takes the same value from every type; the other
clouds are drawn independently of the month, so the values they hide are, in
distribution, the same for every type too. (A first design shifted one smooth yearly
curve by +-3 months; the all-cloud month then removed a different phase from each type,
and raw pixels scored 0.98 on it: measured, and why the seasons are now pulses.) What
separates the types is *when* the season happens, which an encoder sees only by
relating each token's value to its month encoding.

Fields are 360 m squares of a grid in local metres around the reference point (so both
zones agree), each with a seeded type; as with land cover, a block takes the type of the
field holding its centre, so the truth stays exactly constant on 120 m blocks.

Labels are written as 10 m GeoTIFFs per zone (0 = not cropland, the nodata value) with a
`classes.json` beside them: the format `terracube evaluate --task raster-segmentation
--labels DIR` reads, so the same probe runs on any label raster a user brings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from terracube.workflows.world.cogs import write_cog
from terracube.workflows.world.config import BLOCK_M, ZoneGrid
from terracube.workflows.world.landcover import (
    CROP,
    block_centres_lonlat,
    lonlat_to_local,
    upsample,
)

FIELD_M = 360.0
"""Edge of the square fields a crop type is constant on (three blocks)."""


@dataclass(frozen=True)
class CropType:
    code: int
    """Signal code: the key of the world's value tables for this crop type."""
    label: int
    """Value in the label rasters (1..3; 0 = not cropland)."""
    name: str
    season_start: int
    """Calendar month (1..12) of green-up; the season lasts three months."""


SEASON_GREENNESS = (0.7, 1.0, 0.7)
"""Greenness (spectra.py's 0..1 phenology scale) through the three months of a season;
0 (bare soil) outside it."""

CROP_TYPES: tuple[CropType, ...] = (
    CropType(41, 1, "spring crop", 3),
    CropType(42, 2, "summer crop", 6),
    CropType(43, 3, "autumn crop", 9),
)
CROP_TYPE_CODES: tuple[int, ...] = tuple(t.code for t in CROP_TYPES)
LABELS_DIR = "crop_types"
"""Folder under the world's truth/ holding the label rasters and classes.json."""


def crop_type(code: int) -> CropType | None:
    return next((t for t in CROP_TYPES if t.code == code), None)


def crop_greenness(code: int, month: int) -> float:
    """Greenness of a crop type in a calendar month (1..12): its season's, else bare 0."""
    kind = crop_type(code)
    if kind is None:
        raise ValueError(f"signal code {code} is not a crop type ({CROP_TYPE_CODES})")
    step = (month - kind.season_start) % 12
    return SEASON_GREENNESS[step] if step < len(SEASON_GREENNESS) else 0.0


def field_types(east: np.ndarray, north: np.ndarray, seed: int) -> np.ndarray:
    """Index 0..2 into CROP_TYPES of the field holding each ground position (local metres)."""
    col = np.floor(east / FIELD_M).astype(np.int64)
    row = np.floor(north / FIELD_M).astype(np.int64)
    # a fixed integer hash of (field, seed): the same field gets the same type in both zones
    mixed = (col * 73_856_093) ^ (row * 19_349_663) ^ ((seed + 1) * 83_492_791)
    mixed = (mixed ^ (mixed >> 13)) * 0x5BD1E995
    return ((mixed ^ (mixed >> 15)) % len(CROP_TYPES)).astype(np.int64)


def signal_blocks(grid: ZoneGrid, classes: np.ndarray, seed: int) -> np.ndarray:
    """uint8 signal code per block: the WorldCover class, or a crop type code on cropland."""
    lon, lat = block_centres_lonlat(grid)
    kinds = field_types(*lonlat_to_local(lon, lat), seed=seed)
    codes = np.array(CROP_TYPE_CODES, dtype=np.uint8)[kinds]
    return np.where(classes == CROP, codes, classes).astype(np.uint8)


def label_blocks(signal: np.ndarray) -> np.ndarray:
    """uint8 label per block: 1..3 for the crop types, 0 elsewhere."""
    lookup = np.zeros(256, dtype=np.uint8)
    for kind in CROP_TYPES:
        lookup[kind.code] = kind.label
    return lookup[signal]


def write_crop_labels(
    truth_dir: Path, grids: list[ZoneGrid], signal: dict[int, np.ndarray]
) -> Path:
    """truth/crop_types/crop_types_<epsg>.tif (10 m, nodata 0) and classes.json."""
    folder = truth_dir / LABELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for grid in grids:
        write_cog(
            folder / f"crop_types_{grid.epsg}.tif",
            upsample(label_blocks(signal[grid.epsg]), 10),
            grid.epsg,
            grid.transform(10),
            0,
        )
    document = {
        "nodata": 0,
        "classes": {str(t.label): t.name for t in CROP_TYPES},
        "about": (
            "crop type of every cropland pixel of the synthetic world; bare soil outside one "
            "three-month season of the same shape, which starts in month "
            f"{', '.join(f'{t.season_start} ({t.name})' for t in CROP_TYPES)}; "
            f"fields are {FIELD_M:.0f} m squares, constant on {BLOCK_M} m blocks"
        ),
    }
    (folder / "classes.json").write_text(json.dumps(document, indent=1) + "\n")
    return folder
