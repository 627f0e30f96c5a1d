"""External benchmark datasets in their published folder layouts, mapped onto registry groups.

EuroSAT (Helber et al.) multispectral: `EuroSAT_MS/<Class>/<Class>_<n>.tif`, 64 x 64 px,
13 uint16 bands, all already resampled to 10 m by the dataset authors. The band
order *in the files* is B01..B08, B09, B10, B11, B12, B8A (B8A last, not in
wavelength order) — checked on the real files: band 10 (B10, cirrus) is ~10 DN,
band 13 tracks B08 (narrow NIR). B10 is dropped (the registry has no cirrus band);
the other 12 fill s2_10m / s2_20m / s2_40m on the shared 10 m grid. EuroSAT is
Sentinel-2 L1C top-of-atmosphere reflectance x 10000 from before processing
baseline 04.00 (no +1000 offset), while the corpus holds L2A surface reflectance:
the registry normalisation is applied as is, and that domain gap is part of the
benchmark. The files carry no acquisition date, so every sample gets one fixed
month (a parameter), which therefore carries no label information.

BigEarthNet v1 (Sumbul et al.), Sentinel-2 part (`BigEarthNet-v1.0/`): one folder per
patch holding `<patch>_B01.tif` .. `<patch>_B12.tif` (B8A included, no B10) at native
10 / 20 / 60 m (120 / 60 / 20 px) and `<patch>_labels_metadata.json` with `"labels"`
(multi-label) and `"acquisition_date"` ("2017-06-13 10:10:31"). Coarser bands are
repeated onto the 10 m grid. Sentinel-1 part (BigEarthNet-S1-v1.0, Montanaro et al.):
`<patch>_VV.tif`, `<patch>_VH.tif` (float32 backscatter in dB, 120 px at 10 m, no
nodata) and a JSON with `"acquisition_time"` ("2017-06-13T16:50:43") and
`"corresponding_s2_patch"`, the S2 patch of the same 1200 m cell: that key pairs the
two (the S1 date may be a day off the S2 one; names are not parsed, some S2 names lack
a digit of the hour). Checked on real v1.0 patches (tests/data/bigearthnet/SOURCES.md).

Mapping is by registry band name/alias; a group with any band missing is a missing
group (absent, or not present for that sample), never zeros.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from terracube.catalog.registry import MODALITIES, BandGroup
from terracube.model.eval.tasks import EvalSet

EUROSAT_FILE_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
)
"""Band order inside EuroSAT_MS GeoTIFFs (verified on the real files, see module doc)."""

EUROSAT_SIZE = 64
BIGEARTHNET_SIZE = 120
"""BigEarthNet patch edge at 10 m (1200 m); 20 m bands are 60 px, 60 m bands 20 px."""

_S2_GROUPS: tuple[BandGroup, ...] = MODALITIES["sentinel2_l2a"].groups
_S1_GROUPS: tuple[BandGroup, ...] = MODALITIES["sentinel1"].groups
ARCHIVE_S2, ARCHIVE_S1 = "BigEarthNet-v1.0", "BigEarthNet-S1-v1.0"
"""Folder names the two v1.0 archives unpack to."""


def registry_layout(source_bands: Sequence[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Map source band names to registry groups: group -> source index per registry band
    (registry band order), plus the source bands the registry does not have (dropped).

    A group is included only when all of its bands are in `source_bands`."""
    index = {name.upper(): i for i, name in enumerate(source_bands)}
    layout: dict[str, list[int]] = {}
    used: set[int] = set()
    for group in _S2_GROUPS:
        positions = []
        for band in group.bands:
            hit = next((index[a.upper()] for a in band.aliases if a.upper() in index), None)
            positions.append(hit)
        if all(p is not None for p in positions):
            layout[group.name] = [int(p) for p in positions if p is not None]
            used.update(layout[group.name])
    dropped = [name for i, name in enumerate(source_bands) if i not in used]
    return layout, dropped


# --------------------------------------------------------------------------- EuroSAT

_EUROSAT_FILE = re.compile(r"^(?P<cls>[A-Za-z]+)_(?P<n>\d+)\.tif$")


