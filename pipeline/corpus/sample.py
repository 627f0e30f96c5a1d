"""One sample as the build hands it over: checked against the registry, turned into array rows.

Kept apart from the store I/O so that every check runs before anything is
written, and so the row layout (fill values for pending samples) is pure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from terracube.catalog.registry import MODALITIES, band_group
from terracube.pipeline.corpus.schema import (
    ArraySpec,
    CorpusError,
    CorpusParams,
    SampleState,
)

STRING_DTYPE = np.dtypes.StringDType()


@dataclass(frozen=True)
class SampleData:
    """Everything the build writes for one sample, in storage dtypes.

    `groups` holds (T, B, H, W) for temporal and (B, H, W) for static groups.
    A modality in `states` as DONE must supply all its groups; groups left out
    are stored as nodata. Modalities absent from `states` stay PENDING.
    """

    tile_id: str
    epsg: int
    x0: float
    y0: float
    center_lon: float
    center_lat: float
    period_starts: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    valid_fraction: dict[str, np.ndarray | np.float64] = field(default_factory=dict)
    """Per group: (T,) per period for temporal groups, a scalar for static ones."""
    provenance: dict[str, Any] = field(default_factory=dict)
    states: dict[str, SampleState] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=256)
def epsg_is_known(epsg: int) -> bool:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_epsg(epsg)
    except CRSError:
        return False
    return True


def check_sample(s: SampleData, p: CorpusParams, label: str) -> None:
    """Raise CorpusError naming the field and the expected shape/dtype; never touches the store."""
    if not s.tile_id:
        raise CorpusError(f"{label}: tile_id is empty; pass the grid tile id")
    if not isinstance(s.epsg, int | np.integer) or not epsg_is_known(int(s.epsg)):
        raise CorpusError(f"{label}: epsg={s.epsg!r} is not a known EPSG code (e.g. 32631)")
    for name in ("x0", "y0", "center_lon", "center_lat"):
        if not np.isfinite(getattr(s, name)):
            raise CorpusError(f"{label}: {name}={getattr(s, name)!r} must be a finite number")
    starts = np.asarray(s.period_starts)
    if starts.shape != (p.n_periods,) or not np.issubdtype(starts.dtype, np.datetime64):
        raise CorpusError(
            f"{label}: period_starts must be datetime64[D] of shape ({p.n_periods},), "
            f"got {starts.dtype} {starts.shape}"
        )
    if np.isnat(starts).any():
        raise CorpusError(f"{label}: period_starts contains NaT; every period needs a start date")
    for m in (*s.states, *s.errors):
        if m not in p.modalities:
            raise CorpusError(
                f"{label}: modality {m!r} is not in this corpus ({', '.join(p.modalities)})"
            )
    for m, state in s.states.items():
        if not isinstance(state, SampleState):
            raise CorpusError(f"{label}: state of {m!r} is {state!r}; use a SampleState member")
        if state is SampleState.DONE:
            missing = [
                g.name
                for g in MODALITIES[m].groups
                if g.name in p.groups and g.name not in s.groups
            ]
            if missing:
                raise CorpusError(f"{label}: {m} is DONE but groups {missing} are missing")
    for name in (*s.groups, *s.valid_fraction, *s.provenance):
        if name not in p.groups:
            raise CorpusError(
                f"{label}: band group {name!r} is not in this corpus ({', '.join(p.groups)})"
            )
    for name, data in s.groups.items():
        g = band_group(name)
        t = (p.n_periods,) if g.temporal else ()
        want = (*t, len(g.bands), g.pixels, g.pixels)
        arr = np.asarray(data)
        if arr.shape != want or arr.dtype != np.dtype(g.dtype):
            raise CorpusError(
                f"{label}: group {name!r} must be {g.dtype} of shape {want} "
                f"(time, band, y, x at {g.resolution} m), got {arr.dtype} {arr.shape}"
            )
    for name, vf in s.valid_fraction.items():
        t = (p.n_periods,) if band_group(name).temporal else ()
        arr = np.asarray(vf, dtype=np.float64)
        if arr.shape != t or not np.all((arr >= 0) & (arr <= 1)):
            raise CorpusError(
                f"{label}: valid_fraction[{name!r}] must be in [0, 1] with shape {t}, got {arr!r}"
            )
    for name, prov in s.provenance.items():
        temporal = band_group(name).temporal
        ok = isinstance(prov, list | tuple)
        if ok and temporal:
            ok = len(prov) == p.n_periods and all(
                isinstance(ids, list | tuple) and all(isinstance(i, str) for i in ids)
                for ids in prov
            )
        elif ok:
            ok = all(isinstance(i, str) for i in prov)
        if not ok:
            shape = (
                f"a list of {p.n_periods} lists of item ids" if temporal else "a list of item ids"
            )
            raise CorpusError(f"{label}: provenance[{name!r}] must be {shape}")


def sample_rows(s: SampleData | None, specs: Sequence[ArraySpec]) -> dict[str, np.ndarray]:
    """One sample's row of every per-sample array (fill values for None = pending)."""
    rows: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.role == "coord":
            continue
        row_shape = spec.shape[1:]
        dtype = STRING_DTYPE if spec.dtype == "string" else np.dtype(spec.dtype)
        row = np.full(row_shape, spec.fill_value, dtype=dtype)
        if s is not None:
            _fill_row(row, spec.name, s)
        rows[spec.name] = row
    return rows


def _fill_row(row: np.ndarray, name: str, s: SampleData) -> None:
    index = {
        "tile_id": s.tile_id,
        "epsg": s.epsg,
        "x0": s.x0,
        "y0": s.y0,
        "center_lon": s.center_lon,
        "center_lat": s.center_lat,
    }
    if name in index:
        row[...] = index[name]
    elif name == "period_start":
        row[...] = np.asarray(s.period_starts).astype("datetime64[D]").astype(np.int64)
    elif name in s.groups:
        row[...] = s.groups[name]
    elif (
        name.endswith("_valid_fraction")
        and name.removesuffix("_valid_fraction") in s.valid_fraction
    ):
        row[...] = s.valid_fraction[name.removesuffix("_valid_fraction")]
    elif name.endswith("_provenance") and name.removesuffix("_provenance") in s.provenance:
        prov = s.provenance[name.removesuffix("_provenance")]
        if row.ndim:
            row[...] = [json.dumps(list(ids)) for ids in prov]
        else:
            row[...] = json.dumps(list(prov))
    elif name.endswith("_state") and name.removesuffix("_state") in s.states:
        row[...] = int(s.states[name.removesuffix("_state")])
    elif name.endswith("_error") and name.removesuffix("_error") in s.errors:
        row[...] = s.errors[name.removesuffix("_error")]
