"""The demo's embedding figure: the first principal component of the exported per-patch
embeddings, mapped over the demo tiles in longitude / latitude.

The components are fitted on every embedded patch of every tile at once (centred,
SVD), so one colour means the same thing on every tile. Each tile's patch grid is drawn
at its true lon/lat corners (projected from its own UTM CRS), so tiles of different zones
sit where they are. Patches with nothing encoded (NaN) stay blank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def principal_components(maps: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, h, w, k) projections of the valid patches on the first k components (NaN
    elsewhere), and the share of variance each component explains."""
    flat = maps.reshape(-1, maps.shape[-1]).astype(np.float64)
    valid = ~np.isnan(flat).any(axis=1)
    x = flat[valid] - flat[valid].mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    share = s**2 / float((s**2).sum())
    out = np.full((flat.shape[0], k), np.nan)
    out[valid] = x @ vt[:k].T
    return out.reshape(*maps.shape[:-1], k), share[:k]


def pca_map(store: Path, out_png: Path) -> dict[str, Any]:
    """Draw PC1 of `store`'s embedding maps over lon/lat into `out_png`; what it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr
    from pyproj import Transformer
    from terracube.catalog.bands import TILE_SIZE_M
    from terracube.model.embed.store import EmbedState

    ds = xr.open_zarr(store)
    done = np.flatnonzero(ds["state"].values == EmbedState.DONE)
    maps = ds["embedding"].values[done]
    pcs, share = principal_components(maps)
    pc1 = pcs[..., 0]
    low, high = np.nanpercentile(pc1, [2, 98])
    side = maps.shape[1]
    edges = np.linspace(0.0, TILE_SIZE_M, side + 1)
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    mesh = None
    lats = []
    for row, sample in enumerate(done):
        epsg = int(ds["epsg"].values[sample])
        x0, y0 = float(ds["x0"].values[sample]), float(ds["y0"].values[sample])
        xx, yy = np.meshgrid(x0 + edges, y0 - edges)
        lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xx, yy)
        mesh = ax.pcolormesh(
            lon, lat, pc1[row], cmap="viridis", vmin=low, vmax=high, shading="flat"
        )
        lats.append(float(np.mean(lat)))
    ax.set_xlabel("longitude (degrees)")
    ax.set_ylabel("latitude (degrees)")
    ax.set_aspect(1 / np.cos(np.deg2rad(float(np.mean(lats)))))
    ax.set_title(
        f"embedding PC1 ({share[0]:.0%} of variance), {len(done)} tiles, "
        f"{side}x{side} patches each",
        fontsize=9,
    )
    if mesh is not None:
        fig.colorbar(mesh, ax=ax, shrink=0.8, label="PC1")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return {
        "tiles": len(done),
        "patches_per_tile": side * side,
        "variance_share": [round(float(v), 4) for v in share],
        "dim": int(maps.shape[-1]),
    }