def eurosat_files(root: Path) -> list[tuple[str, Path]]:
    """(class, path) of every EuroSAT_MS tile, sorted by class then number."""
    root = Path(root)
    base = root / "EuroSAT_MS" if (root / "EuroSAT_MS").is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"EuroSAT folder {root} does not exist")
    found: list[tuple[str, int, Path]] = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for path in class_dir.glob("*.tif"):
            match = _EUROSAT_FILE.match(path.name)
            if not match or match["cls"] != class_dir.name:
                raise ValueError(
                    f"{path} does not follow EuroSAT_MS/<Class>/<Class>_<n>.tif; "
                    "point at the unpacked EuroSAT_MS folder as published"
                )
            found.append((class_dir.name, int(match["n"]), path))
    if not found:
        raise FileNotFoundError(
            f"no EuroSAT_MS/<Class>/<Class>_<n>.tif under {root}; download EuroSAT_MS.zip and unpack it"
        )
    return [(cls, path) for cls, _, path in sorted(found)]


def read_eurosat_tile(path: Path) -> np.ndarray:
    """(13, 64, 64) uint16 in file band order, after checking the published format."""
    with rasterio.open(path) as ds:
        if ds.count != len(EUROSAT_FILE_BANDS) or ds.dtypes[0] != "uint16":
            raise ValueError(
                f"{path}: {ds.count} bands of {ds.dtypes[0]}; EuroSAT_MS tiles have 13 uint16 "
                "bands (is this an EuroSAT_RGB jpg/tif?)"
            )
        if (ds.height, ds.width) != (EUROSAT_SIZE, EUROSAT_SIZE):
            raise ValueError(f"{path}: {ds.height}x{ds.width} px; EuroSAT tiles are 64x64")
        return ds.read()


def read_eurosat(root: Path, class_names: Sequence[str] | None = None, month: int = 0) -> EvalSet:
    """All EuroSAT_MS tiles under `root` as a single-label classification set.

    `class_names` fixes the label order (default: the class folders found, sorted)."""
    if not 0 <= month <= 11:
        raise ValueError(f"month={month}; use a calendar month 0..11 (January = 0)")
    files = eurosat_files(root)
    names = tuple(class_names) if class_names is not None else tuple(sorted({c for c, _ in files}))
    unknown = sorted({c for c, _ in files} - set(names))
    if unknown:
        raise ValueError(f"EuroSAT classes {unknown} are not in class_names {list(names)}")
    layout, _ = registry_layout(EUROSAT_FILE_BANDS)
    tiles = np.stack([read_eurosat_tile(p) for _, p in files])  # (N, 13, 64, 64)
    n = len(files)
    return EvalSet(
        name="eurosat",
        kind="classification",
        raw={g: tiles[:, None, idx] for g, idx in layout.items()},
        present={g: np.ones((n, 1), dtype=bool) for g in layout},
        months=np.full((n, 1), month, dtype=np.int64),
        labels=np.array([names.index(c) for c, _ in files], dtype=np.int64),
        class_names=names,
        split_keys=np.array([p.stem for _, p in files]),
    )


# --------------------------------------------------------------------------- BigEarthNet


def bigearthnet_patches(root: Path) -> list[Path]:
    """Patch folders (those with `<name>_labels_metadata.json`), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BigEarthNet folder {root} does not exist")
    patches = sorted(
        p for p in root.iterdir() if p.is_dir() and (p / f"{p.name}_labels_metadata.json").is_file()
    )
    if not patches:
        raise FileNotFoundError(
            f"no BigEarthNet patch folder (<patch>/<patch>_labels_metadata.json) under {root}"
        )
    return patches


def _read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        band = ds.read(1)
    size = band.shape[0]
    if band.shape[0] != band.shape[1] or BIGEARTHNET_SIZE % size:
        raise ValueError(
            f"{path}: {band.shape[0]}x{band.shape[1]} px; BigEarthNet bands are square with "
            f"an edge dividing {BIGEARTHNET_SIZE} (120 / 60 / 20 px at 10 / 20 / 60 m)"
        )
    factor = BIGEARTHNET_SIZE // size
    return band.repeat(factor, axis=0).repeat(factor, axis=1)


def _metadata(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / f"{folder.name}_labels_metadata.json"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: 'labels' must be a list of class names, got {labels!r}")
    return path, meta


def _is_s1(meta: dict[str, Any]) -> bool:
    return "corresponding_s2_patch" in meta


def _month(meta_path: Path, meta: dict[str, Any]) -> int:
    key = "acquisition_time" if _is_s1(meta) else "acquisition_date"
    example = "2017-06-13T16:50:43" if _is_s1(meta) else "2017-06-13 10:10:31"
    date = meta.get(key)
    try:
        return datetime.fromisoformat(str(date)).month - 1
    except ValueError:
        raise ValueError(f"{meta_path}: {key}={date!r} is not a date like {example!r}") from None


def _read_patch(folder: Path) -> tuple[dict[str, np.ndarray], list[str], int]:
    """Registry groups found in one S2 or S1 patch (B, 120, 120), its labels and month."""
    meta_path, meta = _metadata(folder)
    month = _month(meta_path, meta)
    groups: dict[str, np.ndarray] = {}
    for group in _S1_GROUPS if _is_s1(meta) else _S2_GROUPS:
        paths = [folder / f"{folder.name}_{b.name}.tif" for b in group.bands]
        if all(p.is_file() for p in paths):
            groups[group.name] = np.stack([_read_band(p) for p in paths])
    return groups, list(meta["labels"]), month


def _patch_folders(root: Path) -> tuple[list[Path], list[Path]]:
    """(S2 patch folders, S1 patch folders) under `root`, or under its BigEarthNet-v1.0 /
    BigEarthNet-S1-v1.0 children when `root` is the folder holding both archives."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BigEarthNet folder {root} does not exist")
    parts = [root / ARCHIVE_S2, root / ARCHIVE_S1]
    roots = [p for p in parts if p.is_dir()] or [root]
    s2: list[Path] = []
    s1: list[Path] = []
    for folder in (f for r in roots for f in bigearthnet_patches(r)):
        (s1 if _is_s1(_metadata(folder)[1]) else s2).append(folder)
    return s2, s1


