"""Labelled evaluation sets, and the built-in WorldCover tasks derived from a corpus.

An `EvalSet` holds storage values (registry dtypes) already placed on the shared
10 m grid, one array per band group, and is normalised batch by batch with the
loader's `GroupNormalizer` (corpus statistics when the corpus has them, registry
defaults otherwise), so the probe sees exactly what pretraining saw.

Built-in tasks crop corpus tiles into `crop` x `crop` px squares:
- `worldcover-classification`: label = majority WorldCover class of the crop;
- `worldcover-segmentation`: label per pixel, scored per token (majority of the patch).
WorldCover and OSM are held out of the encoder input (labels never leak): only
registry-encodable groups are read as input, and asking for a map group fails.
Train/test are split by tile, so crops of one tile never straddle the split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from terracube.catalog.bands import BASE_RESOLUTION_M
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, band_group
from terracube.model.data.pixel_stats import GroupNormalizer, group_normalizer, read_stats
from terracube.model.nn.batch import Batch
from terracube.model.nn.groups import encodable_groups
from terracube.pipeline.corpus.integrity import corpus_damage, readable_states
from terracube.pipeline.corpus.schema import SampleState
from terracube.pipeline.corpus.store import Corpus

TaskKind = Literal["classification", "multilabel", "segmentation"]
IGNORE = -1
"""Segmentation label of a pixel/token without a class (WorldCover nodata)."""

WORLDCOVER_CODES: tuple[int, ...] = tuple(sorted(MODALITIES["worldcover"].classes))
WORLDCOVER_NAMES: tuple[str, ...] = tuple(
    MODALITIES["worldcover"].classes[c] for c in WORLDCOVER_CODES
)


@dataclass(frozen=True)
class EvalSet:
    """Images, labels and split keys of one task; every group on the 10 m grid."""

    name: str
    kind: TaskKind
    raw: dict[str, np.ndarray]
    """group -> storage values (N, T, B, H, W); static groups have T == 1."""
    present: dict[str, np.ndarray]
    """group -> bool (N, T): the timestep exists (done modality, valid_fraction > 0)."""
    months: np.ndarray
    """int64 (N, T) calendar month 0..11."""
    labels: np.ndarray
    """classification (N,) class index; multilabel (N, L) bool; segmentation (N, H, W), -1 = none."""
    class_names: tuple[str, ...]
    split_keys: np.ndarray
    """(N,) str: samples sharing a key (a tile, a file) always land on the same side of the split."""
    stats: dict[str, Any] | None = None
    """Corpus normalisation statistics (None = registry defaults)."""

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not self.raw:
            raise ValueError(f"eval set {self.name!r} has no band group to encode")
        for g, x in self.raw.items():
            if x.ndim != 5 or x.shape[0] != n or self.present[g].shape != x.shape[:2]:
                raise ValueError(
                    f"eval set {self.name!r}: group {g!r} is {x.shape} with presence "
                    f"{self.present[g].shape}; expected (N={n}, T, B, H, W) and (N, T)"
                )
        if self.months.shape[0] != n or len(self.split_keys) != n:
            raise ValueError(f"eval set {self.name!r}: months/split_keys must have {n} rows")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        x = next(iter(self.raw.values()))
        return int(x.shape[3]), int(x.shape[4])

    def normalizers(self) -> dict[str, GroupNormalizer]:
        return {g: group_normalizer(g, self.stats) for g in self.raw}

    def batch(
        self, index: np.ndarray, patch_size: int, normalizers: dict[str, GroupNormalizer]
    ) -> Batch:
        """Normalised `Batch` of the rows `index` (groups absent from the set stay absent)."""
        data, valid = {}, {}
        for g, raw in self.raw.items():
            x = raw[index]
            ok = normalizers[g].pixel_valid(x, present=self.present[g][index])
            data[g] = torch.from_numpy(np.ascontiguousarray(normalizers[g](x, ok)))
            valid[g] = torch.from_numpy(np.ascontiguousarray(ok))
        return Batch(data, valid, torch.from_numpy(self.months[index]), patch_size=patch_size)


def split_by_key(
    keys: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train rows, test rows): a seeded permutation of the sorted unique keys."""
    unique = np.unique(np.asarray(keys).astype(str))
    if len(unique) < 2:
        raise ValueError(
            f"a train/test split by sample needs >= 2 distinct samples (tiles/files), got "
            f"{len(unique)}; add samples to the corpus or dataset"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}; it must lie in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = min(len(unique) - 1, max(1, round(len(unique) * test_fraction)))
    test_keys = unique[order[:n_test]]
    is_test = np.isin(np.asarray(keys).astype(str), test_keys)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def token_labels(pixel_labels: np.ndarray, patch_size: int, n_classes: int) -> np.ndarray:
    """(N, H/p, W/p) majority class of each patch's labelled pixels (ties: lowest index),
    IGNORE where the patch has none."""
    n, h, w = pixel_labels.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"labels {h}x{w} px are not divisible by patch_size={patch_size}")
    gh, gw = h // patch_size, w // patch_size
    patches = pixel_labels.reshape(n, gh, patch_size, gw, patch_size).transpose(0, 1, 3, 2, 4)
    patches = patches.reshape(n, gh, gw, patch_size * patch_size)
    counts = np.stack([(patches == c).sum(-1) for c in range(n_classes)], axis=-1)
    out = counts.argmax(-1)
    return np.where(counts.sum(-1) > 0, out, IGNORE)


