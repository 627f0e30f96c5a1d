"""Warm-up for the compiled (numba) kernels that loader workers run.

The kernels live next to what they compute: `train/masking_kernel.py` (masks),
`data/validity.py` (pixel and token validity), `pipeline/corpus/shard_geometry.py`
(which chunks a window touches) and `pipeline/corpus/shard_kernel.py` (locate a
shard's chunks; read, decode and place a window's).
"""

from __future__ import annotations

import numpy as np
from terracube.catalog.registry import band_group
from terracube.model.data.validity import pixel_validity, pooled_validity
from terracube.model.nn.groups import all_groups
from terracube.model.train.masking_kernel import mask_views
from terracube.pipeline.corpus.shard_geometry import ShardLayout, window_chunks
from terracube.pipeline.corpus.shard_kernel import decode_window, locate_chunks, read_lone_chunk


def compile_kernels() -> None:
    """Compile (or load from numba's on-disk cache) every kernel a worker runs, by running
    each on a tiny input. `StreamingLoader` calls it before forking its workers, so they
    inherit the machine code instead of each spending ~0.4 s (cached) to ~4 s (first run
    on a machine) on it at their first batch."""
    starts, sizes, no_chunks = np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros(0, np.int64)
    mask_views(
        np.ones(1, bool), starts, sizes, np.ones(1, bool), 1, 2, 0, np.empty((1, 2, 1), bool)
    )
    pooled_validity(np.ones((1, 1, 1, 1), bool), 1, 1, np.empty((1, 1, 1, 1), bool))
    for dtype in {np.dtype(band_group(g).dtype) for g in all_groups()}:
        pixels = np.zeros((1, 1, 1, 1), dtype)
        flags, out = np.zeros(1, bool), np.ones((1, 1, 1), bool)
        pixel_validity(pixels, np.zeros(1, dtype), flags, flags, out)
    window_chunks(ShardLayout((1, 1), (1, 1)), 0, ((0, 1),))  # one compiled call per shard
    byte, boxes = np.zeros((1, 1, 1, 1), np.uint8), np.zeros((0, 4), np.int64)
    status = np.zeros(2, np.int64)
    decode_window(
        0, -1, byte.reshape(-1), no_chunks, no_chunks, no_chunks > 0,
        boxes, boxes, boxes, 0, 0, 0, 1, byte, byte, byte.reshape(-1), status,
    )  # fmt: skip
    locate_chunks(-1, np.zeros(20, np.uint8), no_chunks, no_chunks, status)  # fails: no file
    read_lone_chunk(0, -1, np.zeros(2, np.uint8), np.zeros(1, np.uint8), status)  # same