def _pair(s2: list[Path], s1: list[Path]) -> dict[str, Path]:
    """S2 patch name -> its S1 patch folder (from the S1 JSON's corresponding_s2_patch)."""
    pairs: dict[str, Path] = {}
    for folder in s1:
        partner = str(_metadata(folder)[1]["corresponding_s2_patch"])
        if partner in pairs:
            raise ValueError(
                f"{folder.name} and {pairs[partner].name} both name {partner} as their S2 patch"
            )
        pairs[partner] = folder
    return pairs


def read_bigearthnet(root: Path, class_names: Sequence[str] | None = None) -> EvalSet:
    """BigEarthNet v1 patches under `root` as a multi-label set: S2 patches with their S1
    partner's `s1` group where the S1 half is there too, or S1 patches alone.

    `root` is a folder of patches (S2, S1 or both) or the folder holding the
    BigEarthNet-v1.0 and BigEarthNet-S1-v1.0 archives. `class_names` fixes the label
    columns (default: every label found, sorted). A group missing in some patches is
    marked not present there; one missing everywhere is absent."""
    s2, s1 = _patch_folders(root)
    samples = s2 or s1
    pairs = _pair(s2, s1) if s2 else {}
    patches = []
    for folder in samples:
        data, patch_labels, month = _read_patch(folder)
        partner = pairs.get(folder.name)
        if partner is not None:
            s1_data, s1_labels, _ = _read_patch(partner)
            if sorted(s1_labels) != sorted(patch_labels):
                raise ValueError(
                    f"{partner.name} labels {s1_labels} differ from its S2 patch "
                    f"{folder.name} labels {patch_labels}"
                )
            data = {**data, **s1_data}
        patches.append((data, patch_labels, month))
    found = sorted({label for _, labels, _ in patches for label in labels})
    names = tuple(class_names) if class_names is not None else tuple(found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"BigEarthNet labels {unknown} are not in class_names")
    all_groups = (*_S2_GROUPS, *_S1_GROUPS)
    groups = [g for g in all_groups if any(g.name in p[0] for p in patches)]
    if not groups:
        raise ValueError(f"no BigEarthNet patch under {root} has a complete band group")
    n = len(samples)
    raw, present = {}, {}
    for g in groups:
        n_bands = len(g.bands)
        arr = np.zeros((n, 1, n_bands, BIGEARTHNET_SIZE, BIGEARTHNET_SIZE), dtype=g.bands[0].dtype)
        if arr.dtype.kind == "f":
            arr[:] = np.nan
        ok = np.zeros((n, 1), dtype=bool)
        for i, (data, _, _) in enumerate(patches):
            if g.name in data:
                arr[i, 0], ok[i, 0] = data[g.name], True
        raw[g.name], present[g.name] = arr, ok
    labels = np.zeros((n, len(names)), dtype=bool)
    for i, (_, patch_labels, _) in enumerate(patches):
        labels[i, [names.index(x) for x in patch_labels]] = True
    return EvalSet(
        name="bigearthnet",
        kind="multilabel",
        raw=raw,
        present=present,
        months=np.array([[m] for _, _, m in patches], dtype=np.int64),
        labels=labels,
        class_names=names,
        split_keys=np.array([f.name for f in samples]),
    )
