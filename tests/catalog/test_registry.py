"""Registry invariants the pipeline and model rely on without re-checking."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
from terracube.catalog.bands import TILE_SIZE_M
from terracube.catalog.registry import (
    BAND_GROUPS,
    MODALITIES,
    OSM_CATEGORIES,
    BandGroup,
    GeometryKind,
    Modality,
    TagRule,
    band_group,
    is_osm,
    modality,
    modality_of_group,
)
from terracube.catalog.s2_baseline import s2_offset_applies

OSM_NAMES = (
    "aerialway_pylon",
    "aerodrome",
    "airstrip",
    "amenity_fuel",
    "building",
    "chimney",
    "communications_tower",
    "crane",
    "flagpole",
    "fountain",
    "generator_wind",
    "helipad",
    "highway",
    "leisure",
    "lighthouse",
    "obelisk",
    "observatory",
    "parking",
    "petroleum_well",
    "power_plant",
    "power_substation",
    "power_tower",
    "river",
    "runway",
    "satellite_dish",
    "silo",
    "storage_tank",
    "taxiway",
    "water_tower",
    "works",
)


def group_bands(name: str) -> list[str]:
    return list(band_group(name).band_names)


def test_every_band_is_in_exactly_one_group() -> None:
    for mod in MODALITIES.values():
        counts = Counter(b.name for g in mod.groups for b in g.bands)
        assert all(n == 1 for n in counts.values()), (mod.name, counts)
        assert all(g.modality == mod.name for g in mod.groups)
    group_names = [g.name for m in MODALITIES.values() for g in m.groups]
    assert len(group_names) == len(set(group_names)) == len(BAND_GROUPS)


def test_group_resolutions_divide_the_tile() -> None:
    for group in BAND_GROUPS.values():
        assert TILE_SIZE_M % group.resolution == 0, group.name
        assert group.pixels * group.resolution == TILE_SIZE_M


def test_bands_of_a_group_share_dtype_and_nodata() -> None:
    for group in BAND_GROUPS.values():
        assert {b.dtype for b in group.bands} == {group.dtype}, group.name
        nodata = [b.nodata for b in group.bands]
        if math.isnan(group.nodata):
            assert all(math.isnan(v) for v in nodata), group.name
        else:
            assert set(nodata) == {group.nodata}, group.name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "float32"}, "mixes dtypes"),
        ({"nodata": 1.0}, "mixes nodatas"),
        (
            {"normalization": BAND_GROUPS["s2_10m"].bands[0].normalization.__class__("scale")},
            "mixes normalization kinds",
        ),
    ],
)
def test_a_group_whose_bands_disagree_is_refused(change: dict, message: str) -> None:
    bands = BAND_GROUPS["s2_10m"].bands
    odd = (*bands[:-1], dataclasses.replace(bands[-1], **change))
    with pytest.raises(ValueError, match=message):
        BandGroup("s2_10m", "sentinel2_l2a", 10, odd)


def test_a_group_that_does_not_tile_the_cell_or_has_no_bands_is_refused() -> None:
    bands = BAND_GROUPS["s2_10m"].bands
    with pytest.raises(ValueError, match="does not divide"):
        BandGroup("s2_30m", "sentinel2_l2a", 30, bands)
    with pytest.raises(ValueError, match="no bands"):
        BandGroup("empty", "sentinel2_l2a", 10, ())


def test_a_modality_whose_group_names_another_is_refused() -> None:
    with pytest.raises(ValueError, match="name another modality"):
        Modality("s1_copy", "copy", temporal=True, groups=MODALITIES["sentinel1"].groups)


def test_a_group_whose_time_axis_differs_from_its_modality_is_refused() -> None:
    static = dataclasses.replace(BAND_GROUPS["s1"], temporal=False)
    with pytest.raises(ValueError, match="disagree on temporal"):
        Modality("sentinel1", "S1", temporal=True, groups=(static,))


def test_provider_tables_are_read_off_the_registry() -> None:
    from terracube.catalog.stac.items import COLLECTION_MODALITIES, OPTIONAL_BANDS

    assert COLLECTION_MODALITIES == {
        "sentinel-2-l2a": "sentinel2_l2a",
        "sentinel-2-c1-l2a": "sentinel2_l2a",
        "sentinel-s2-l2a-cogs": "sentinel2_l2a",
        "sentinel-1-rtc": "sentinel1",
        "landsat-c2-l2": "landsat_c2l2",
        "landsat-c2l2-sr": "landsat_c2l2",
        "landsat-c2l2-st": "landsat_c2l2",
        "esa-worldcover": "worldcover",
    }
    assert {m: b for m, b in OPTIONAL_BANDS.items() if b} == {
        "landsat_c2l2": {"ST_B10"},
        "sentinel1": {"VH"},
    }


def test_groups_know_whether_they_are_temporal() -> None:
    temporal = {g.name for g in BAND_GROUPS.values() if g.temporal}
    assert temporal == {"s2_10m", "s2_20m", "s2_40m", "s1", "landsat"}
    assert {m for m in MODALITIES if is_osm(m)} == {"openstreetmap"}
    assert MODALITIES["landsat_c2l2"].platforms == {"landsat-8", "landsat-9"}


def test_sentinel2_groups_and_bands() -> None:
    s2 = modality("sentinel2_l2a")
    assert [(g.name, g.resolution) for g in s2.groups] == [
        ("s2_10m", 10),
        ("s2_20m", 20),
        ("s2_40m", 40),
    ]
    assert group_bands("s2_10m") == ["B02", "B03", "B04", "B08"]
    assert group_bands("s2_20m") == ["B05", "B06", "B07", "B8A", "B11", "B12"]
    assert group_bands("s2_40m") == ["B01", "B09"]
    assert len(s2.bands) == 12 and "B10" not in {b.name for b in s2.bands}
    assert all(b.dtype == "uint16" and b.nodata == 0 for b in s2.bands)
    assert s2.mask is not None and s2.mask.name == "SCL" and s2.mask.kind == "classes"


def test_sentinel1_is_vv_vh_float_db() -> None:
    s1 = modality("sentinel1")
    assert [b.name for b in s1.bands] == ["VV", "VH"]
    assert all(b.dtype == "float32" and math.isnan(b.nodata) for b in s1.bands)
    assert s1.groups[0].resolution == 10


def test_landsat_bands_and_qa_mask() -> None:
    landsat = modality("landsat_c2l2")
    assert [b.name for b in landsat.bands] == [f"SR_B{i}" for i in range(1, 8)] + ["ST_B10"]
    assert [g.resolution for g in landsat.groups] == [20]
    assert landsat.mask is not None
    assert (landsat.mask.name, landsat.mask.kind) == ("QA_PIXEL", "bits")
    # Collection 2 QA_PIXEL bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow.
    assert set(landsat.mask.invalid) == {0, 1, 2, 3, 4}


def test_worldcover_has_the_eleven_classes() -> None:
    worldcover = modality("worldcover")
    assert sorted(worldcover.classes) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert worldcover.classes[95] == "mangroves"
    assert not worldcover.temporal and not worldcover.encodable


def test_osm_categories_are_the_thirty_in_order() -> None:
    assert tuple(c.name for c in OSM_CATEGORIES) == OSM_NAMES
    assert group_bands("osm") == list(OSM_NAMES)
    for category in OSM_CATEGORIES:
        assert isinstance(category.rule, TagRule) and category.rule.key
        assert isinstance(category.geometry, GeometryKind)
    by_name = {c.name: c for c in OSM_CATEGORIES}
    assert by_name["water_tower"].rule.key == "man_made"
    assert by_name["highway"].geometry == GeometryKind.LINE
    assert by_name["building"].geometry == GeometryKind.POLYGON
    assert not modality("openstreetmap").encodable


@pytest.mark.parametrize(
    ("category", "tags", "matches"),
    [
        ("generator_wind", {"power": "generator", "generator:source": "wind"}, True),
        ("generator_wind", {"power": "generator", "generator:source": "solar"}, False),
        ("generator_wind", {"power": "generator"}, False),
        ("generator_wind", {"generator:source": "wind"}, False),
        ("water_tower", {"man_made": "water_tower"}, True),
        ("water_tower", {"building": "water_tower"}, False),
        ("building", {"building": "yes"}, True),
        ("building", {"building": "house", "amenity": "school"}, True),
        ("building", {"amenity": "school"}, False),
        ("highway", {"highway": "residential"}, True),
        ("highway", {"highway": "footway"}, False),
        ("river", {"waterway": "river"}, True),
        ("river", {"waterway": "stream"}, False),
        ("building", {"building": "no"}, False),
        ("leisure", {"leisure": "no"}, False),
    ],
)
def test_tag_rules_match(category: str, tags: dict[str, str], matches: bool) -> None:
    rule = {c.name: c.rule for c in OSM_CATEGORIES}[category]
    assert rule.matches(tags) is matches


def test_aliases_are_unique_within_a_modality() -> None:
    for mod in MODALITIES.values():
        aliases = [a for b in mod.bands for a in b.aliases]
        if mod.mask is not None:
            aliases += list(mod.mask.aliases)
        duplicates = [a for a, n in Counter(aliases).items() if n > 1]
        assert not duplicates, (mod.name, duplicates)
        assert all(b.name in b.aliases for b in mod.bands)


@pytest.mark.parametrize(
    ("baseline", "applies"),
    [
        ("04.00", True),
        ("03.01", False),
        ("05.11", True),
        (None, False),
        ("", False),
        ("04.01", True),
        ("02.14", False),
        ("N0400", True),
        ("N0213", False),
    ],
)
def test_s2_offset_applies(baseline: str | None, applies: bool) -> None:
    assert s2_offset_applies(baseline) is applies


@pytest.mark.parametrize("bad", ["4", "v04.00", "N04", "04-00"])
def test_unreadable_baseline_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad)):
        s2_offset_applies(bad)


def test_lookups_name_the_valid_choices() -> None:
    assert modality_of_group("s2_20m").name == "sentinel2_l2a"
    with pytest.raises(KeyError, match=r"unknown modality 'sentinel3'.*sentinel2_l2a"):
        modality("sentinel3")
    with pytest.raises(KeyError, match=r"unknown band group 's2_60m'.*s2_40m"):
        band_group("s2_60m")
