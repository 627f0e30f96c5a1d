"""A PNG of one corpus sample for a human check: S2 true colour per period, S1, WorldCover, OSM.

Reads only the corpus (so it shows what the loader will see) and always carries
the attribution line the sources' licences ask for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from terracube.catalog.registry import WORLDCOVER_CLASSES, band_group
from terracube.pipeline.corpus.integrity import checked_record
from terracube.pipeline.corpus.store import Corpus, SampleData, SampleState

ATTRIBUTION = (
    "Contains modified Copernicus Sentinel data; (c) ESA WorldCover project 2021; "
    "(c) OpenStreetMap contributors"
)

WORLDCOVER_COLOURS: dict[int, str] = {
    10: "#006400", 20: "#ffbb22", 30: "#ffff4c", 40: "#f096ff", 50: "#fa0000", 60: "#b4b4b4",
    70: "#f0f0f0", 80: "#0064c8", 90: "#0096a0", 95: "#00cf75", 100: "#fae6a0",
}  # fmt: skip
"""ESA WorldCover v200 legend colours (the product's own palette)."""


S2_PERIODS_SHOWN = 4
"""Sentinel-2 panels: the clearest periods (highest valid fraction), in time order."""
PANEL_INCHES = 2.3
OSM_LEGEND = 6
"""OpenStreetMap categories named in the legend (the largest by area)."""


def _true_colour(s2: np.ndarray) -> np.ndarray:
    """(bands, y, x) s2_10m stored reflectance x 10000 -> RGB in [0, 1] (B04, B03, B02)."""
    names = band_group("s2_10m").band_names
    rgb = np.stack([s2[names.index(b)] for b in ("B04", "B03", "B02")], axis=-1).astype(float)
    return np.clip(rgb / 3000.0, 0, 1)


def _landsat_colour(dn: np.ndarray) -> np.ndarray:
    """(bands, y, x) Landsat C2 L2 DN -> RGB in [0, 1] (SR_B4, SR_B3, SR_B2), scaled as the
    registry scales them (reflectance = DN x 2.75e-5 - 0.2); nodata (0) is black."""
    group = band_group("landsat")
    names = group.band_names
    bands = [group.bands[names.index(b)] for b in ("SR_B4", "SR_B3", "SR_B2")]
    rgb = np.stack(
        [dn[names.index(b.name)] * b.radiometry.scale + b.radiometry.offset for b in bands],
        axis=-1,
    )
    rgb = np.where(np.stack([dn[names.index(b.name)] for b in bands], -1) == 0, 0, rgb)
    return np.clip(rgb / 0.3, 0, 1)


def _worldcover_rgb(classes: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3))
    for code, colour in WORLDCOVER_COLOURS.items():
        lut[code] = matplotlib.colors.to_rgb(colour)
    return lut[classes]


def _legend(ax: Any, entries: list[tuple[str, str]]) -> None:
    """A small legend of (colour, label) under the panel."""
    handles = [Patch(facecolor=c, edgecolor="0.5", label=label) for c, label in entries]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=6,
        ncol=2, frameon=False, handlelength=1, columnspacing=0.8,
    )  # fmt: skip


def _colour_bar(fig: Any, ax: Any, image: Any, label: str) -> None:
    bar = fig.colorbar(image, ax=ax, orientation="horizontal", fraction=0.05, pad=0.03)
    bar.set_label(label, fontsize=6)
    bar.ax.tick_params(labelsize=6)


Panel = tuple[str, np.ndarray, dict[str, Any], Callable[[Any, Any, Any], None] | None]
"""(title, image, imshow options, what to add under it: legend or colour bar)."""


