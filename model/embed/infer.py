"""Tiled inference: whole tiles -> per-patch embedding maps and pooled tile embeddings.

Attention grows with the square of the token count, and a whole 256 px tile is far
beyond the context any encoder was trained on: at patch 4 with 12 periods of the five
encodable groups it is 246k tokens (the demo trains on 32 px crops at patch 8: 960). So a
tile is cut into non-overlapping `window` x `window` px windows, each window is encoded
on its own exactly as an evaluation crop is (`model.encode`: every valid token of every
encodable group), and the windows' tokens are put back on the tile's token grid. With
`window` = the tile (256 px) the result is the encoder's view of the whole tile, which
is what the tests compare against `encode` and `evaluate`.

Per patch (token grid cell) the map holds the mean of its encoded tokens over band groups
and timesteps (`evaluate`'s segmentation features); `tokens` counts them (0: nothing was
encoded there, the map is NaN). The pooled tile embedding is the mean of *all* encoded
tokens of the tile (the sum over the map weighted by `tokens`), i.e. `encode`'s pooled
embedding when one window covers the tile. Sums run in float32 whatever the compute
precision (bf16 autocast on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from terracube.model.nn.batch import Batch
from terracube.model.nn.groups import encodable_groups
from terracube.model.nn.olmoearth import LatentMIM
from torch import Tensor


@dataclass(frozen=True)
class TileEmbeddings:
    """Embeddings of a batch of whole tiles (B tiles, token grid h x w, width D)."""

    maps: np.ndarray
    """float32 (B, h, w, D): mean encoded token per patch; NaN where `tokens` is 0."""
    tokens: np.ndarray
    """uint16 (B, h, w): tokens encoded per patch (over groups and timesteps)."""
    pooled: np.ndarray
    """float32 (B, D): mean of every encoded token of the tile; NaN when there is none."""
    present: np.ndarray
    """bool (B, G, T): the input group had at least one valid pixel at that timestep."""
    groups: tuple[str, ...]
    """The G input groups, in the model's (registry) order."""


def input_groups(batch: Batch) -> tuple[str, ...]:
    return tuple(g for g in batch.groups if g in encodable_groups())


def cut_windows(batch: Batch, window: int) -> Batch:
    """The batch's tiles cut into non-overlapping windows, tile-major then row-major:
    (B * n * n) samples of `window` px, where n = tile px / window."""
    h, w = next(iter(batch.data.values())).shape[-2:]
    if h % window or w % window:
        raise ValueError(f"window={window} px does not divide the {h}x{w} px tile")
    ny, nx = h // window, w // window
    data, valid = {}, {}
    for g in input_groups(batch):
        x, v = batch.data[g], batch.valid[g]
        b, t, c = x.shape[:3]
        x = x.reshape(b, t, c, ny, window, nx, window).permute(0, 3, 5, 1, 2, 4, 6)
        v = v.reshape(b, t, ny, window, nx, window).permute(0, 2, 4, 1, 3, 5)
        data[g] = x.reshape(b * ny * nx, t, c, window, window)
        valid[g] = v.reshape(b * ny * nx, t, window, window)
    months = batch.months.repeat_interleave(ny * nx, dim=0)
    return Batch(data, valid, months, patch_size=batch.patch_size, gsd=batch.gsd)


def patch_sums(model: LatentMIM, batch: Batch) -> tuple[Tensor, Tensor]:
    """float32 (B, h, w, D) sums of each patch's encoded tokens and (B, h, w) their count."""
    _, tokens = model.encode(batch)
    total: Tensor | None = None
    count: Tensor | None = None
    for g in input_groups(batch):
        encoded = batch.token_valid(g)  # (B, T, h, w): what encode() encoded
        part = (tokens[g].float() * encoded[..., None]).sum(1)
        part_count = encoded.sum(1)
        total = part if total is None else total + part
        count = part_count if count is None else count + part_count
    if total is None or count is None:
        raise ValueError(f"the batch has no encodable group (groups: {batch.groups})")
    return total, count


def _window_chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def embed_tiles(
    model: LatentMIM, batch: Batch, window: int, windows_per_step: int = 16
) -> TileEmbeddings:
    """Encode `batch` (whole tiles, any device) window by window; see the module doc.

    `windows_per_step` windows go through the encoder at once (memory ~ that many crops)."""
    h, w = next(iter(batch.data.values())).shape[-2:]
    p = batch.patch_size
    ny, nx, b = h // window, w // window, batch.batch_size
    windows = cut_windows(batch, window)
    sums, counts = [], []
    autocast = batch.months.device.type == "cuda"
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast),
    ):
        for part in _window_chunks(windows.batch_size, windows_per_step):
            sub = Batch(
                {g: x[part] for g, x in windows.data.items()},
                {g: v[part] for g, v in windows.valid.items()},
                windows.months[part],
                patch_size=p,
                gsd=batch.gsd,
            )
            s, c = patch_sums(model, sub)
            sums.append(s.float())
            counts.append(c)
    gy, gx = window // p, window // p
    total = torch.cat(sums).reshape(b, ny, nx, gy, gx, -1).permute(0, 1, 3, 2, 4, 5)
    total = total.reshape(b, ny * gy, nx * gx, -1)
    count = torch.cat(counts).reshape(b, ny, nx, gy, gx).permute(0, 1, 3, 2, 4)
    count = count.reshape(b, ny * gy, nx * gx)
    maps = total / count[..., None].clamp(min=1)
    maps = torch.where(count[..., None] > 0, maps, torch.full_like(maps, float("nan")))
    n_tile = count.sum((1, 2))
    pooled = total.sum((1, 2)) / n_tile[:, None].clamp(min=1)
    pooled = torch.where(n_tile[:, None] > 0, pooled, torch.full_like(pooled, float("nan")))
    groups = input_groups(batch)
    present = torch.stack([batch.valid[g].flatten(2).any(-1) for g in groups], dim=1)
    return TileEmbeddings(
        maps=maps.cpu().numpy().astype(np.float32),
        tokens=count.cpu().numpy().astype(np.uint16),
        pooled=pooled.cpu().numpy().astype(np.float32),
        present=present.cpu().numpy(),
        groups=groups,
    )
