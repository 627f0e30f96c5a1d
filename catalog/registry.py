"""The modality registry: the one declarative source of truth for every band.

Pipeline and model code read bands, band groups, resolutions, dtypes, nodata,
radiometry and default normalisation from here and never restate them. A new
sensor is a new `Modality` entry, not new pipeline or model code.

Storage conventions (what the corpus holds):
- Sentinel-2 L2A: uint16 BOA reflectance x 10000, i.e. source DN with the
  processing-baseline offset (+1000 DN from baseline 04.00) removed; 0 = nodata.
- Landsat C2 L2: uint16 source DN as published; physical = DN x scale + offset.
- Sentinel-1: float32 backscatter in dB (10 log10 of linear power); NaN = nodata.
- WorldCover: uint8 class codes; 0 = nodata.
- OpenStreetMap: uint8 percent (0-100) of each 10 m pixel covered by the
  category, from a finer raster; a feature that touches a pixel gives >= 1.
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


@dataclass(frozen=True)
class BandGroup:
    """Bands stored together on one aligned grid; the unit of tokenisation."""

    name: str
    modality: str
    resolution: float
    bands: tuple[Band, ...]

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
    def temporal(self) -> bool:
        """One timestep per period (imagery) or a single map (WorldCover, OSM)."""
        return MODALITIES[self.modality].temporal

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

    def __post_init__(self) -> None:
        strays = [g.name for g in self.groups if g.modality != self.name]
        if strays:
            raise ValueError(f"modality {self.name!r}: groups {strays} name another modality")

    @property
    def bands(self) -> tuple[Band, ...]:
        return tuple(b for g in self.groups for b in g.bands)


# --------------------------------------------------------------------------- bands

_S2_RADIOMETRY = Radiometry(RadiometryKind.S2_BASELINE_OFFSET, scale=1e-4, unit="reflectance")
_LANDSAT_SR = Radiometry(RadiometryKind.IDENTITY, scale=2.75e-5, offset=-0.2, unit="reflectance")
_LANDSAT_ST = Radiometry(RadiometryKind.IDENTITY, scale=0.00341802, offset=149.0, unit="K")
_S1_DB = Radiometry(RadiometryKind.LINEAR_TO_DB, unit="dB")


def _s2(name: str, common: str, res: float, mean: float, std: float, desc: str) -> Band:
    return Band(
        name=name,
        aliases=(name, common, name.lower()),
        dtype="uint16",
        nodata=0,
        native_res=res,
        radiometry=_S2_RADIOMETRY,
        normalization=Normalization("standard", mean, std),
        description=desc,
    )


def _landsat(name: str, common: str, mean: float, std: float, radiometry: Radiometry) -> Band:
    return Band(
        name=name,
        aliases=(name, common, name.lower()),
        dtype="uint16",
        nodata=0,
        native_res=30,
        radiometry=radiometry,
        normalization=Normalization("standard", mean, std),
    )


S2_GROUPS = (
    BandGroup(
        "s2_10m",
        "sentinel2_l2a",
        10,
        (
            _s2("B02", "blue", 10, 1100, 900, "blue 490 nm"),
            _s2("B03", "green", 10, 1250, 850, "green 560 nm"),
            _s2("B04", "red", 10, 1250, 1000, "red 665 nm"),
            _s2("B08", "nir", 10, 2700, 1100, "NIR 842 nm"),
        ),
    ),
    BandGroup(
        "s2_20m",
        "sentinel2_l2a",
        20,
        (
            _s2("B05", "rededge1", 20, 1600, 950, "red edge 705 nm"),
            _s2("B06", "rededge2", 20, 2300, 1000, "red edge 740 nm"),
            _s2("B07", "rededge3", 20, 2600, 1100, "red edge 783 nm"),
            _s2("B8A", "nir08", 20, 2850, 1100, "narrow NIR 865 nm"),
            _s2("B11", "swir16", 20, 2300, 1100, "SWIR 1610 nm"),
            _s2("B12", "swir22", 20, 1600, 1000, "SWIR 2190 nm"),
        ),
    ),
    BandGroup(
        "s2_40m",
        "sentinel2_l2a",
        40,
        (
            _s2("B01", "coastal", 60, 1100, 900, "coastal aerosol 443 nm"),
            _s2("B09", "nir09", 60, 900, 600, "water vapour 945 nm"),
        ),
    ),
)

S1_GROUPS = (
    BandGroup(
        "s1",
        "sentinel1",
        10,
        tuple(
            Band(
                name=pol,
                aliases=(pol, pol.lower()),
                dtype="float32",
                nodata=float("nan"),
                native_res=10,
                radiometry=_S1_DB,
                normalization=Normalization("standard", mean, std),
                description=f"{pol} backscatter (gamma0 RTC or sigma0 GRD)",
            )
            for pol, mean, std in (("VV", -11.0, 4.5), ("VH", -18.0, 5.0))
        ),
    ),
)

LANDSAT_GROUPS = (
    BandGroup(
        "landsat",
        "landsat_c2l2",
        20,
        (
            _landsat("SR_B1", "coastal", 9000, 3000, _LANDSAT_SR),
            _landsat("SR_B2", "blue", 9300, 3000, _LANDSAT_SR),
            _landsat("SR_B3", "green", 10500, 3200, _LANDSAT_SR),
            _landsat("SR_B4", "red", 10800, 3800, _LANDSAT_SR),
            _landsat("SR_B5", "nir08", 17000, 4500, _LANDSAT_SR),
            _landsat("SR_B6", "swir16", 15500, 4500, _LANDSAT_SR),
            _landsat("SR_B7", "swir22", 12500, 4200, _LANDSAT_SR),
            _landsat("ST_B10", "lwir11", 44000, 3000, _LANDSAT_ST),
        ),
    ),
)

WORLDCOVER_CLASSES: dict[int, str] = {
    10: "tree cover",
    20: "shrubland",
    30: "grassland",
    40: "cropland",
    50: "built-up",
    60: "bare / sparse vegetation",
    70: "snow and ice",
    80: "permanent water bodies",
    90: "herbaceous wetland",
    95: "mangroves",
    100: "moss and lichen",
}

WORLDCOVER_GROUPS = (
    BandGroup(
        "worldcover",
        "worldcover",
        10,
        (
            Band(
                name="map",
                aliases=("map", "Map", "classification"),
                dtype="uint8",
                nodata=0,
                native_res=10,
                radiometry=Radiometry(RadiometryKind.CLASSES),
                normalization=Normalization("onehot"),
                description="ESA WorldCover 2021 v200 class code",
            ),
        ),
    ),
)

_P, _L, _A = GeometryKind.POINT, GeometryKind.LINE, GeometryKind.POLYGON

OSM_CATEGORIES: tuple[OsmCategory, ...] = (
    OsmCategory("aerialway_pylon", TagRule("aerialway", ("pylon",)), _P),
    OsmCategory("aerodrome", TagRule("aeroway", ("aerodrome",)), _A),
    OsmCategory("airstrip", TagRule("aeroway", ("airstrip",)), _A),
    OsmCategory("amenity_fuel", TagRule("amenity", ("fuel",)), _P),
    OsmCategory("building", TagRule("building"), _A),
    OsmCategory("chimney", TagRule("man_made", ("chimney",)), _P),
    OsmCategory("communications_tower", TagRule("man_made", ("communications_tower",)), _P),
    OsmCategory("crane", TagRule("man_made", ("crane",)), _P),
    OsmCategory("flagpole", TagRule("man_made", ("flagpole",)), _P),
    OsmCategory("fountain", TagRule("amenity", ("fountain",)), _P),
    OsmCategory(
        "generator_wind", TagRule("power", ("generator",), (("generator:source", "wind"),)), _P
    ),
    OsmCategory("helipad", TagRule("aeroway", ("helipad",)), _P),
    OsmCategory(
        "highway",
        TagRule(
            "highway",
            (
                "motorway",
                "motorway_link",
                "trunk",
                "trunk_link",
                "primary",
                "primary_link",
                "secondary",
                "secondary_link",
                "tertiary",
                "tertiary_link",
                "unclassified",
                "residential",
                "living_street",
                "service",
                "road",
                "track",
            ),
        ),
        _L,
    ),
    OsmCategory("leisure", TagRule("leisure"), _A),
    OsmCategory("lighthouse", TagRule("man_made", ("lighthouse",)), _P),
    OsmCategory("obelisk", TagRule("man_made", ("obelisk",)), _P),
    OsmCategory("observatory", TagRule("man_made", ("observatory",)), _P),
    OsmCategory("parking", TagRule("amenity", ("parking",)), _A),
    OsmCategory("petroleum_well", TagRule("man_made", ("petroleum_well",)), _P),
    OsmCategory("power_plant", TagRule("power", ("plant",)), _A),
    OsmCategory("power_substation", TagRule("power", ("substation",)), _A),
    OsmCategory("power_tower", TagRule("power", ("tower",)), _P),
    OsmCategory("river", TagRule("waterway", ("river",)), _L),
    OsmCategory("runway", TagRule("aeroway", ("runway",)), _L),
    OsmCategory("satellite_dish", TagRule("man_made", ("satellite_dish",)), _P),
    OsmCategory("silo", TagRule("man_made", ("silo",)), _P),
    OsmCategory("storage_tank", TagRule("man_made", ("storage_tank",)), _P),
    OsmCategory("taxiway", TagRule("aeroway", ("taxiway",)), _L),
    OsmCategory("water_tower", TagRule("man_made", ("water_tower",)), _P),
    OsmCategory("works", TagRule("man_made", ("works",)), _A),
)

OSM_GROUPS = (
    BandGroup(
        "osm",
        "openstreetmap",
        10,
        tuple(
            Band(
                name=c.name,
                aliases=(c.name,),
                dtype="uint8",
                nodata=255,
                native_res=10,
                radiometry=Radiometry(RadiometryKind.IDENTITY, scale=0.01, unit="fraction"),
                normalization=Normalization("scale", 0.0, 100.0),
                description=f"{c.rule.key}={'|'.join(c.rule.values) or '*'} ({c.geometry})",
            )
            for c in OSM_CATEGORIES
        ),
    ),
)

MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality(
            "sentinel2_l2a",
            "Sentinel-2 L2A",
            temporal=True,
            groups=S2_GROUPS,
            mask=MaskBand(
                "SCL",
                ("SCL", "scl"),
                native_res=20,
                kind="classes",
                # 0 no data, 1 saturated/defective, 3 cloud shadow, 8 cloud medium,
                # 9 cloud high, 10 thin cirrus
                invalid=(0, 1, 3, 8, 9, 10),
            ),
        ),
        Modality("sentinel1", "Sentinel-1 (RTC or GRD)", temporal=True, groups=S1_GROUPS),
        Modality(
            "landsat_c2l2",
            "Landsat 8/9 Collection 2 Level-2",
            temporal=True,
            groups=LANDSAT_GROUPS,
            platforms=frozenset({"landsat-8", "landsat-9"}),
            mask=MaskBand(
                "QA_PIXEL",
                ("QA_PIXEL", "qa_pixel"),
                native_res=30,
                kind="bits",
                # bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow
                invalid=(0, 1, 2, 3, 4),
                nodata=1,
            ),
        ),
        Modality(
            "worldcover",
            "ESA WorldCover 2021 v200",
            temporal=False,
            groups=WORLDCOVER_GROUPS,
            encodable=False,
            classes=WORLDCOVER_CLASSES,
        ),
        Modality(
            "openstreetmap",
            "OpenStreetMap (30 OlmoEarth categories)",
            temporal=False,
            groups=OSM_GROUPS,
            encodable=False,
            source="osm",
        ),
    )
}

BAND_GROUPS: dict[str, BandGroup] = {g.name: g for m in MODALITIES.values() for g in m.groups}


def is_osm(name: str) -> bool:
    """Whether modality `name` is built from OSM features (osm_file/overpass), not STAC items."""
    return name in MODALITIES and MODALITIES[name].source == "osm"


def modality(name: str) -> Modality:
    """Look up a modality by name with an error that lists the valid names."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(
            f"unknown modality {name!r}; the registry has: {', '.join(MODALITIES)}"
        ) from None


def band_group(name: str) -> BandGroup:
    """Look up a band group by name with an error that lists the valid names."""
    try:
        return BAND_GROUPS[name]
    except KeyError:
        raise KeyError(
            f"unknown band group {name!r}; the registry has: {', '.join(BAND_GROUPS)}"
        ) from None


def modality_of_group(group: str) -> Modality:
    return MODALITIES[band_group(group).modality]