# --------------------------------------------------------------------------- corpus tasks


@dataclass(frozen=True)
class CropParams:
    crop: int = 32
    """Crop edge in 10 m px; divides the 256 px tile and is a multiple of every group's
    pixel factor (4 for 40 m), so each crop covers whole pixels of every group."""
    min_labelled: float = 0.5
    """Crops with a smaller fraction of WorldCover-labelled pixels are skipped."""
    max_crops_per_tile: int | None = None
    """Seeded subset of each tile's crops (None = all)."""
    max_tiles: int | None = None
    """Seeded subset of the tiles with WorldCover done (None = all)."""
    max_bytes: int = 8 * 2**30
    """The task is held in memory; refuse plans larger than this before reading."""
    seed: int = 0


def planned_bytes(corpus: Corpus, inputs: Sequence[str], n_crops: int, crop: int) -> int:
    """Memory of `n_crops` crops of `inputs` in storage dtype on the 10 m grid."""
    per_crop = 0
    for g in inputs:
        group = band_group(g)
        steps = corpus.n_periods if band_group(g).temporal else 1
        per_crop += steps * len(group.bands) * crop * crop * np.dtype(group.dtype).itemsize
    return n_crops * per_crop


def _input_groups(corpus: Corpus, groups: Sequence[str] | None) -> tuple[str, ...]:
    available = tuple(g for g in corpus.params.groups if g in encodable_groups())
    if groups is None:
        chosen = available
    else:
        leaking = [g for g in groups if g not in encodable_groups()]
        if leaking:
            raise ValueError(
                f"input groups {leaking} are decode-only maps (WorldCover/OSM) and would leak "
                f"the labels into the encoder; choose from {list(available)}"
            )
        missing = [g for g in groups if g not in available]
        if missing:
            raise ValueError(
                f"input groups {missing} are not in {corpus.url!r}; it has {list(available)}"
            )
        chosen = tuple(groups)
    if not chosen:
        raise ValueError(f"{corpus.url!r} holds no encodable band group to use as input")
    return chosen


