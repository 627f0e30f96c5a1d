"""A PNG of one corpus sample for a human check: S2 true colour per period, S1, WorldCover, OSM.

Reads only the corpus (so it shows what the loader will see) and always carries
the attribution line the sources' licences ask for.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from terracube.catalog.registry import band_group
from terracube.pipeline.corpus.integrity import checked_record
from terracube.pipeline.corpus.store import Corpus, SampleState

ATTRIBUTION = (
    "Contains modified Copernicus Sentinel data; (c) ESA WorldCover project 2021; "
    "(c) OpenStreetMap contributors"
)

WORLDCOVER_COLOURS: dict[int, str] = {
    10: "#006400", 20: "#ffbb22", 30: "#ffff4c", 40: "#f096ff", 50: "#fa0000", 60: "#b4b4b4",
    70: "#f0f0f0", 80: "#0064c8", 90: "#0096a0", 95: "#00cf75", 100: "#fae6a0",
}  # fmt: skip
"""ESA WorldCover v200 legend colours (the product's own palette)."""


def _true_colour(s2: np.ndarray) -> np.ndarray:
    """(bands, y, x) s2_10m stored reflectance x 10000 -> RGB in [0, 1] (B04, B03, B02)."""
    names = band_group("s2_10m").band_names
    rgb = np.stack([s2[names.index(b)] for b in ("B04", "B03", "B02")], axis=-1).astype(float)
    return np.clip(rgb / 3000.0, 0, 1)


def _worldcover_rgb(classes: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3))
    for code, colour in WORLDCOVER_COLOURS.items():
        lut[code] = matplotlib.colors.to_rgb(colour)
    return lut[classes]


def quicklook(store: str | os.PathLike[str], sample: int, out_png: str | os.PathLike[str]) -> Path:
    """Write the PNG of `sample` of the corpus at `store`; returns its path."""
    corpus = Corpus.open(store)
    record = checked_record(corpus, sample)
    groups = corpus.params.groups
    panels: list[tuple[str, np.ndarray, dict]] = []
    starts = [str(d) for d in record.period_starts]
    if "s2_10m" in groups and record.states.get("sentinel2_l2a") is SampleState.DONE:
        fractions = np.asarray(record.valid_fraction["s2_10m"])  # read_record: an array already
        for t, start in enumerate(starts):
            vf = float(fractions[t])
            panels.append((f"S2 {start} ({vf:.0%})", _true_colour(record.groups["s2_10m"][t]), {}))
    if "s1" in groups and record.states.get("sentinel1") is SampleState.DONE:
        vv = record.groups["s1"][:, 0]
        valid = [t for t in range(len(starts)) if np.isfinite(vv[t]).any()]
        if valid:
            t = valid[0]
            panels.append(
                (f"S1 VV dB {starts[t]}", vv[t], {"cmap": "gray", "vmin": -25, "vmax": 0})
            )
    if "worldcover" in groups and record.states.get("worldcover") is SampleState.DONE:
        panels.append(("WorldCover 2021", _worldcover_rgb(record.groups["worldcover"][0]), {}))
    if "osm" in groups and record.states.get("openstreetmap") is SampleState.DONE:
        osm = record.groups["osm"]
        cover = np.where(osm == 255, 0, osm).max(axis=0)
        cmap = ListedColormap(["white", *plt.get_cmap("magma_r")(np.linspace(0.2, 1, 100))])
        panels.append(("OSM max cover %", cover, {"cmap": cmap, "vmin": 0, "vmax": 100}))
    if not panels:
        raise ValueError(
            f"sample {sample} of {store} has no built (done) modality to show; "
            f"states: {{{', '.join(f'{k}: {v.name}' for k, v in record.states.items())}}}"
        )
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image, kwargs) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(image, interpolation="nearest", **kwargs)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"{record.tile_id} (EPSG:{record.epsg})", fontsize=10)
    fig.text(0.5, 0.01, ATTRIBUTION, ha="center", fontsize=6)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
