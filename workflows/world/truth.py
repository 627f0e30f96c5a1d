"""The ground truth beside the world, and `load_truth` so pipeline tests are one-liners.

Files under DIR/truth/:
- truth.json: periods, zones, planned tiles, signal tables per (class, band,
  period), every scene (item id, zone, period, baseline offset, sky stack
  index), items intersecting each (tile, modality, period), all-cloud cases,
  OSM features;
- blocks_<epsg>.npy: WorldCover class per 120 m block of the zone's extent;
- signal_<epsg>.npy: the signal code per block that the value tables are keyed by (the
  class, or the crop type on cropland: crops.py);
- crop_types/: 10 m crop-type label rasters per zone and classes.json (the context task);
- classes_<epsg>.tif: the same map at 10 m (identical to the WorldCover COG);
- sky_<modality>_<epsg>.npy: (scene, block_y, block_x) sky codes (clouds.py);
  SCL and QA_PIXEL are derived from them, so masks are also derivable from
  the rasters themselves.

Expected composites follow the pipeline's rule: a pixel is the median of the
clear observations of the tile's own zone (scenes of the neighbouring zone
overlap geographically and are listed in `items`, but resampling across CRSs
is never exact); with no clear observation it is nodata (0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from terracube.catalog.grid import Tile
from terracube.catalog.registry import S2_GROUPS, GeometryKind, band_group
from terracube.workflows.world.clouds import CLEAR
from terracube.workflows.world.config import BLOCK_M, ZoneGrid
from terracube.workflows.world.crops import label_blocks
from terracube.workflows.world.modalities.osm import OsmFeature
from terracube.workflows.world.spectra import LANDSAT_BANDS, S1_BANDS, S2_BANDS

TRUTH_FORMAT = 2
"""2: signal codes (crop types under cropland) and the crop-type label rasters."""


@dataclass(frozen=True)
class SceneTruth:
    item_id: str
    modality: str
    epsg: int
    datetime: str
    period: int
    sky_index: int
    offset_dn: int = 0


@dataclass(frozen=True)
class WorldTruth:
    """Loaded truth with the expected answer per tile, period and band group."""

    root: Path
    seed: int
    period_starts: tuple[date, ...]
    zones: dict[int, ZoneGrid]
    tile_ids: tuple[str, ...]
    scenes: tuple[SceneTruth, ...]
    s2_values: dict[int, np.ndarray]
    landsat_values: dict[int, np.ndarray]
    s1_linear: dict[int, np.ndarray]
    items_by_tile: dict[str, dict[str, list[list[str]]]]
    all_cloud: tuple[dict[str, Any], ...]
    osm: tuple[OsmFeature, ...]
    raw: dict[str, Any]

    # ------------------------------------------------------------------ geometry

    def blocks(self, epsg: int) -> np.ndarray:
        return np.load(self.root / f"blocks_{epsg}.npy")

    def block_index(self, tile_id: str, resolution: float) -> tuple[int, np.ndarray, np.ndarray]:
        """Zone, and the block row of every pixel-centre row and block column of every column."""
        tile = Tile.from_id(tile_id)
        if tile_id not in self.tile_ids:
            raise KeyError(
                f"tile {tile_id!r} is not planned in this world; planned: {self.tile_ids}"
            )
        grid = self.zones[tile.epsg]
        minx, _, _, maxy = tile.bounds
        rows, cols = tile.shape(resolution)
        xs = minx + (np.arange(cols) + 0.5) * resolution
        ys = maxy - (np.arange(rows) + 0.5) * resolution
        block_cols = np.floor((xs - grid.x0) / BLOCK_M).astype(int)
        block_rows = np.floor((grid.y_top - ys) / BLOCK_M).astype(int)
        if (
            block_cols.min() < 0
            or block_rows.min() < 0
            or block_cols.max() >= grid.blocks_x
            or block_rows.max() >= grid.blocks_y
        ):
            raise ValueError(f"tile {tile_id} reaches outside the zone extent {grid.bounds}")
        return tile.epsg, block_rows, block_cols

    def classes(self, tile_id: str, resolution: float = 10) -> np.ndarray:
        """uint8 class of every pixel of a tile: the class of the block holding its centre."""
        epsg, rows, cols = self.block_index(tile_id, resolution)
        return self.blocks(epsg)[np.ix_(rows, cols)]

    def signal(self, tile_id: str, resolution: float = 10) -> np.ndarray:
        """uint8 signal code of every pixel of a tile (the key of the value tables)."""
        epsg, rows, cols = self.block_index(tile_id, resolution)
        return np.load(self.root / f"signal_{epsg}.npy")[np.ix_(rows, cols)]

    def crop_type_labels(self, tile_id: str) -> np.ndarray:
        """(256, 256) uint8 crop-type label of every 10 m pixel (0 = not cropland)."""
        return label_blocks(self.signal(tile_id, 10))

    def expected_worldcover(self, tile_id: str) -> np.ndarray:
        """(1, 256, 256) uint8, the registry's worldcover group on the tile grid."""
        return self.classes(tile_id, band_group("worldcover").resolution)[None]

    # ------------------------------------------------------------------ sky

    def scenes_of(self, modality: str, epsg: int, period: int) -> list[SceneTruth]:
        return [
            s
            for s in self.scenes
            if s.modality == modality and s.epsg == epsg and s.period == period
        ]

    def clear_mask(self, tile_id: str, item_id: str, resolution: float) -> np.ndarray:
        """True where a scene's pixel is a clear observation on the tile grid."""
        scene = next(s for s in self.scenes if s.item_id == item_id)
        epsg, rows, cols = self.block_index(tile_id, resolution)
        sky = np.load(self.root / f"sky_{scene.modality}_{epsg}.npy", mmap_mode="r")[
            scene.sky_index
        ]
        return np.asarray(sky)[np.ix_(rows, cols)] == CLEAR

    def clear_count(
        self, tile_id: str, modality: str, period: int, resolution: float
    ) -> np.ndarray:
        """Number of clear native-zone observations per pixel in a period."""
        epsg = Tile.from_id(tile_id).epsg
        n = Tile.from_id(tile_id).shape(resolution)
        count = np.zeros(n, dtype=np.int32)
        for scene in self.scenes_of(modality, epsg, period):
            count += self.clear_mask(tile_id, scene.item_id, resolution)
        return count

    def _expected(
        self,
        table: dict[int, np.ndarray],
        band_indices: list[int],
        tile_id: str,
        modality: str,
        period: int,
        resolution: float,
    ) -> np.ndarray:
        classes = self.signal(tile_id, resolution)
        lookup = np.zeros((256, len(band_indices)), dtype=np.uint16)
        for code, values in table.items():
            lookup[code] = values[period][band_indices]
        out = np.moveaxis(lookup[classes], -1, 0)
        out[:, self.clear_count(tile_id, modality, period, resolution) == 0] = 0
        return out

    # ------------------------------------------------------------------ expected values

    def expected_s2(self, tile_id: str, period: int, group: str) -> np.ndarray:
        """(bands, n, n) uint16 stored reflectance x 10000 of an S2 group; 0 where never clear."""
        bg = band_group(group)
        if bg.modality != "sentinel2_l2a":
            raise ValueError(
                f"group {group!r} is not a Sentinel-2 group; use one of {[g.name for g in S2_GROUPS]}"
            )
        indices = [S2_BANDS.index(b) for b in bg.band_names]
        return self._expected(
            self.s2_values, indices, tile_id, "sentinel2_l2a", period, bg.resolution
        )

    def expected_landsat(self, tile_id: str, period: int) -> np.ndarray:
        """(8, 128, 128) uint16 C2 L2 DN at the landsat group's 20 m; 0 where never clear."""
        bg = band_group("landsat")
        indices = [LANDSAT_BANDS.index(b) for b in bg.band_names]
        return self._expected(
            self.landsat_values, indices, tile_id, "landsat_c2l2", period, bg.resolution
        )

    def expected_s1_mean(self, tile_id: str, period: int, db: bool = True) -> np.ndarray:
        """(2, 256, 256) float32 class-mean VV/VH (speckle-free expectation), dB or linear."""
        classes = self.signal(tile_id, band_group("s1").resolution)
        lookup = np.full((256, len(S1_BANDS)), np.nan)
        for code, values in self.s1_linear.items():
            lookup[code] = values[period]
        out = np.moveaxis(lookup[classes], -1, 0)
        return (10 * np.log10(out) if db else out).astype(np.float32)

    def items(
        self, tile_id: str, modality: str, period: int, native_only: bool = False
    ) -> list[str]:
        """Item ids whose footprint intersects the tile in a period (optionally own zone only)."""
        ids = self.items_by_tile[tile_id][modality][period]
        if not native_only:
            return ids
        epsg = Tile.from_id(tile_id).epsg
        zone_of = {s.item_id: s.epsg for s in self.scenes}
        return [i for i in ids if zone_of.get(i, epsg) == epsg]

    def osm_features(self, tile_id: str | None = None) -> list[OsmFeature]:
        """All OSM features, or those intersecting a tile's lon/lat footprint."""
        if tile_id is None:
            return list(self.osm)
        footprint = Tile.from_id(tile_id).footprint_lonlat()
        return [f for f in self.osm if f.geometry.intersects(footprint)]


