"""What a corpus costs before anything is searched: shards, tasks, objects, bytes.

`terracube plan --dry-run` on an AOI of more than `SEARCH_LIMIT_TILES` tiles prints
this estimate instead of searching (searching two million tiles is the plan's own
work, not a preview of it). Everything here follows from the tile count and the
config: `cover_columns` counts the tiles of the contiguous US (2.06M) in about 4 s
without making a Tile, and the search regions are integer blocks of those columns.

**The default samples per shard** (`output.samples_per_shard` left out): 4 up to
`SHARDS_TARGET` x 4 samples, then the power of two that keeps the corpus near
`SHARDS_TARGET` shards, at most `MAX_DEFAULT_SAMPLES_PER_SHARD`. Measured
(docs/scale.md):

- `terracube status` and resume cost per shard, not per sample: 0.46 ms a shard on
  local disk (100k samples in 25k shards, 11.5 s), so 20k shards is about 9 s;
- every shard is ~28 objects (one per per-sample array), so 300k samples at 4 per
  shard is 2.1M objects and at 16, 525k;
- a build task is one shard: at 4 samples a 300k corpus is 75k tasks, which the
  client submits at 380-530 tasks/s (2-3 min of submission alone);
- the loader reads whole shards, and its shuffle mixes shards, so a bigger shard
  holds more neighbouring tiles per read; up to 16 the loader benchmark's figures are
  given per shard size in docs/scale.md. Beyond 32 a shard of the 10 m group of a
  12-period corpus passes 200 MB uncompressed, which the loader holds per read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from terracube.catalog.stac.search import RegionParams
from terracube.pipeline.corpus.schema import SAMPLE_DIM, CorpusParams, plan_arrays

SHARDS_TARGET = 20_000
"""Shards the default layout aims at: `status` reads about 20k shards in 9 s."""
MAX_DEFAULT_SAMPLES_PER_SHARD = 32
SEARCH_LIMIT_TILES = 50_000
"""Above this many tiles `plan --dry-run` estimates instead of searching."""
ASSIGNMENTS_PER_TILE = 130
"""Measured (plan_scale, 3 sensors x 12 months): assignment rows per tile."""
PLAN_BYTES_PER_TILE = 2_700
"""Measured: saved-plan bytes per tile without the items file (26.4 MB at 10k
worldwide tiles)."""


def default_samples_per_shard(n_samples: int) -> int:
    """Samples per shard when the config does not say (see the module docstring)."""
    if n_samples <= 4 * SHARDS_TARGET:
        return 4
    wanted = math.ceil(n_samples / SHARDS_TARGET)
    return min(MAX_DEFAULT_SAMPLES_PER_SHARD, 1 << (wanted - 1).bit_length())


@dataclass(frozen=True)
class Sizing:
    """The estimate for one corpus layout."""

    tiles: int
    samples_per_shard: int
    shards: int
    store_objects: int
    per_sample_arrays: int
    bytes_per_sample: int
    """Uncompressed bytes of one sample in the store (every array of it)."""
    search_regions: int
    search_calls: int
    plan_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "tiles": self.tiles,
            "samples_per_shard": self.samples_per_shard,
            "shards": self.shards,
            "build_tasks": self.shards,
            "store_objects": self.store_objects,
            "corpus_bytes_uncompressed": self.bytes_per_sample * self.tiles,
            "search_regions": self.search_regions,
            "search_calls": self.search_calls,
            "plan_assignment_rows": ASSIGNMENTS_PER_TILE * self.tiles,
            "plan_bytes": self.plan_bytes,
        }


def sizing(
    n_tiles: int,
    n_periods: int,
    groups: tuple[str, ...],
    samples_per_shard: int | None,
    search_regions: int,
    collections: int,
) -> Sizing:
    """Shards, objects and bytes of a corpus of `n_tiles` samples with these groups."""
    per_shard = samples_per_shard or default_samples_per_shard(n_tiles)
    params = CorpusParams(max(1, n_tiles), n_periods, per_shard, groups=groups)
    specs = plan_arrays(params)
    per_sample = [s for s in specs if s.dims and s.dims[0] == SAMPLE_DIM]
    sample_bytes = 0
    for spec in per_sample:
        itemsize = 8 if spec.dtype == "string" else np.dtype(spec.dtype).itemsize
        sample_bytes += itemsize * math.prod(spec.shape[1:])
    shards = math.ceil(n_tiles / per_shard)
    return Sizing(
        tiles=n_tiles,
        samples_per_shard=per_shard,
        shards=shards,
        store_objects=shards * len(per_sample) + len(specs) + 1,
        per_sample_arrays=len(per_sample),
        bytes_per_sample=sample_bytes,
        search_regions=search_regions,
        search_calls=search_regions * collections,
        plan_bytes=PLAN_BYTES_PER_TILE * n_tiles,
    )


def count_regions(
    epsg: np.ndarray, col: np.ndarray, row: np.ndarray, params: RegionParams | None = None
) -> int:
    """How many search regions `search.group_regions` makes of these tiles."""
    side = (params or RegionParams()).tiles_per_side
    blocks = np.column_stack([epsg, col // side, row // side])
    return len(np.unique(blocks, axis=0)) if len(blocks) else 0
