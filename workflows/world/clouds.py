"""Per-scene sky conditions on the 120 m block grid.

One code per block and scene; SCL and QA_PIXEL are derived from these codes,
and the truth keeps them, so the set of clear observations of any pixel is
known exactly at every resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLEAR, CLOUD_HIGH, CLOUD_MEDIUM, SHADOW, CIRRUS, DILATED, FILL = 0, 1, 2, 3, 4, 5, 6
SKY_NAMES = {
    CLEAR: "clear",
    CLOUD_HIGH: "cloud high probability",
    CLOUD_MEDIUM: "cloud medium probability",
    SHADOW: "cloud shadow",
    CIRRUS: "thin cirrus",
    DILATED: "dilated cloud (Landsat)",
    FILL: "fill, outside the footprint (Landsat)",
}
"""Block sky codes (truth/masks_*.npy); only CLEAR is a valid observation."""

MAX_CLOUD_SHARE = 0.52
MAX_CIRRUS_SHARE = 0.08
"""Cloud plus cirrus stay within 60 % of a scene (all-cloud scenes aside)."""


@dataclass(frozen=True)
class SkyParams:
    """How one scene's sky is drawn."""

    cloud_share: float
    cirrus_share: float
    shadow_shift: tuple[int, int]
    all_cloud: bool = False
    dilate: bool = False


def draw_sky_params(rng: np.random.Generator, all_cloud: bool, dilate: bool) -> SkyParams:
    """A quarter of scenes are clear; the rest 2-52 % cloud plus up to 8 % cirrus."""
    clear = rng.random() < 0.25
    return SkyParams(
        cloud_share=0.0 if clear else float(rng.uniform(0.02, MAX_CLOUD_SHARE)),
        cirrus_share=0.0 if clear else float(rng.uniform(0.0, MAX_CIRRUS_SHARE)),
        shadow_shift=(int(rng.integers(2, 5)), int(rng.integers(-4, 5))),
        all_cloud=all_cloud,
        dilate=dilate,
    )


def _blob_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth random field: coarse noise, bilinearly interpolated to the block grid."""
    rows, cols = shape
    coarse = rng.standard_normal((rows // cell + 2, cols // cell + 2))
    y = np.arange(rows) / cell
    x = np.arange(cols) / cell
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _top_share(field: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the `share` highest values (exact count, ties broken by position)."""
    count = round(share * field.size)
    mask = np.zeros(field.size, dtype=bool)
    if count:
        mask[np.argsort(-field.ravel(), kind="stable")[:count]] = True
    return mask.reshape(field.shape)


def draw_sky(
    rng: np.random.Generator, shape: tuple[int, int], params: SkyParams, fill: np.ndarray | None
) -> np.ndarray:
    """uint8 sky codes for one scene on its block grid."""
    sky = np.zeros(shape, dtype=np.uint8)
    if params.all_cloud:
        sky[:] = CLOUD_HIGH
    else:
        clouds = _blob_field(rng, shape, cell=8)
        cloudy = _top_share(clouds, params.cloud_share)
        thick = cloudy & _top_share(clouds, params.cloud_share * 0.6)
        dy, dx = params.shadow_shift
        shadow = np.zeros(shape, dtype=bool)
        shadow[dy:, max(dx, 0) : shape[1] + min(dx, 0)] = cloudy[
            : shape[0] - dy, max(-dx, 0) : shape[1] - max(dx, 0)
        ]
        cirrus = _top_share(_blob_field(rng, shape, cell=12), params.cirrus_share)
        sky[cirrus] = CIRRUS
        sky[shadow & ~cloudy] = SHADOW
        if params.dilate:
            grown = cloudy.copy()
            grown[1:, :] |= cloudy[:-1, :]
            grown[:-1, :] |= cloudy[1:, :]
            grown[:, 1:] |= cloudy[:, :-1]
            grown[:, :-1] |= cloudy[:, 1:]
            sky[grown & ~cloudy] = DILATED
        sky[cloudy] = CLOUD_MEDIUM
        sky[thick] = CLOUD_HIGH
    if fill is not None:
        sky[fill] = FILL
    return sky


def cloud_cover_percent(sky: np.ndarray) -> float:
    """eo:cloud_cover as providers compute it: cloud + cirrus share of valid (non-fill) pixels."""
    valid = sky != FILL
    cloudy = np.isin(sky, (CLOUD_HIGH, CLOUD_MEDIUM, CIRRUS)) & valid
    return round(100.0 * float(cloudy.sum()) / max(int(valid.sum()), 1), 4)