def write_truth(root: Path, document: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "truth.json"
    path.write_text(json.dumps({"format": TRUTH_FORMAT, **document}, indent=1) + "\n")
    return path


def _table(raw: dict[str, list[list[float]]], dtype: str) -> dict[int, np.ndarray]:
    return {int(code): np.array(values, dtype=dtype) for code, values in raw.items()}


def load_truth(world_dir: Path) -> WorldTruth:
    """Read DIR/truth (pass the world DIR or its truth/ folder)."""
    root = Path(world_dir)
    if (root / "truth" / "truth.json").exists():
        root = root / "truth"
    path = root / "truth.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no truth.json under {world_dir}; generate the world first (terracube world --out DIR)"
        )
    raw = json.loads(path.read_text())
    if raw.get("format") != TRUTH_FORMAT:
        raise ValueError(
            f"{path} has truth format {raw.get('format')!r}; this code reads {TRUTH_FORMAT}, regenerate the world"
        )
    return WorldTruth(
        root=root,
        seed=raw["seed"],
        period_starts=tuple(date.fromisoformat(d) for d in raw["period_starts"]),
        zones={z["epsg"]: ZoneGrid(**z) for z in raw["zones"]},
        tile_ids=tuple(raw["tiles"]),
        scenes=tuple(SceneTruth(**s) for s in raw["scenes"]),
        s2_values=_table(raw["sentinel2_l2a"]["values"], "uint16"),
        landsat_values=_table(raw["landsat_c2l2"]["values"], "uint16"),
        s1_linear=_table(raw["sentinel1"]["mean_linear"], "float64"),
        items_by_tile=raw["items_by_tile"],
        all_cloud=tuple(raw["all_cloud"]),
        osm=tuple(
            OsmFeature(
                f["osm_type"],
                f["osm_id"],
                f["category"],
                tuple((k, v) for k, v in f["tags"]),
                tuple((c[0], c[1]) for c in f["coords"]),
                GeometryKind(f["kind"]),
            )
            for f in raw["osm"]["features"]
        ),
        raw=raw,
    )
