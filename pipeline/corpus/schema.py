"""The corpus layout as pure data: which arrays exist, with which dims, dtypes and shards.

Planning the layout is kept free of I/O so that `create_corpus` (writes it),
`validate` (checks a store against it) and the docs all agree on one answer.
Every band fact comes from the modality registry; nothing here restates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from terracube.catalog.bands import BASE_RESOLUTION_M, TILE_SIZE_M
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, BandGroup, band_group

FORMAT_VERSION = 2
"""Bumped on any change a reader of an older version could misread.

2: every written shard is a complete object — each array of a shard that holds any
written sample has its shard file, with every inner chunk in it (fill-valued ones
included) — and every zstd frame carries its content checksum. A missing shard file
or chunk is therefore damage, never "all fill", and a flipped byte fails its frame's
checksum instead of decoding to other numbers (`pipeline/corpus/integrity.py`).
1: shards and chunks equal to the fill value were not written, and frames had no
checksum: still read, and checked as far as that allows."""

SUPPORTED_FORMAT_VERSIONS = frozenset({1, 2})

COMPLETE_SHARDS_SINCE = 2
"""The first format version whose written shards are complete objects (see FORMAT_VERSION)."""

SAMPLE_DIM = "sample"
TIME_DIM = "time"

DAYS_FILL = -(2**31)
"""Fill of `period_start` (int32 days); declared as CF `missing_value` so xarray decodes NaT."""

PERIOD_START_ATTRS: dict[str, Any] = {
    "units": "days since 1970-01-01",
    "calendar": "proleptic_gregorian",
    "missing_value": DAYS_FILL,
}

SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}
PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj",
    "description": "Coordinate reference system information for geospatial data",
}


class CorpusError(ValueError):
    """A corpus cannot be created, opened or written as asked; the message says why and how to fix."""


class SampleState(IntEnum):
    """Per (sample, modality) build state; PENDING is the fill so unwritten reads as pending."""

    PENDING = 0
    DONE = 1
    EMPTY = 2
    FAILED = 3


@dataclass(frozen=True)
class CorpusCodecs:
    """Compression of every array: zarr's BytesCodec followed by Zstd at `zstd_level`."""

    zstd_level: int = 3

    def __post_init__(self) -> None:
        if not -131072 <= self.zstd_level <= 22:
            raise ValueError(
                f"zstd_level={self.zstd_level} is out of range; use 1..22 (3 is a good default)"
            )


@dataclass(frozen=True)
class InnerChunking:
    """Inner chunk of band-group arrays inside a shard: `time` timesteps x `spatial` px square.

    `spatial` counts each group's native pixels (capped at its tile side); None means
    the whole tile. The default, one timestep of a 64 px square (a quarter of a 10 m
    tile's side), was chosen with benchmarks/loader.py: the loader's crops (32-128 px)
    then decode about a third of the bytes that whole-tile chunks make them decode
    (the figures are in docs/corpus-format.md). Adjacent chunks of a crop are fetched
    in one range request, so small chunks do not mean many requests on object stores.
    """

    time: int = 1
    spatial: int | None = 64

    def __post_init__(self) -> None:
        if self.time < 1:
            raise ValueError(f"InnerChunking.time={self.time} must be >= 1")
        if self.spatial is not None and self.spatial < 1:
            raise ValueError(f"InnerChunking.spatial={self.spatial} must be >= 1 or None")


