"""The corpus store: create, write whole shards or single samples, read them back.

The layout itself is planned in `schema.py` (pure); this module does the I/O.
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
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import numpy as np
import zarr
from terracube.catalog.registry import band_group
from terracube.pipeline.corpus.sample import (
    STRING_DTYPE,
    SampleData,
    check_sample,
    epsg_is_known,
    sample_rows,
)
from terracube.pipeline.corpus.schema import (
    DAYS_FILL,
    SUPPORTED_FORMAT_VERSIONS,
    ArraySpec,
    CorpusCodecs,
    CorpusError,
    CorpusParams,
    InnerChunking,
    SampleState,
    plan_arrays,
    root_attrs,
)
from terracube.pipeline.corpus.shard_whole import read_array
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
    "epsg_is_known",
    "open_store",
    "sample_rows",
]


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


def complete_chunks() -> contextlib.AbstractContextManager[Any]:
    """Arrays opened inside write every chunk, fill-valued ones included (format 2: a
    written shard is a complete object, so a missing file or chunk is damage)."""
    return zarr.config.set({"array.write_empty_chunks": True})


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
        compressors=(ZstdCodec(level=codecs.zstd_level, checksum=True),),
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
        # zarr types attributes as any JSON value; create_corpus writes this one as an object
        params = cast(Mapping[str, Any], group.attrs["terracube:params"])
        self.params = CorpusParams.from_attrs(dict(params))
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
                f"no corpus at {os.fspath(url)!r}; check the path, or build one with "
                "`terracube build CONFIG`"
            ) from None
        return cls(group, url, storage_options)

    @property
    def format_version(self) -> int:
        # checked against SUPPORTED_FORMAT_VERSIONS (ints) on open; zarr types it as any JSON
        return int(cast(int, self.group.attrs["terracube_format_version"]))

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
        return read_array(self.array(f"{modality}_state"))

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
                check_sample(s, self.params, f"sample {i}")
        rows = [sample_rows(s, self.specs) for s in samples]
        blocks = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
        with shard_lock(self._root, shard_index), complete_chunks():
            for spec in self.specs:
                if spec.role != "coord":
                    self.array(spec.name)[span.start : span.stop] = blocks[spec.name]

    def write_sample(self, index: int, sample: SampleData) -> None:
        """Replace one sample (read-modify-write of its shard under the shard lock)."""
        self._check_index(index)
        check_sample(sample, self.params, f"sample {index}")
        rows = sample_rows(sample, self.specs)
        with shard_lock(self._root, self.shard_of(index)), complete_chunks():
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
            sel = (index, time) if band_group(name).temporal else (index,)
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