def crop_windows(tile_px: int, params: CropParams) -> list[tuple[int, int]]:
    """Upper-left (y, x) of the non-overlapping crops of one tile, row-major.

    A crop must cover whole pixels of the coarsest registry group (40 m = 4 px)."""
    factors = int(max(g.resolution for g in BAND_GROUPS.values()) // BASE_RESOLUTION_M)
    if params.crop <= 0 or tile_px % params.crop or params.crop % factors:
        raise ValueError(
            f"crop={params.crop} px must divide the {tile_px} px tile and be a multiple of "
            f"{factors} (the coarsest group's pixel factor), e.g. 32 or 64"
        )
    return [(y, x) for y in range(0, tile_px, params.crop) for x in range(0, tile_px, params.crop)]


def _months(period_start_days: np.ndarray) -> np.ndarray:
    days = period_start_days.astype(np.int64).astype("datetime64[D]")
    return days.astype("datetime64[M]").astype(np.int64) % 12


PixelLabels = Callable[[int, dict[str, np.ndarray]], np.ndarray]
"""(sample index, its record) -> (256, 256) int64 class index per 10 m pixel, IGNORE = none."""


def worldcover_task(
    store: str | os.PathLike[str],
    kind: Literal["classification", "segmentation"],
    params: CropParams | None = None,
    groups: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> EvalSet:
    """Crops of every corpus tile whose WorldCover is `done`, labelled from WorldCover."""
    corpus = Corpus.open(store, storage_options)
    if "worldcover" not in corpus.params.groups:
        raise ValueError(f"{corpus.url!r} has no worldcover group to derive labels from")
    lookup = np.full(256, IGNORE, dtype=np.int64)
    lookup[list(WORLDCOVER_CODES)] = np.arange(len(WORLDCOVER_CODES))

    def labels(_: int, record: dict[str, np.ndarray]) -> np.ndarray:
        return lookup[record["worldcover"][0]]

    return corpus_crop_task(
        corpus,
        f"worldcover-{kind}",
        kind,
        labels,
        WORLDCOVER_NAMES,
        params,
        groups,
        label_groups=("worldcover",),
        label_name="WorldCover",
    )


def corpus_crop_task(
    corpus: Corpus,
    name: str,
    kind: Literal["classification", "segmentation"],
    pixel_labels: PixelLabels,
    class_names: tuple[str, ...],
    params: CropParams | None = None,
    groups: Sequence[str] | None = None,
    label_groups: tuple[str, ...] = (),
    label_name: str = "labelled",
) -> EvalSet:
    """Crops of the corpus tiles whose `label_groups` are `done` (all tiles when none),
    labelled per pixel by `pixel_labels`: classification takes the crop's majority class
    (ties: the lower index), segmentation keeps the pixels."""
    params = params or CropParams()
    inputs = _input_groups(corpus, groups)
    damage = corpus_damage(corpus)
    if damage:  # a missing shard would be scored as fill values
        raise ValueError(
            f"{corpus.url!r} has {len(damage)} damaged shard file(s), e.g. {damage[0]}; "
            "evaluate a whole corpus"
        )
    states = readable_states(corpus, "evaluation (to know which samples are built)")
    needed = label_groups or inputs
    ready = np.ones(corpus.n_samples, dtype=bool)
    for g in label_groups:
        ready &= states[band_group(g).modality] == SampleState.DONE
    if not label_groups:
        ready &= np.any([states[band_group(g).modality] == SampleState.DONE for g in inputs], 0)
    samples = np.flatnonzero(ready)
    if samples.size == 0:
        raise ValueError(
            f"{corpus.url!r} has no sample with {', '.join(needed)} done; build it first"
        )
    rng = np.random.default_rng(params.seed)
    if params.max_tiles is not None and samples.size > params.max_tiles:
        samples = np.sort(rng.choice(samples, params.max_tiles, replace=False))
    tile_px = band_group("worldcover").pixels
    windows = crop_windows(tile_px, params)
    per_tile = min(len(windows), params.max_crops_per_tile or len(windows))
    need = planned_bytes(corpus, inputs, samples.size * per_tile, params.crop)
    if need > params.max_bytes:
        raise ValueError(
            f"the {kind} task of {corpus.url!r} would hold {need / 2**30:.1f} GiB of crops in "
            f"memory (max_bytes {params.max_bytes / 2**30:.1f} GiB); set CropParams.max_tiles or "
            "max_crops_per_tile, or restrict the input groups"
        )
    raw: dict[str, list[np.ndarray]] = {g: [] for g in inputs}
    present: dict[str, list[np.ndarray]] = {g: [] for g in inputs}
    labels: list[int | np.ndarray] = []
    keys: list[str] = []
    months: list[np.ndarray] = []
    tile_ids = corpus.array("tile_id")
    for i in samples:
        try:
            record = corpus.read_sample(int(i), groups=(*inputs, *label_groups))
        except Exception as exc:  # a shard that fails to decode: name it, do not guess
            raise ValueError(
                f"sample {int(i)} of {corpus.url!r} cannot be decoded "
                f"({type(exc).__name__}: {str(exc)[:200]}); run `terracube validate` on "
                "the store and `terracube repair CONFIG`"
            ) from None
        classes = pixel_labels(int(i), record)
        period_months = _months(np.asarray(corpus.array("period_start")[int(i)]))
        tile = str(tile_ids[int(i)])
        sample_present = {g: _presence(corpus, g, int(i), states) for g in inputs}
        chosen = windows
        if params.max_crops_per_tile is not None and len(windows) > params.max_crops_per_tile:
            pick = rng.choice(len(windows), params.max_crops_per_tile, replace=False)
            chosen = [windows[j] for j in sorted(pick)]
        for y, x in chosen:
            crop_classes = classes[y : y + params.crop, x : x + params.crop]
            labelled = crop_classes != IGNORE
            if labelled.mean() < params.min_labelled:
                continue
            if kind == "classification":
                counts = np.bincount(crop_classes[labelled], minlength=len(class_names))
                labels.append(int(counts.argmax()))
            else:
                labels.append(crop_classes)
            for g in inputs:
                raw[g].append(_group_crop(g, record[g], y, x, params.crop))
                present[g].append(sample_present[g])
            keys.append(tile)
            months.append(period_months)
    if not labels:
        raise ValueError(
            f"no crop of {corpus.url!r} has >= {params.min_labelled:.0%} {label_name} pixels; "
            "lower CropParams.min_labelled or check the labels cover the corpus"
        )
    return EvalSet(
        name=name,
        kind=kind,
        raw={g: np.stack(v) for g, v in raw.items()},
        present={g: np.stack(v) for g, v in present.items()},
        months=np.stack(months).astype(np.int64),
        labels=np.stack(labels).astype(np.int64),
        class_names=class_names,
        split_keys=np.array(keys),
        stats=read_stats(corpus),
    )


def _presence(corpus: Corpus, name: str, sample: int, states: dict[str, np.ndarray]) -> np.ndarray:
    """(T,) bool: the timestep exists (its modality is done and valid_fraction > 0)."""
    fraction = np.atleast_1d(np.asarray(corpus.array(f"{name}_valid_fraction")[sample]))
    done = states[band_group(name).modality][sample] == SampleState.DONE
    return (fraction > 0) & done


def _group_crop(name: str, values: np.ndarray, y: int, x: int, crop: int) -> np.ndarray:
    """(T, B, crop, crop) storage values on the 10 m grid (nearest repeat of coarser pixels)."""
    factor = int(band_group(name).resolution // BASE_RESOLUTION_M)
    side = crop // factor
    stack = values if band_group(name).temporal else values[None]
    window = stack[:, :, y // factor : y // factor + side, x // factor : x // factor + side]
    if factor > 1:
        window = window.repeat(factor, axis=-2).repeat(factor, axis=-1)
    return window