@dataclass(frozen=True)
class CorpusParams:
    """Creation parameters; stored in the root attrs and compared on re-create."""

    n_samples: int
    n_periods: int
    samples_per_shard: int
    groups: tuple[str, ...] = tuple(BAND_GROUPS)
    period: str = "P1M"
    """ISO-8601 duration of one period (the build's time scheme; recorded for readers)."""
    chunking: InnerChunking = field(default_factory=InnerChunking)
    codecs: CorpusCodecs = field(default_factory=CorpusCodecs)

    def __post_init__(self) -> None:
        for name in ("n_samples", "n_periods", "samples_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.groups:
            raise ValueError("groups is empty; pass at least one registry band group")
        for g in self.groups:
            band_group(g)  # raises naming the valid groups
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"groups {self.groups} lists a group twice")
        if self.chunking.time > self.n_periods:
            raise ValueError(
                f"InnerChunking.time={self.chunking.time} exceeds n_periods={self.n_periods}"
            )

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_samples / self.samples_per_shard)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities of the chosen groups, in registry order."""
        wanted = {band_group(g).modality for g in self.groups}
        return tuple(m for m in MODALITIES if m in wanted)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "n_periods": self.n_periods,
            "samples_per_shard": self.samples_per_shard,
            "groups": list(self.groups),
            "period": self.period,
            "inner_chunk_time": self.chunking.time,
            "inner_chunk_spatial": self.chunking.spatial,
            "zstd_level": self.codecs.zstd_level,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> CorpusParams:
        return cls(
            n_samples=int(attrs["n_samples"]),
            n_periods=int(attrs["n_periods"]),
            samples_per_shard=int(attrs["samples_per_shard"]),
            groups=tuple(attrs["groups"]),
            period=str(attrs["period"]),
            chunking=InnerChunking(attrs["inner_chunk_time"], attrs["inner_chunk_spatial"]),
            codecs=CorpusCodecs(int(attrs["zstd_level"])),
        )


def spatial_dims(group: BandGroup) -> tuple[str, str]:
    """Distinct y/x dim names per resolution (y10/x10, y20/x20...) so xarray can open the store."""
    res = resolution_label(group.resolution)
    return f"y{res}", f"x{res}"


def band_dim(group: BandGroup) -> str:
    return f"band_{group.name}"


def resolution_label(resolution: float) -> str:
    return (
        str(int(resolution))
        if float(resolution).is_integer()
        else str(resolution).replace(".", "p")
    )


def json_number(value: float) -> float | str:
    """JSON-safe number: NaN/inf become the strings zarr v3 uses for fill values."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def group_facts(group: BandGroup) -> dict[str, Any]:
    """Registry facts a reader needs to interpret and invert a group without terracube."""
    return {
        "modality": group.modality,
        "temporal": group.temporal,
        "resolution": group.resolution,
        "pixels": group.pixels,
        "dtype": group.dtype,
        "nodata": json_number(group.nodata),
        "bands": [
            {
                "name": b.name,
                "native_res": b.native_res,
                "nodata": json_number(b.nodata),
                "radiometry": {
                    "kind": str(b.radiometry.kind),
                    "scale": b.radiometry.scale,
                    "offset": b.radiometry.offset,
                    "unit": b.radiometry.unit,
                },
                "description": b.description,
            }
            for b in group.bands
        ],
    }


def modality_facts(name: str) -> dict[str, Any]:
    m = MODALITIES[name]
    facts: dict[str, Any] = {
        "title": m.title,
        "temporal": m.temporal,
        "encodable": m.encodable,
        "groups": [g.name for g in m.groups],
    }
    if m.classes:
        facts["classes"] = {str(k): v for k, v in m.classes.items()}
    return facts