def _panels(record: SampleData, groups: tuple[str, ...]) -> list[Panel]:
    panels: list[Panel] = []
    starts = [str(d) for d in record.period_starts]
    done = {m for m, state in record.states.items() if state is SampleState.DONE}
    if "s2_10m" in groups and "sentinel2_l2a" in done:
        fractions = np.asarray(record.valid_fraction["s2_10m"])
        best = sorted(np.argsort(-fractions, kind="stable")[:S2_PERIODS_SHOWN].tolist())
        for t in best:
            image = _true_colour(record.groups["s2_10m"][t])
            panels.append((f"S2 {starts[t]} ({fractions[t]:.0%} valid)", image, {}, None))
    if "landsat" in groups and "landsat_c2l2" in done:
        fractions = np.asarray(record.valid_fraction["landsat"])
        t = int(np.argmax(fractions))
        if fractions[t] > 0:
            image = _landsat_colour(record.groups["landsat"][t])
            panels.append((f"Landsat {starts[t]} ({fractions[t]:.0%} valid)", image, {}, None))
    if "s1" in groups and "sentinel1" in done:
        vv = record.groups["s1"][:, 0]
        valid = [t for t in range(len(starts)) if np.isfinite(vv[t]).any()]
        if valid:
            t = valid[0]
            options = {"cmap": "gray", "vmin": -25, "vmax": 0}
            bar = _bar("VV backscatter (dB)")
            panels.append((f"S1 VV {starts[t]}", vv[t], options, bar))
    if "worldcover" in groups and "worldcover" in done:
        classes = record.groups["worldcover"][0]
        present = [int(c) for c in np.unique(classes) if int(c) in WORLDCOVER_COLOURS]
        entries = [(WORLDCOVER_COLOURS[c], WORLDCOVER_CLASSES[c]) for c in present]
        panels.append(
            ("WorldCover 2021", _worldcover_rgb(classes), {}, lambda f, a, i: _legend(a, entries))
        )
    if "osm" in groups and "openstreetmap" in done:
        panels.append(_osm_panel(record.groups["osm"]))
    return panels


def _bar(label: str) -> Callable[[Any, Any, Any], None]:
    return lambda fig, ax, image: _colour_bar(fig, ax, image, label)


def _osm_panel(osm: np.ndarray) -> Panel:
    """The category covering most of each pixel, the largest categories named."""
    names = band_group("osm").band_names
    cover = np.where(osm == 255, 0, osm).astype(np.int16)
    area = cover.reshape(len(names), -1).sum(axis=1)
    ranked = [int(i) for i in np.argsort(-area, kind="stable") if area[i] > 0]
    shown = ranked[:OSM_LEGEND]
    colours = plt.get_cmap("tab10")(np.arange(len(shown)))
    rgb = np.full((*cover.shape[1:], 3), 0.96)  # no feature: light grey, not page white
    top = cover.argmax(axis=0)
    for colour, category in zip(colours, shown, strict=True):
        rgb[(top == category) & (cover.max(axis=0) > 0)] = colour[:3]
    other = (cover.max(axis=0) > 0) & ~np.isin(top, shown)
    rgb[other] = 0.55
    entries = [(matplotlib.colors.to_hex(c), names[i]) for c, i in zip(colours, shown, strict=True)]
    if len(ranked) > len(shown):
        entries.append(("#8c8c8c", f"{len(ranked) - len(shown)} other(s)"))
    title = "OSM: largest category" if ranked else "OSM: no features"
    return (title, rgb, {}, lambda f, a, i: _legend(a, entries) if entries else None)


def quicklook(store: str | os.PathLike[str], sample: int, out_png: str | os.PathLike[str]) -> Path:
    """Write the PNG of `sample` of the corpus at `store`; returns its path."""
    corpus = Corpus.open(store)
    record = checked_record(corpus, sample)
    panels = _panels(record, corpus.params.groups)
    if not panels:
        raise ValueError(
            f"sample {sample} of {store} has no built (done) modality to show; "
            f"states: {{{', '.join(f'{k}: {v.name}' for k, v in record.states.items())}}}"
        )
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    size = (PANEL_INCHES * cols, (PANEL_INCHES + 0.55) * rows + 0.35)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.13, wspace=0.08, hspace=0.5)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (title, image, kwargs, extra) in zip(axes.ravel(), panels, strict=False):
        shown = ax.imshow(image, interpolation="nearest", **kwargs)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("0.7")
        ax.set_title(title, fontsize=7)
        if extra is not None:
            extra(fig, ax, shown)
    fig.suptitle(f"sample {sample}: tile {record.tile_id} (EPSG:{record.epsg})", fontsize=8)
    fig.text(0.5, 0.005, ATTRIBUTION, ha="center", fontsize=5)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return out
