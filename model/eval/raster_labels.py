"""Label rasters a user brings: `raster-classification` / `raster-segmentation` tasks.

A labels folder holds one single-band GeoTIFF per UTM zone the corpus touches (any
name; the file's CRS picks the zone), at 10 m on the corpus grid (pixel edges on
multiples of 10 m, so a tile's 256 x 256 window is read as it is, never resampled),
with the nodata value marking unlabelled pixels, and optionally `classes.json`:
`{"classes": {"1": "spring crop", ...}, "nodata": 0}`. Without it every value found
in the rasters' windows is a class named after its value.

The synthetic world writes its crop-type truth in this format (truth/crop_types/), which
makes the context task of docs/evaluation.md the same code path as a user's own labels.
Labels are read only for tiles the rasters cover entirely; a tile half outside is an
error naming it (a partial window would be scored as unlabelled without saying so).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.windows import Window
from terracube.catalog.bands import BASE_RESOLUTION_M, TILE_SIZE_M
from terracube.model.eval.tasks import IGNORE, CropParams, EvalSet, corpus_crop_task
from terracube.pipeline.corpus.store import Corpus

CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class LabelRaster:
    path: Path
    epsg: int
    x0: float
    y_top: float
    width: int
    height: int
    nodata: float | None


@dataclass(frozen=True)
class LabelRasters:
    """The rasters of a labels folder, by EPSG, and the class codes and names."""

    root: Path
    rasters: dict[int, LabelRaster]
    codes: tuple[int, ...]
    names: tuple[str, ...]
    nodata: float | None

    @classmethod
    def open(cls, labels: str | os.PathLike[str]) -> LabelRasters:
        root = Path(labels)
        files = (
            [root] if root.is_file() else sorted(root.glob("*.tif")) + sorted(root.glob("*.tiff"))
        )
        if not files:
            raise ValueError(
                f"labels {root} holds no GeoTIFF; pass a folder of label rasters (one per UTM "
                "zone, 10 m, nodata = unlabelled) or one .tif"
            )
        rasters: dict[int, LabelRaster] = {}
        for path in files:
            with rasterio.open(path) as src:
                epsg = src.crs.to_epsg() if src.crs else None
                a, b, c, d, e, f = tuple(src.transform)[:6]
                if epsg is None:
                    raise ValueError(
                        f"label raster {path} has no EPSG CRS; write it in the tiles' UTM zone"
                    )
                if (
                    (a, b, d, e) != (BASE_RESOLUTION_M, 0.0, 0.0, -BASE_RESOLUTION_M)
                    or c % 10
                    or f % 10
                ):
                    raise ValueError(
                        f"label raster {path} is not on the 10 m corpus grid (transform "
                        f"{tuple(src.transform)[:6]}); resample it to 10 m pixels whose edges lie "
                        "on multiples of 10 m (gdalwarp -tr 10 10 -tap -r mode)"
                    )
                if epsg in rasters:
                    raise ValueError(
                        f"labels {root}: {path.name} and {rasters[epsg].path.name} are both in "
                        f"EPSG:{epsg}; merge them into one raster per zone"
                    )
                rasters[epsg] = LabelRaster(path, epsg, c, f, src.width, src.height, src.nodata)
        document: dict[str, Any] = {}
        classes_file = (root if root.is_dir() else root.parent) / CLASSES_FILE
        if classes_file.is_file():
            document = json.loads(classes_file.read_text())
        nodatas = {r.nodata for r in rasters.values()}
        nodata = document.get("nodata", next(iter(nodatas)) if len(nodatas) == 1 else None)
        named = {int(k): str(v) for k, v in document.get("classes", {}).items()}
        codes = tuple(sorted(named)) if named else ()
        return cls(root, rasters, codes, tuple(named[c] for c in codes), nodata)

    def window(self, epsg: int, x0: float, y0: float) -> np.ndarray:
        """The (256, 256) label codes of the tile whose upper-left corner is (x0, y0)."""
        raster = self.rasters.get(epsg)
        px = int(TILE_SIZE_M // BASE_RESOLUTION_M)
        if raster is None:
            raise ValueError(
                f"labels {self.root} has no raster in EPSG:{epsg} (it has "
                f"{sorted(self.rasters)}); add one for that zone or leave its tiles out"
            )
        col = (x0 - raster.x0) / BASE_RESOLUTION_M
        row = (raster.y_top - y0) / BASE_RESOLUTION_M
        if col < 0 or row < 0 or col + px > raster.width or row + px > raster.height:
            raise ValueError(
                f"label raster {raster.path} does not cover the tile at EPSG:{epsg} x0={x0} "
                f"y0={y0} entirely; extend it or evaluate a corpus inside it"
            )
        with rasterio.open(raster.path) as src:
            return src.read(1, window=Window(int(col), int(row), px, px))


def raster_task(
    store: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    kind: Literal["classification", "segmentation"],
    params: CropParams | None = None,
    groups: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> EvalSet:
    """Crops of every built corpus tile, labelled from the rasters of `labels`."""
    rasters = LabelRasters.open(labels)
    corpus = Corpus.open(store, storage_options)
    epsg, x0, y0 = (np.asarray(corpus.array(k)[:]) for k in ("epsg", "x0", "y0"))
    codes = rasters.codes
    if not codes:  # no classes.json: every value the windows hold, in order
        found: set[int] = set()
        for i in range(corpus.n_samples):
            window = rasters.window(int(epsg[i]), float(x0[i]), float(y0[i]))
            found |= {int(v) for v in np.unique(window) if v != rasters.nodata}
        codes = tuple(sorted(found))
    names = rasters.names or tuple(str(c) for c in codes)
    if not codes:
        raise ValueError(f"labels {rasters.root} hold no labelled pixel over {corpus.url!r}")
    lookup = {c: i for i, c in enumerate(codes)}

    def pixel_labels(sample: int, _: dict[str, np.ndarray]) -> np.ndarray:
        window = rasters.window(int(epsg[sample]), float(x0[sample]), float(y0[sample]))
        out = np.full(window.shape, IGNORE, dtype=np.int64)
        for code, index in lookup.items():
            out[window == code] = index
        return out

    return corpus_crop_task(
        corpus,
        f"raster-{kind}",
        kind,
        pixel_labels,
        names,
        params,
        groups,
        label_name=f"labelled (from {rasters.root.name})",
    )