@dataclass(frozen=True)
class ArraySpec:
    """One array of the corpus as planned: what `validate` compares a store against."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    """zarr v3 data type name: uint16, float32, int32, float64, uint8 or string."""
    fill_value: Any
    shards: tuple[int, ...] | None
    chunks: tuple[int, ...]
    attrs: dict[str, Any]
    role: str
    """data | quality | index | state | coord (write order: data first, state last)."""


def _per_sample(
    name: str,
    p: CorpusParams,
    dtype: str,
    fill: Any,
    role: str,
    temporal: bool = False,
    attrs: dict[str, Any] | None = None,
) -> ArraySpec:
    """An index/quality/state array: whole shards along the sample axis, one inner chunk."""
    dims = (SAMPLE_DIM, TIME_DIM) if temporal else (SAMPLE_DIM,)
    shape = (p.n_samples, p.n_periods) if temporal else (p.n_samples,)
    shards = (p.samples_per_shard, p.n_periods) if temporal else (p.samples_per_shard,)
    return ArraySpec(name, dims, shape, dtype, fill, shards, shards, attrs or {}, role)


def group_array_spec(group: BandGroup, p: CorpusParams) -> ArraySpec:
    ydim, xdim = spatial_dims(group)
    n_bands, px = len(group.bands), group.pixels
    side = min(px, p.chunking.spatial or px)
    if px % side:
        raise ValueError(
            f"InnerChunking.spatial={side} does not divide {group.name}'s {px} px tile; "
            "pick a power of two <= the coarsest group's pixels"
        )
    attrs: dict[str, Any] = {
        "long_name": f"{MODALITIES[group.modality].title} {group.name}",
        "terracube:group": group.name,
        "terracube:facts": group_facts(group),
        "zarr_conventions": [SPATIAL_CONVENTION],
        "spatial:dimensions": [ydim, xdim],
        "spatial:shape": [px, px],
        "spatial:transform_type": "affine",
        "spatial:registration": "pixel",
        "terracube:transform_template": [
            group.resolution,
            0.0,
            "x0[sample]",
            0.0,
            -group.resolution,
            "y0[sample]",
        ],
        "terracube:crs": "EPSG:{epsg[sample]}",
    }
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    shards: tuple[int, ...]
    chunks: tuple[int, ...]
    if group.temporal:
        dims = (SAMPLE_DIM, TIME_DIM, band_dim(group), ydim, xdim)
        shape = (p.n_samples, p.n_periods, n_bands, px, px)
        shards = (p.samples_per_shard, p.n_periods, n_bands, px, px)
        chunks = (1, p.chunking.time, n_bands, side, side)
    else:
        dims = (SAMPLE_DIM, band_dim(group), ydim, xdim)
        shape = (p.n_samples, n_bands, px, px)
        shards = (p.samples_per_shard, n_bands, px, px)
        chunks = (1, n_bands, side, side)
    return ArraySpec(
        group.name, dims, shape, group.dtype, group.nodata, shards, chunks, attrs, "data"
    )


def plan_arrays(p: CorpusParams) -> list[ArraySpec]:
    """Every array of a corpus with these parameters, in write order (state arrays last)."""
    specs: list[ArraySpec] = []
    groups = [band_group(g) for g in p.groups]
    for g in groups:
        specs.append(
            ArraySpec(
                band_dim(g),
                (band_dim(g),),
                (len(g.bands),),
                "string",
                "",
                None,
                (len(g.bands),),
                {},
                "coord",
            )
        )
    specs += [group_array_spec(g, p) for g in groups]
    for g in groups:
        temporal = g.temporal
        specs.append(
            _per_sample(
                f"{g.name}_valid_fraction",
                p,
                "float32",
                0.0,
                "quality",
                temporal,
                {
                    "long_name": f"fraction of valid {g.name} pixels (0 = missing)",
                    "valid_range": [0.0, 1.0],
                },
            )
        )
        specs.append(
            _per_sample(
                f"{g.name}_provenance",
                p,
                "string",
                "",
                "quality",
                temporal,
                {
                    "long_name": f"STAC item ids composited into {g.name}",
                    "terracube:encoding": "json-list",
                },
            )
        )
    specs += [
        _per_sample(
            "tile_id", p, "string", "", "index", attrs={"long_name": "tile id of the grid"}
        ),
        _per_sample(
            "epsg", p, "int32", 0, "index", attrs={"long_name": "EPSG code of the sample CRS"}
        ),
        _per_sample(
            "x0", p, "float64", math.nan, "index", attrs={"long_name": "upper-left x", "units": "m"}
        ),
        _per_sample(
            "y0", p, "float64", math.nan, "index", attrs={"long_name": "upper-left y", "units": "m"}
        ),
        _per_sample("center_lon", p, "float64", math.nan, "index", attrs={"units": "degrees_east"}),
        _per_sample(
            "center_lat", p, "float64", math.nan, "index", attrs={"units": "degrees_north"}
        ),
        _per_sample("period_start", p, "int32", DAYS_FILL, "index", True, dict(PERIOD_START_ATTRS)),
    ]
    for m in p.modalities:
        specs.append(
            _per_sample(
                f"{m}_error",
                p,
                "string",
                "",
                "state",
                attrs={"long_name": f"why {m} is failed or empty"},
            )
        )
    states = {s.name.lower(): int(s) for s in SampleState}
    for m in p.modalities:
        specs.append(
            _per_sample(
                f"{m}_state",
                p,
                "uint8",
                0,
                "state",
                attrs={"flag_values": list(states.values()), "flag_meanings": " ".join(states)},
            )
        )
    return specs


def root_attrs(p: CorpusParams) -> dict[str, Any]:
    return {
        "terracube_format_version": FORMAT_VERSION,
        "terracube:params": p.to_attrs(),
        "terracube:tile_size_m": TILE_SIZE_M,
        "terracube:base_resolution_m": BASE_RESOLUTION_M,
        "terracube:groups": {g: group_facts(band_group(g)) for g in p.groups},
        "terracube:modalities": {m: modality_facts(m) for m in p.modalities},
        "terracube:states": {s.name.lower(): int(s) for s in SampleState},
    }
