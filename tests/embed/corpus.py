"""A small two-zone corpus for the embedding tests, written with the Corpus API.

12 tiles, 3 per shard, 2 periods; S2 (three groups), S1 and WorldCover. Tiles 0-5 lie in
UTM 31N, 6-11 in UTM 32N, so the store's per-sample georeference is exercised. Each
tile has a majority WorldCover class (`tile_class`) with a 32 px block of another one;
S2 and S1 follow the class, plus noise, so a probe can learn it from the inputs.
Missing data: S1 `empty` on tile 3, S2 period 1 missing on tile 7, and tile 10 has no
input at all (S2 and S1 empty) and no WorldCover (pending): it must come out `empty`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyproj import Transformer
from terracube.catalog.registry import band_group
from terracube.model.eval.evaluate import init_model
from terracube.model.train.checkpoint import save_checkpoint
from terracube.model.train.pretrain import CHECKPOINT_FORMAT
from terracube.pipeline.corpus.store import SampleData, SampleState, create_corpus

N_TILES, PER_SHARD, N_PERIODS = 12, 3, 2
CLASSES = (10, 40, 50, 80)
S1_EMPTY, MISSING_S2_PERIOD, NO_INPUT = 3, (7, 1), 10
GROUPS = ("s2_10m", "s2_20m", "s2_40m", "s1", "worldcover")


def tile_epsg(tile: int) -> int:
    return 32631 if tile < 6 else 32632


def tile_origin(tile: int) -> tuple[float, float]:
    return 400_000.0 + 2560 * (tile % 6), 5_000_000.0 - 2560 * (tile // 6)


def tile_class(tile: int) -> int:
    return CLASSES[(tile * 3) % len(CLASSES)]


def classes_of(tile: int) -> np.ndarray:
    out = np.full((256, 256), tile_class(tile), dtype=np.uint8)
    other = CLASSES[(CLASSES.index(tile_class(tile)) + 1) % len(CLASSES)]
    y = 32 * (tile % 8)
    out[y : y + 32, 64:96] = other
    return out


def group_array(name: str, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    group = band_group(name)
    factor = int(group.resolution // 10)
    coarse = classes[::factor, ::factor]
    n = len(group.bands)
    if name == "s1":
        level = {c: -18.0 + 3.0 * i for i, c in enumerate(CLASSES)}
        base = np.stack([np.vectorize(level.get)(coarse) + b for b in range(n)]).astype(float)
        return (base[None] + rng.normal(0, 0.5, (N_PERIODS, *base.shape))).astype(np.float32)
    spectra = {c: 800 + 600 * ((np.arange(n) * (i + 2)) % 5) for i, c in enumerate(CLASSES)}
    values = np.stack([spectra[int(c)] for c in coarse.ravel()]).T.reshape(n, *coarse.shape)
    noisy = values[None] + rng.normal(0, 60, (N_PERIODS, *values.shape))
    return np.clip(noisy, 1, 10000).astype(np.uint16)


def write_embed_corpus(path: Path) -> None:
    corpus = create_corpus(path, N_TILES, N_PERIODS, PER_SHARD, groups=GROUPS)
    rng = np.random.default_rng(0)
    for k, span in enumerate(corpus.shards):
        samples = []
        for tile in span:
            classes = classes_of(tile)
            data: dict[str, np.ndarray] = {}
            fractions: dict[str, np.ndarray] = {}
            states = {
                "sentinel2_l2a": SampleState.DONE,
                "sentinel1": SampleState.DONE,
                "worldcover": SampleState.DONE,
            }
            for g in ("s2_10m", "s2_20m", "s2_40m", "s1"):
                data[g] = group_array(g, classes, rng)
                fractions[g] = np.ones(N_PERIODS, np.float32)
            if tile == MISSING_S2_PERIOD[0]:
                for g in ("s2_10m", "s2_20m", "s2_40m"):
                    data[g][MISSING_S2_PERIOD[1]] = 0
                    fractions[g][MISSING_S2_PERIOD[1]] = 0.0
            if tile in (S1_EMPTY, NO_INPUT):
                states["sentinel1"] = SampleState.EMPTY
                del data["s1"], fractions["s1"]
            if tile == NO_INPUT:
                states["sentinel2_l2a"] = SampleState.EMPTY
                del states["worldcover"]
                for g in ("s2_10m", "s2_20m", "s2_40m"):
                    del data[g], fractions[g]
            else:
                data["worldcover"] = classes[None]
                fractions["worldcover"] = np.float32(1.0)
            x0, y0 = tile_origin(tile)
            lon, lat = Transformer.from_crs(tile_epsg(tile), 4326, always_xy=True).transform(
                x0 + 1280, y0 - 1280
            )
            samples.append(
                SampleData(
                    tile_id=f"{tile_epsg(tile)}_{tile}",
                    epsg=tile_epsg(tile),
                    x0=x0,
                    y0=y0,
                    center_lon=float(lon),
                    center_lat=float(lat),
                    period_starts=np.array(["2024-04-01", "2024-08-01"], dtype="datetime64[D]"),
                    groups=data,
                    valid_fraction=fractions,
                    states=states,
                )
            )
        corpus.write_shard(k, samples)


def write_checkpoint(folder: Path, seed: int = 0, patch: int = 8, crop: int = 32) -> Path:
    """A checkpoint of a seeded random-init nano model, as pretraining records it."""
    model = init_model("nano", seed)
    settings = {
        "seed": seed,
        "model": {"size": "nano"},
        "loader": {"patch_sizes": [patch], "crop_sizes": [crop]},
        "store": "training-corpus.zarr",
    }
    state = {"format": CHECKPOINT_FORMAT, "step": 7, "model": model.state_dict()}
    return save_checkpoint(folder, 7, {**state, "settings": settings})
