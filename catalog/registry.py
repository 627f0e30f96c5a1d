"""The modality registry: the one declarative source of truth for every band.

Pipeline and model code read bands, band groups, resolutions, dtypes, nodata,
radiometry and default normalisation from here and never restate them. A new
sensor is a new `Modality` entry, not new pipeline or model code. The types and
the checks on them are in `catalog/bands.py`; this module only declares and looks up.

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

from terracube.catalog.bands import (
    Band,
    BandGroup,
    GeometryKind,
    MaskBand,
    Modality,
    Normalization,
    OsmCategory,
    Radiometry,
    RadiometryKind,
    TagRule,
)

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


def _landsat(
    name: str, common: str, mean: float, std: float, radiometry: Radiometry, optional: bool = False
) -> Band:
    return Band(
        name=name,
        aliases=(name, common, name.lower()),
        dtype="uint16",
        nodata=0,
        native_res=30,
        radiometry=radiometry,
        normalization=Normalization("standard", mean, std),
        optional=optional,
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
                optional=pol == "VH",  # single-polarisation (1SSV) scenes have no VH
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
            _landsat("ST_B10", "lwir11", 44000, 3000, _LANDSAT_ST, optional=True),
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
        temporal=False,
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
        temporal=False,
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
            # Earth Search v1 and Planetary Computer; Earth Search collection-1; Earth Search v0 COGs
            stac_collections=("sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-s2-l2a-cogs"),
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
        Modality(
            "sentinel1",
            "Sentinel-1 (RTC or GRD)",
            temporal=True,
            groups=S1_GROUPS,
            stac_collections=("sentinel-1-rtc",),  # Planetary Computer, terrain-corrected gamma0
        ),
        Modality(
            "landsat_c2l2",
            "Landsat 8/9 Collection 2 Level-2",
            temporal=True,
            groups=LANDSAT_GROUPS,
            # Earth Search v1 and Planetary Computer; USGS landsatlook / stactools SR and ST items
            stac_collections=("landsat-c2-l2", "landsat-c2l2-sr", "landsat-c2l2-st"),
            # OLI/TIRS band numbering (SR_B1 coastal ... ST_B10); TM/ETM+ (Landsat 4-7) differ
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
            stac_collections=("esa-worldcover",),
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
