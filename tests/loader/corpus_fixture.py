"""A small structured corpus written with the Corpus API, for the loader and pretrain tests.

Values are a known function of (sample, period, band, y, x) so a test can recompute
what the loader must produce; holes of nodata, a missing timestep, an `empty`
modality, a never-built (pending) modality and a sample with nothing done cover the
missing-data paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, WORLDCOVER_CLASSES
from terracube.pipeline.corpus.store import (
    Corpus,
    InnerChunking,
    SampleData,
    SampleState,
    create_corpus,
)

N_SAMPLES = 12
N_PERIODS = 4
PER_SHARD = 2
GROUPS = ("s2_10m", "s2_20m", "s2_40m", "s1", "landsat", "worldcover", "osm")
NOTHING_DONE = 5
"""This sample has no modality done: the loader must skip it."""
S1_EMPTY = 3
"""Sentinel-1 is `empty` here: its pixels must be invalid."""
MISSING_PERIOD = (1, 2)
"""(sample, period) whose S2 timestep is missing (valid_fraction 0)."""
FIRST_PERIOD = np.datetime64("2024-01-01")


def group_values(sample: int, name: str) -> np.ndarray:
    """The stored array of `name` for `sample` (before the missing-period edit)."""
    g = BAND_GROUPS[name]
    temporal = MODALITIES[g.modality].temporal
    t = np.arange(N_PERIODS if temporal else 1)[:, None, None, None]
    b = np.arange(len(g.bands))[None, :, None, None]
    yy, xx = np.meshgrid(np.arange(g.pixels), np.arange(g.pixels), indexing="ij")
    ramp = ((yy + 2 * xx) % 17)[None, None]
    if name == "s1":
        out = (-20.0 + sample + 0.5 * t + b + 0.1 * ramp).astype(np.float32)
        out[:, :, 5:9, 5:9] = np.nan
    elif name == "worldcover":
        codes = np.array(sorted(WORLDCOVER_CLASSES), dtype=np.uint8)
        out = codes[(ramp + sample) % len(codes)].astype(np.uint8)
        out[:, :, :4, :4] = 0
    elif name == "osm":
        out = ((ramp * 6 + b + sample) % 101).astype(np.uint8)
        out[:, :, -3:, -3:] = 255
    else:
        out = (1000 + 100 * sample + 10 * t + b + ramp).astype(np.uint16)
        out[:, :, 10:14, 20:24] = 0  # a nodata hole
    return out if temporal else out[0]


def sample_data(sample: int) -> SampleData | None:
    if sample == NOTHING_DONE:
        return None
    groups = {}
    fractions: dict[str, np.ndarray] = {}
    states = {
        "sentinel2_l2a": SampleState.DONE,
        "worldcover": SampleState.DONE,
        "openstreetmap": SampleState.DONE,
        "sentinel1": SampleState.EMPTY if sample == S1_EMPTY else SampleState.DONE,
    }
    for name in ("s2_10m", "s2_20m", "s2_40m", "s1", "worldcover", "osm"):
        if name == "s1" and sample == S1_EMPTY:
            continue
        arr = group_values(sample, name)
        frac = np.ones(N_PERIODS if arr.ndim == 4 else (), dtype=np.float32) * 0.9
        if name.startswith("s2") and sample == MISSING_PERIOD[0]:
            arr[MISSING_PERIOD[1]] = 0
            frac[MISSING_PERIOD[1]] = 0.0
        groups[name], fractions[name] = arr, frac
    return SampleData(
        tile_id=f"32631_{sample}_0",
        epsg=32631,
        x0=399_360.0 + 2560 * sample,
        y0=5_002_240.0,
        center_lon=3.0,
        center_lat=45.0,
        period_starts=np.array(
            [FIRST_PERIOD + np.timedelta64(31 * (k + sample % 3), "D") for k in range(N_PERIODS)]
        ).astype("datetime64[D]"),
        groups=groups,
        valid_fraction=fractions,
        states=states,
        errors={"sentinel1": "no scene"} if sample == S1_EMPTY else {},
    )


def write_loader_corpus(
    path: Path, n_samples: int = N_SAMPLES, chunking: InnerChunking | None = None
) -> Corpus:
    corpus = create_corpus(path, n_samples, N_PERIODS, PER_SHARD, groups=GROUPS, chunking=chunking)
    for k, span in enumerate(corpus.shards):
        corpus.write_shard(k, [sample_data(i) for i in span])
    return corpus
