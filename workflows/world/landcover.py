"""The land-cover map that drives every sensor, as one geographic field.

Classes are a function of position on the ground (local metres around the
reference point), evaluated at the centre of each 120 m block of each zone, so
the zone 31 and zone 32 maps describe the same landscape (they differ only by
block discretisation) while each stays exactly piecewise constant on its own
zone-aligned 120 m blocks. Structures (river, lake, town, airfield) are placed
so that the planned tiles of every size hold every common class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pyproj import Transformer
from terracube.workflows.world.config import BLOCK_M, CENTER_LAT, CENTER_LON, ZoneGrid

TREE, SHRUB, GRASS, CROP, BUILT, BARE, SNOW, WATER, WETLAND, MANGROVE, MOSS = (
    10,
    20,
    30,
    40,
    50,
    60,
    70,
    80,
    90,
    95,
    100,
)

BACKGROUND_SHARES: tuple[tuple[int, float], ...] = (
    (CROP, 0.46),
    (TREE, 0.28),
    (GRASS, 0.16),
    (SHRUB, 0.06),
    (BARE, 0.04),
)
"""Shares of the rural background (before river, lake, town and airfield are laid on it)."""

_METRES_PER_DEG_LAT = 111_132.0
_METRES_PER_DEG_LON = 111_320.0 * math.cos(math.radians(CENTER_LAT))


@dataclass(frozen=True)
class Structures:
    """Where the landscape's man-made and water features lie, in local metres (east, north)."""

    river_v: float
    lake: tuple[float, float, float]
    town: tuple[float, float, float]
    villages: tuple[tuple[float, float, float], ...]
    airfield: tuple[float, float, float, float]
    """centre east, centre north, half length (east-west), half width."""


def structures(seed: int) -> Structures:
    """Seed-jittered positions; kept inside the test world's planned tiles."""
    rng = np.random.default_rng([seed, 1])
    jitter = rng.uniform(-60, 60, size=6)
    return Structures(
        river_v=-1300.0 + jitter[0],
        lake=(1050.0 + jitter[1], -350.0 + jitter[2], 260.0),
        town=(-850.0 + jitter[3], 700.0 + jitter[4], 650.0),
        villages=((-2700.0, -2600.0, 320.0), (2600.0, 3100.0, 300.0), (2300.0, -3400.0, 260.0)),
        airfield=(700.0 + jitter[5], 1650.0, 650.0, 170.0),
    )


def lonlat_to_local(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular metres east/north of the reference point (zone independent)."""
    return (lon - CENTER_LON) * _METRES_PER_DEG_LON, (lat - CENTER_LAT) * _METRES_PER_DEG_LAT


def local_to_lonlat(east: np.ndarray, north: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return CENTER_LON + east / _METRES_PER_DEG_LON, CENTER_LAT + north / _METRES_PER_DEG_LAT


def river_centre_north(east: np.ndarray, where: Structures) -> np.ndarray:
    """Northing of the meandering river's centreline at each easting."""
    return (
        where.river_v
        + 420.0 * np.sin(2 * np.pi * east / 5200.0)
        + 150.0 * np.sin(2 * np.pi * east / 1700.0 + 1.0)
    )


def _smooth_noise(
    seed: int, stream: int, east: np.ndarray, north: np.ndarray, waves: int = 9
) -> np.ndarray:
    """Unit-variance field from random plane waves (wavelengths 500-3500 m)."""
    rng = np.random.default_rng([seed, stream])
    total = np.zeros_like(east, dtype=np.float64)
    amplitudes = rng.uniform(0.5, 1.0, waves)
    for amplitude in amplitudes:
        wavelength = rng.uniform(500.0, 3500.0)
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        k = 2 * np.pi / wavelength
        total += amplitude * np.cos(k * (east * np.cos(angle) + north * np.sin(angle)) + phase)
    return total / math.sqrt(float(np.sum(amplitudes**2)) / 2.0)


def classes_at(east: np.ndarray, north: np.ndarray, seed: int) -> np.ndarray:
    """WorldCover class code at ground positions given in local metres."""
    where = structures(seed)
    background = _smooth_noise(seed, 2, east, north)
    classes = np.full(east.shape, BACKGROUND_SHARES[-1][0], dtype=np.uint8)
    cumulative = 0.0
    # Thresholds from the normal CDF: the plane-wave sum is close to Gaussian.
    edges = []
    for code, share in BACKGROUND_SHARES:
        cumulative += share
        edges.append((code, NormalDist().inv_cdf(min(cumulative, 0.999999))))
    for code, upper in reversed(edges):
        classes[background < upper] = code

    wiggle = _smooth_noise(seed, 3, east, north)
    distance_to_river = np.abs(north - river_centre_north(east, where))
    classes[(distance_to_river < 260.0) & (wiggle > 0.2)] = WETLAND
    classes[distance_to_river < 95.0] = WATER

    lake_e, lake_n, lake_r = where.lake
    classes[np.hypot(east - lake_e, north - lake_n) < lake_r + 60.0 * wiggle] = WATER

    town_e, town_n, town_r = where.town
    in_town = np.hypot(east - town_e, north - town_n) < town_r + 120.0 * wiggle
    for village_e, village_n, village_r in where.villages:
        in_town |= np.hypot(east - village_e, north - village_n) < village_r + 60.0 * wiggle
    classes[in_town] = BUILT
    classes[in_town & (_smooth_noise(seed, 4, east, north) > 1.3)] = GRASS  # parks

    air_e, air_n, half_length, half_width = where.airfield
    on_airfield = (np.abs(east - air_e) < half_length) & (np.abs(north - air_n) < half_width)
    classes[on_airfield] = GRASS
    classes[on_airfield & (np.abs(north - air_n) < 40.0)] = BARE  # the paved strip
    return classes


def block_centres_lonlat(grid: ZoneGrid) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of every block centre, shape (blocks_y, blocks_x), row 0 at the top."""
    xs = grid.x0 + (np.arange(grid.blocks_x) + 0.5) * BLOCK_M
    ys = grid.y_top - (np.arange(grid.blocks_y) + 0.5) * BLOCK_M
    xx, yy = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(xx, yy)
    return np.asarray(lon), np.asarray(lat)


def block_classes(grid: ZoneGrid, seed: int) -> np.ndarray:
    """uint8 class of every 120 m block of a zone's scene extent."""
    lon, lat = block_centres_lonlat(grid)
    return classes_at(*lonlat_to_local(lon, lat), seed=seed)


def upsample(blocks: np.ndarray, resolution: int) -> np.ndarray:
    """Blocks -> pixels at `resolution` m (each block becomes BLOCK_M/resolution pixels square)."""
    factor = BLOCK_M // resolution
    return np.repeat(np.repeat(blocks, factor, axis=-2), factor, axis=-1)
