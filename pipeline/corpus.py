"""The corpus store: create, write whole shards or single samples, read them back.

The layout itself is planned in `corpus_schema` (pure); this module does the I/O.
Writes are validated against the registry before the first byte is written,
state arrays are written last (a sample is only `done` once its data are on
disk), and every shard file is replaced atomically (zarr's LocalStore writes a
temp file and renames it; object stores PUT whole objects).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zarr
from terracube.catalog.registry import MODALITIES, band_group
from terracube.pipeline.corpus_schema import (
    DAYS_FILL,
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    ArraySpec,
    CorpusCodecs,
    CorpusParams,
    InnerChunking,
    SampleState,
    is_temporal,
    plan_arrays,
    root_attrs,
)
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.errors import ZarrUserWarning
from zarr.storage import FsspecStore, LocalStore

__all__ = [
    "Corpus",
    "CorpusCodecs",
    "CorpusError",
    "InnerChunking",
    "SampleData",
    "SampleState",
    "create_corpus",
    "open_store",
]

STRING_DTYPE = np.dtypes.StringDType()


class CorpusError(ValueError):
    """A corpus cannot be created, opened or written as asked; the message says why and how to fix."""


# --------------------------------------------------------------------------- stores


def local_root(url: str | os.PathLike[str]) -> Path | None:
    """The directory of a local store (plain path or file:// URL), None for remote URLs."""
    text = os.fspath(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(parsed.path if parsed.scheme == "file" else text).resolve()
    return None


def open_store(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    read_only: bool = False,
) -> Store:
    """LocalStore for local paths (atomic temp-then-rename writes), FsspecStore for any other URL."""
    root = local_root(url)
    if root is not None:
        if storage_options:
            raise CorpusError(f"storage_options were given for the local path {url!r}; drop them")
        return LocalStore(root, read_only=read_only)
    return FsspecStore.from_url(
        os.fspath(url), storage_options=dict(storage_options or {}), read_only=read_only
    )


_THREAD_LOCK = threading.Lock()


@contextlib.contextmanager
def shard_lock(root: Path | None, shard: int) -> Iterator[None]:
    """Advisory lock of one shard across processes on a local store (fcntl byte-range lock).

    Object stores have no locks: there the build guarantees that one task owns
    a shard. The lock file sits beside the store (`.<name>.terracube-lock`) so
    that zarr and xarray never see a foreign file inside the hierarchy.
    """
    if root is None:
        yield
        return
    lock_path = root.parent / f".{root.name}.terracube-lock"
    with _THREAD_LOCK, open(lock_path, "a+b") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX, 1, shard)
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN, 1, shard)


# --------------------------------------------------------------------------- samples


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
    valid_fraction: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    states: dict[str, SampleState] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=256)
def _epsg_is_known(epsg: int) -> bool:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_epsg(epsg)
    except CRSError:
        return False
    return True


def _check_sample(s: SampleData, p: CorpusParams, label: str) -> None:
    """Raise CorpusError naming the field and the expected shape/dtype; never touches the store."""
    if not s.tile_id:
        raise CorpusError(f"{label}: tile_id is empty; pass the grid tile id")
    if not isinstance(s.epsg, int | np.integer) or not _epsg_is_known(int(s.epsg)):
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
        t = (p.n_periods,) if is_temporal(g) else ()
        want = (*t, len(g.bands), g.pixels, g.pixels)
        arr = np.asarray(data)
        if arr.shape != want or arr.dtype != np.dtype(g.dtype):
            raise CorpusError(
                f"{label}: group {name!r} must be {g.dtype} of shape {want} "
                f"(time, band, y, x at {g.resolution} m), got {arr.dtype} {arr.shape}"
            )
    for name, vf in s.valid_fraction.items():
        t = (p.n_periods,) if is_temporal(band_group(name)) else ()
        arr = np.asarray(vf, dtype=np.float64)
        if arr.shape != t or not np.all((arr >= 0) & (arr <= 1)):
            raise CorpusError(
                f"{label}: valid_fraction[{name!r}] must be in [0, 1] with shape {t}, got {arr!r}"
            )
    for name, prov in s.provenance.items():
        temporal = is_temporal(band_group(name))
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


# --------------------------------------------------------------------------- corpus


