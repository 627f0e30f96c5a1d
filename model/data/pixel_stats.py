"""Normalisation statistics of a corpus, and the per-group normaliser the loader applies.

`compute_stats` streams the corpus shard by shard (one read per array per shard)
and returns per group, per band the count, mean and std of the valid pixels in
storage units. Valid means: the sample's modality is `done`, the timestep is not
missing (`valid_fraction > 0`) and the value is not the band's nodata. Integer
groups are summed in exact integer arithmetic (Python ints never overflow), so
the result equals a direct numpy computation to the last float64 bit but without
holding the corpus in memory; float groups (S1 dB) merge float64 partial moments
per shard (Chan et al.).

`write_stats` stores the result in the store's root attributes under
`terracube:stats`; the loader prefers it over the registry defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any, cast

import numpy as np
import torch
import zarr
from terracube.catalog.registry import MODALITIES, band_group
from terracube.model.data.validity import pixel_validity
from terracube.pipeline.corpus.schema import SampleState
from terracube.pipeline.corpus.store import Corpus
from torch import Tensor
from zarr.errors import ZarrUserWarning

STATS_ATTR = "terracube:stats"
STATS_VERSION = 1


@dataclass
class _IntMoments:
    """Exact running sums of integer values."""

    count: int = 0
    total: int = 0
    squares: int = 0

    def add(self, values: np.ndarray) -> None:
        v = values.astype(np.int64)
        self.count += int(v.size)
        self.total += int(v.sum())
        self.squares += int((v * v).sum())

    def result(self) -> tuple[int, float, float]:
        if self.count == 0:
            return 0, math.nan, math.nan
        mean = Fraction(self.total, self.count)
        var = Fraction(self.squares, self.count) - mean * mean
        return self.count, float(mean), math.sqrt(float(var))


@dataclass
class _FloatMoments:
    """Chan's parallel merge of (count, mean, M2) in float64, one partial per shard."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        v = values.astype(np.float64)
        n = int(v.size)
        if n == 0:
            return
        mean = float(v.mean())
        m2 = float(((v - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def result(self) -> tuple[int, float, float]:
        if self.count == 0:
            return 0, math.nan, math.nan
        return self.count, self.mean, math.sqrt(self.m2 / self.count)


def valid_values(block: np.ndarray, nodata: float) -> np.ndarray:
    """Boolean mask of values that are not `nodata` (NaN-aware)."""
    if isinstance(nodata, float) and math.isnan(nodata):
        return ~np.isnan(block)
    return block != np.asarray(nodata, dtype=block.dtype)


def compute_stats(
    store: str | os.PathLike[str] | Corpus, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Per group per band {band names, count, mean, std} of valid pixels in storage units."""
    corpus = store if isinstance(store, Corpus) else Corpus.open(store, storage_options)
    states = {m: corpus.states(m) for m in corpus.params.modalities}
    stats: dict[str, Any] = {}
    for name in corpus.params.groups:
        group = band_group(name)
        integer = np.issubdtype(np.dtype(group.dtype), np.integer)
        moments = [_IntMoments() if integer else _FloatMoments() for _ in group.bands]
        done = states[group.modality] == SampleState.DONE
        data, fraction = corpus.array(name), corpus.array(f"{name}_valid_fraction")
        for span in corpus.shards:
            keep = done[span.start : span.stop]
            if not keep.any():
                continue
            block = np.asarray(data[span.start : span.stop])[keep]
            present = np.asarray(fraction[span.start : span.stop])[keep] > 0
            # (n, T) or (n,) presence selects -> (n_present, B, H, W) either way
            block = block[present]
            for b, band in enumerate(group.bands):
                values = block[:, b]
                moments[b].add(values[valid_values(values, band.nodata)])
        results = [m.result() for m in moments]
        stats[name] = {
            "bands": list(group.band_names),
            "count": [r[0] for r in results],
            "mean": [r[1] for r in results],
            "std": [r[2] for r in results],
        }
    return {"version": STATS_VERSION, "groups": stats}


def _json_safe(stats: dict[str, Any]) -> dict[str, Any]:
    """NaN (a band with no valid pixel) becomes None: JSON has no NaN."""
    out: dict[str, Any] = {"version": stats["version"], "groups": {}}
    for name, s in stats["groups"].items():
        out["groups"][name] = {
            key: [None if isinstance(v, float) and math.isnan(v) else v for v in values]
            if key != "bands"
            else list(values)
            for key, values in s.items()
        }
    return out


def write_stats(
    store: str | os.PathLike[str],
    stats: dict[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Store `stats` in the root attributes (and refresh consolidated metadata)."""
    import warnings

    corpus = Corpus.open(store, storage_options, writable=True)
    corpus.group.attrs[STATS_ATTR] = _json_safe(stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZarrUserWarning)
        zarr.consolidate_metadata(corpus.group.store)


def read_stats(corpus: Corpus) -> dict[str, Any] | None:
    """The stored statistics, or None when `terracube stats` has not been run."""
    # zarr types attributes as any JSON value; write_stats stores this one as an object
    stats = cast("Mapping[str, Any] | None", corpus.group.attrs.get(STATS_ATTR))
    if stats is None:
        return None
    if int(stats.get("version", -1)) != STATS_VERSION:
        raise ValueError(
            f"{corpus.url!r} holds {STATS_ATTR} version {stats.get('version')!r}; this loader "
            f"reads version {STATS_VERSION}: run `terracube stats {corpus.url}` again"
        )
    return dict(stats)


def stats_command(
    store: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`terracube stats STORE`: compute the statistics, store them, and return them."""
    stats = compute_stats(store, storage_options)
    write_stats(store, stats, storage_options)
    return stats


# --------------------------------------------------------------------------- normaliser


@cache
def _nodata_arrays(nodata: tuple[float, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per band: nodata in the values' dtype (what numpy compares against) and NaN flags."""
    nan = np.array([isinstance(v, float) and math.isnan(v) for v in nodata])
    values = np.array([0 if n else v for v, n in zip(nodata, nan, strict=True)])
    return values.astype(dtype), nan


@dataclass(frozen=True)
class GroupNormalizer:
    """Turns one group's storage values into model channels (float32) plus pixel validity.

    standard: (x - mean) / std with corpus stats when present, else registry defaults;
    scale: (x - mean) / std with the registry's fixed values (OSM percent -> /100);
    onehot: one channel per class code of the modality (WorldCover), in registry order.
    """

    name: str
    kind: str
    mean: np.ndarray
    std: np.ndarray
    nodata: tuple[float, ...]
    classes: tuple[int, ...] = ()

    def pixel_valid(
        self, x: np.ndarray, present: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """bool (..., H, W) from (..., band, H, W): every band holds a value and, with
        `present` (bool x.shape[:-3], e.g. the timesteps the loader placed), its row is
        present; absent rows' values are not read. Written into `out` when given."""
        lead_shape = x.shape[:-3]
        if present is None:
            present = np.ones(lead_shape, dtype=bool)
        ok = np.empty(lead_shape + x.shape[-2:], dtype=bool) if out is None else out
        if x.ndim >= 3 and x.flags.c_contiguous and ok.flags.c_contiguous:
            nodata, nan = _nodata_arrays(self.nodata, x.dtype)
            lead = math.prod(lead_shape)
            pixel_validity(
                x.reshape(lead, *x.shape[-3:]),
                nodata,
                nan,
                np.ascontiguousarray(present, dtype=bool).reshape(lead),
                ok.reshape(lead, *x.shape[-2:]),
            )
            return ok
        ok[...] = present[..., None, None]
        if len(set(map(str, self.nodata))) == 1:  # one nodata for every band: one pass
            ok &= valid_values(x, self.nodata[0]).all(axis=-3)
            return ok
        for b, band_nodata in enumerate(self.nodata):
            ok &= valid_values(x[..., b, :, :], band_nodata)
        return ok

    @property
    def channels(self) -> int:
        return len(self.classes) if self.kind == "onehot" else len(self.mean)

    def __call__(
        self, x: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(..., band, H, W) storage values -> (..., C, H, W) float32, 0 where invalid.

        Written in place into `out` when given (the loader passes the batch tensor's memory),
        with float32 arithmetic in the same order as (x - mean) / std.
        """
        shape = (*x.shape[:-3], self.channels, *x.shape[-2:])
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out is {out.dtype}{out.shape}; {self.name} needs float32{shape}")
        if self.kind == "onehot":
            codes = np.asarray(self.classes, dtype=x.dtype)[:, None, None]
            np.equal(x[..., 0, None, :, :], codes, out=out, casting="unsafe")
        else:
            np.subtract(x, self.mean[:, None, None], out=out, dtype=np.float32)
            np.divide(out, self.std[:, None, None], out=out)
        np.copyto(out, np.float32(0.0), where=~valid[..., None, :, :])
        return out

    def apply_torch(self, x: Tensor, valid: Tensor) -> Tensor:
        """`__call__` in torch on x's device: (..., band, H, W) -> (..., C, H, W) float32,
        bit-identical to the numpy path (same float32 operations in the same order)."""
        if self.kind == "onehot":
            codes = torch.tensor(self.classes, device=x.device)[:, None, None]
            out = (x[..., 0, None, :, :].to(codes.dtype) == codes).to(torch.float32)
        else:
            mean = torch.from_numpy(self.mean).to(x.device)[:, None, None]
            std = torch.from_numpy(self.std).to(x.device)[:, None, None]
            out = (x.to(torch.float32) - mean) / std
        return out.masked_fill_(~valid[..., None, :, :], 0.0)


def group_normalizer(name: str, stats: dict[str, Any] | None) -> GroupNormalizer:
    """Normaliser of `name` from corpus stats (standard bands only) or the registry."""
    group = band_group(name)
    kinds = {b.normalization.kind for b in group.bands}
    if len(kinds) != 1:
        raise ValueError(f"group {name!r} mixes normalisation kinds {sorted(kinds)}")
    kind = kinds.pop()
    mean = np.array([b.normalization.mean for b in group.bands], dtype=np.float32)
    std = np.array([b.normalization.std for b in group.bands], dtype=np.float32)
    corpus_stats = (stats or {}).get("groups", {}).get(name)
    if kind == "standard" and corpus_stats is not None:
        for b in range(len(group.bands)):
            m, s = corpus_stats["mean"][b], corpus_stats["std"][b]
            if m is not None and s is not None and s > 0:
                mean[b], std[b] = m, s
    classes = tuple(sorted(MODALITIES[group.modality].classes)) if kind == "onehot" else ()
    return GroupNormalizer(
        name=name,
        kind=kind,
        mean=mean,
        std=std,
        nodata=tuple(float(b.nodata) for b in group.bands),
        classes=classes,
    )
