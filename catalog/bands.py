"""The registry's vocabulary: what a band, a band group, a mask and a modality are.

Small frozen value types and the checks that make a declaration valid (a group's
bands agree on dtype, nodata and normalisation; its grid tiles the 2560 m cell; a
modality's groups are its own). `catalog/registry.py` declares every sensor with them;
nothing else declares bands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

TILE_SIZE_M = 2560
"""Tile edge in metres; every band group's resolution divides it."""

BASE_RESOLUTION_M = 10
"""Resolution of the tile's reference grid (256 x 256 px)."""


class RadiometryKind(StrEnum):
    """How a source DN becomes the stored value."""

    S2_BASELINE_OFFSET = "s2_baseline_offset"  # stored = DN - 1000 if baseline >= 04.00
    IDENTITY = "identity"  # stored = DN; physical = stored * scale + offset
    LINEAR_TO_DB = "linear_to_db"  # stored = 10 * log10(linear power)
    CLASSES = "classes"  # categorical codes, never converted


@dataclass(frozen=True)
class Radiometry:
    """Source -> stored conversion, and stored -> physical scale/offset."""

    kind: RadiometryKind
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


@dataclass(frozen=True)
class Normalization:
    """Default stored-value normalisation; corpus statistics override it."""

    kind: Literal["standard", "onehot", "scale"]
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Band:
    """One stored band and the asset keys providers publish it under."""

    name: str
    aliases: tuple[str, ...]
    dtype: str
    nodata: float
    native_res: float
    radiometry: Radiometry
    normalization: Normalization
    description: str = ""
    optional: bool = False
    """Absent from some products by their nature (Landsat L2SR has no ST_B10, single-pol
    S1 no VH): stored as nodata there, not a broken item."""


@dataclass(frozen=True)
class BandGroup:
    """Bands stored together on one aligned grid; the unit of tokenisation."""

    name: str
    modality: str
    resolution: float
    bands: tuple[Band, ...]
    temporal: bool = True
    """One layer per period (imagery), or a single map (WorldCover, OSM): its modality's."""

    def __post_init__(self) -> None:
        """One array per group: its bands share dtype, nodata, normalisation; it tiles the cell."""
        if not self.bands:
            raise ValueError(f"band group {self.name!r} has no bands")
        if TILE_SIZE_M % self.resolution:
            raise ValueError(
                f"band group {self.name!r}: resolution {self.resolution} m does not divide "
                f"the {TILE_SIZE_M} m tile"
            )
        for what, values in (
            ("dtype", {b.dtype for b in self.bands}),
            ("nodata", {"nan" if b.nodata != b.nodata else b.nodata for b in self.bands}),
            ("normalization kind", {b.normalization.kind for b in self.bands}),
        ):
            if len(values) > 1:
                raise ValueError(
                    f"band group {self.name!r} ({', '.join(self.band_names)}) mixes {what}s "
                    f"{sorted(map(str, values))}; a group is one array: split it or make them agree"
                )

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def pixels(self) -> int:
        """Edge length in pixels of one tile at this group's resolution."""
        return int(TILE_SIZE_M // self.resolution)

    @property
    def dtype(self) -> str:
        """The group's storage dtype (every band's: checked when the group is made)."""
        return self.bands[0].dtype

    @property
    def nodata(self) -> float:
        """The group's nodata value (every band's: checked when the group is made)."""
        return self.bands[0].nodata


@dataclass(frozen=True)
class MaskBand:
    """A per-pixel quality band read alongside a modality to mask clouds."""

    name: str
    aliases: tuple[str, ...]
    native_res: float
    kind: Literal["classes", "bits"]
    invalid: tuple[int, ...]
    """Class codes (kind=classes) or bit indices (kind=bits) that make a pixel invalid."""
    nodata: int = 0


class GeometryKind(StrEnum):
    POINT = "point"
    LINE = "line"
    POLYGON = "polygon"


@dataclass(frozen=True)
class TagRule:
    """`key` has one of `values` (any value when empty) and every `also` pair holds."""

    key: str
    values: tuple[str, ...] = ()
    also: tuple[tuple[str, str], ...] = ()

    def matches(self, tags: dict[str, str]) -> bool:
        value = tags.get(self.key)
        # OSM mappers write `building=no` to say "not a building".
        if value is None or value == "no" or (self.values and value not in self.values):
            return False
        return all(tags.get(k) == v for k, v in self.also)


@dataclass(frozen=True)
class OsmCategory:
    name: str
    rule: TagRule
    geometry: GeometryKind


@dataclass(frozen=True)
class Modality:
    name: str
    title: str
    temporal: bool
    groups: tuple[BandGroup, ...]
    mask: MaskBand | None = None
    encodable: bool = True
    """Maps (WorldCover, OSM) are decode-only targets: never encoder input."""
    classes: dict[int, str] = field(default_factory=dict)
    source: Literal["stac", "osm"] = "stac"
    """Where its data comes from: STAC items (rasters) or OSM features (osm_file/overpass)."""
    platforms: frozenset[str] = frozenset()
    """STAC `platform`s whose band numbering the registry follows (empty: any)."""
    stac_collections: tuple[str, ...] = ()
    """Provider collection ids that hold it (an item's `terracube:modality` wins)."""

    def __post_init__(self) -> None:
        strays = [g.name for g in self.groups if g.modality != self.name]
        if strays:
            raise ValueError(f"modality {self.name!r}: groups {strays} name another modality")
        mixed = [g.name for g in self.groups if g.temporal != self.temporal]
        if mixed:
            raise ValueError(f"modality {self.name!r}: groups {mixed} disagree on temporal")

    @property
    def bands(self) -> tuple[Band, ...]:
        return tuple(b for g in self.groups for b in g.bands)