def _create_array(group: zarr.Group, spec: ArraySpec, codecs: CorpusCodecs) -> zarr.Array:
    return group.create_array(
        spec.name,
        shape=spec.shape,
        dtype=str if spec.dtype == "string" else spec.dtype,
        chunks=spec.chunks,
        shards=spec.shards,
        fill_value=spec.fill_value,
        dimension_names=spec.dims,
        attributes=spec.attrs,
        serializer="auto" if spec.dtype == "string" else BytesCodec(),
        compressors=(ZstdCodec(level=codecs.zstd_level),),
    )


def create_corpus(
    url: str | os.PathLike[str],
    n_samples: int,
    n_periods: int,
    samples_per_shard: int,
    groups: Sequence[str] | None = None,
    period: str = "P1M",
    chunking: InnerChunking | None = None,
    codecs: CorpusCodecs | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Corpus:
    """Preallocate a corpus (metadata only). Idempotent for equal parameters.

    Re-creating with different parameters raises CorpusError naming each
    differing parameter, so a resumed build can never silently change layout.
    """
    kwargs: dict[str, Any] = {}
    if groups is not None:
        kwargs["groups"] = tuple(groups)
    params = CorpusParams(
        n_samples=n_samples,
        n_periods=n_periods,
        samples_per_shard=samples_per_shard,
        period=period,
        chunking=chunking or InnerChunking(),
        codecs=codecs or CorpusCodecs(),
        **kwargs,
    )
    store = open_store(url, storage_options)
    existing = _try_open_group(store)
    if existing is not None:
        corpus = Corpus(existing, url, storage_options)
        old, new = corpus.params.to_attrs(), params.to_attrs()
        diff = [f"{k}: store has {old[k]!r}, asked {new[k]!r}" for k in new if old.get(k) != new[k]]
        if diff:
            raise CorpusError(
                f"corpus at {os.fspath(url)!r} exists with other parameters ("
                + "; ".join(diff)
                + "); use a new URL or the same parameters"
            )
        return corpus
    root = zarr.create_group(store, zarr_format=3, attributes=root_attrs(params))
    for spec in plan_arrays(params):
        arr = _create_array(root, spec, params.codecs)
        if spec.role == "coord":
            arr[:] = np.array(
                band_group(spec.name.removeprefix("band_")).band_names, dtype=STRING_DTYPE
            )
    with warnings.catch_warnings():
        # Consolidated metadata is not in the v3 spec yet, but every reader we target
        # (zarr-python, xarray) uses it; it makes opening a remote corpus one request.
        warnings.simplefilter("ignore", ZarrUserWarning)
        zarr.consolidate_metadata(store)
    return Corpus.open(url, storage_options, writable=True)


def _try_open_group(store: Store) -> zarr.Group | None:
    try:
        group = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    if "terracube_format_version" not in group.attrs:
        raise CorpusError(
            f"{store} holds a zarr group that is not a terracube corpus; pick an empty URL"
        )
    return group


class Corpus:
    """An opened corpus: shard geometry, per-sample states, sample reads and writes."""

    def __init__(
        self,
        group: zarr.Group,
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        version = group.attrs.get("terracube_format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise CorpusError(
                f"{os.fspath(url)!r} has terracube_format_version={version!r}; this reader supports "
                f"{sorted(SUPPORTED_FORMAT_VERSIONS)} (run `terracube validate`)"
            )
        self.group = group
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        self.params = CorpusParams.from_attrs(dict(group.attrs["terracube:params"]))
        self.specs = plan_arrays(self.params)
        self._root = local_root(url)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        writable: bool = False,
    ) -> Corpus:
        store = open_store(url, storage_options, read_only=not writable)
        try:
            group = zarr.open_group(store, mode="r+" if writable else "r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise CorpusError(
                f"no corpus at {os.fspath(url)!r}; create it with create_corpus"
            ) from None
        return cls(group, url, storage_options)

    @property
    def format_version(self) -> int:
        return FORMAT_VERSION

    @property
    def n_samples(self) -> int:
        return self.params.n_samples

    @property
    def n_periods(self) -> int:
        return self.params.n_periods

    @property
    def shards(self) -> list[range]:
        """Sample ranges of every shard: the unit a build task owns and a loader worker reads."""
        k = self.params.samples_per_shard
        return [range(s, min(s + k, self.n_samples)) for s in range(0, self.n_samples, k)]

    def shard_of(self, sample: int) -> int:
        self._check_index(sample)
        return sample // self.params.samples_per_shard

    def _check_index(self, sample: int) -> None:
        if not 0 <= sample < self.n_samples:
            raise IndexError(f"sample {sample} is outside this corpus (0..{self.n_samples - 1})")

    def array(self, name: str) -> zarr.Array:
        node = self.group[name]
        assert isinstance(node, zarr.Array)
        return node

    def states(self, modality: str) -> np.ndarray:
        if modality not in self.params.modalities:
            raise KeyError(
                f"modality {modality!r} is not in this corpus ({', '.join(self.params.modalities)})"
            )
        return np.asarray(self.array(f"{modality}_state")[:])

    # ------------------------------------------------------------------ writes

    def write_shard(self, shard_index: int, samples: Sequence[SampleData | None]) -> None:
        """Write one whole shard of every array (None = pending); the build's normal path."""
        if not 0 <= shard_index < len(self.shards):
            raise IndexError(
                f"shard {shard_index} is outside this corpus (0..{len(self.shards) - 1})"
            )
        span = self.shards[shard_index]
        if len(samples) != len(span):
            raise CorpusError(
                f"shard {shard_index} holds samples {span.start}..{span.stop - 1} "
                f"({len(span)}); got {len(samples)} samples (use None for pending ones)"
            )
        for i, s in zip(span, samples, strict=True):
            if s is not None:
                _check_sample(s, self.params, f"sample {i}")
        rows = [sample_rows(s, self.specs) for s in samples]
        blocks = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
        with shard_lock(self._root, shard_index):
            for spec in self.specs:
                if spec.role != "coord":
                    self.array(spec.name)[span.start : span.stop] = blocks[spec.name]

    def write_sample(self, index: int, sample: SampleData) -> None:
        """Replace one sample (read-modify-write of its shard under the shard lock)."""
        self._check_index(index)
        _check_sample(sample, self.params, f"sample {index}")
        rows = sample_rows(sample, self.specs)
        with shard_lock(self._root, self.shard_of(index)):
            for spec in self.specs:
                if spec.role != "coord":
                    self.array(spec.name)[index] = rows[spec.name]

    # ------------------------------------------------------------------ reads

    def read_sample(
        self, index: int, groups: Sequence[str] | None = None, time: slice = slice(None)
    ) -> dict[str, np.ndarray]:
        """Band-group arrays of one sample in storage dtype; `time` slices temporal groups."""
        self._check_index(index)
        out: dict[str, np.ndarray] = {}
        for name in groups or self.params.groups:
            if name not in self.params.groups:
                raise KeyError(
                    f"band group {name!r} is not in this corpus ({', '.join(self.params.groups)})"
                )
            arr = self.array(name)
            sel = (index, time) if is_temporal(band_group(name)) else (index,)
            out[name] = np.asarray(arr[sel])
        return out

    def read_record(self, index: int) -> SampleData:
        """The whole sample as a SampleData (index, data, quality, states): the inverse of a write."""
        self._check_index(index)
        row = {
            s.name: np.asarray(self.array(s.name)[index]) for s in self.specs if s.role != "coord"
        }
        p = self.params
        days = row["period_start"].astype(np.int64)
        starts = np.where(days == DAYS_FILL, np.datetime64("NaT"), days.astype("datetime64[D]"))

        def prov(raw: np.ndarray) -> Any:
            if raw.ndim:
                return [json.loads(str(v)) if str(v) else [] for v in raw]
            return json.loads(str(raw)) if str(raw) else []

        return SampleData(
            tile_id=str(row["tile_id"]),
            epsg=int(row["epsg"]),
            x0=float(row["x0"]),
            y0=float(row["y0"]),
            center_lon=float(row["center_lon"]),
            center_lat=float(row["center_lat"]),
            period_starts=starts.astype("datetime64[D]"),
            groups={g: row[g] for g in p.groups},
            valid_fraction={g: row[f"{g}_valid_fraction"] for g in p.groups},
            provenance={g: prov(row[f"{g}_provenance"]) for g in p.groups},
            states={m: SampleState(int(row[f"{m}_state"])) for m in p.modalities},
            errors={m: str(row[f"{m}_error"]) for m in p.modalities},
        )
