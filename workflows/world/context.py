"""What every sensor writer shares: the seed, the zones' block maps and the signal tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from terracube.workflows.world.config import ZoneGrid


@dataclass(frozen=True)
class WorldContext:
    seed: int
    stac_dir: Path
    grids: dict[int, ZoneGrid]
    classes: dict[int, np.ndarray]
    """epsg -> uint8 WorldCover class per 120 m block."""
    signal: dict[int, np.ndarray]
    """epsg -> uint8 signal code per block: the class, or a crop type on cropland (crops.py)."""
    period_starts: list[date]
    """Period starts plus the end of the last period."""
    s2_table: dict[int, np.ndarray]
    landsat_table: dict[int, np.ndarray]
    s1_linear: dict[int, np.ndarray]

    def rng(self, stream: int, epsg: int, ordinal: int) -> np.random.Generator:
        """Independent, order-free random stream per (purpose, zone, scene)."""
        return np.random.default_rng([self.seed, stream, epsg, ordinal])

    def block_values(self, table: dict[int, np.ndarray], epsg: int, period: int) -> np.ndarray:
        """(blocks_y, blocks_x, bands) clear-sky values of one zone in one period."""
        first = next(iter(table.values()))
        lookup = np.zeros((256, first.shape[-1]), dtype=first.dtype)
        for code, values in table.items():
            lookup[code] = values[period]
        return lookup[self.signal[epsg]]

    def item_dir(self, collection: str, item_id: str) -> Path:
        return self.stac_dir / collection / item_id
