"""Local OSM extracts read with pyosmium: PBF and XML alike, clipped elements set aside
and counted, everything else exactly what osmnx builds.

Extracts: the osmnx test data (../shared/fixtures/real/osm/osmnx, gboeing/osmnx, MIT) and
a Geofabrik-style Monaco extract (tests/data/osm/SOURCES.md). Data (c) OpenStreetMap
contributors, ODbL 1.0.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import osmium
import osmnx
import pytest
import shapely
from shapely.errors import EmptyPartError
from terracube.catalog.osm.extract import ExtractError, extract_bounds
from terracube.catalog.osm.features import OSM_TAG_QUERY, categorize, read_osm_extract

from tests.catalog.osm_clip import clip_simple

OSMNX = "osm/osmnx"
MONACO = Path(__file__).parents[1] / "data" / "osm" / "monaco-latest.osm.pbf"
CLIP_BOX = (7.405, 43.725, 7.428, 43.742)
"""Through the middle of Monaco: multipolygons and ways cross all four edges."""


def _keyed(features: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return features.set_index(["osm_type", "osm_id", "category"]).sort_index()


def _assert_same_features(ours: gpd.GeoDataFrame, reference: gpd.GeoDataFrame) -> None:
    a, b = _keyed(ours), _keyed(reference)
    assert a.index.equals(b.index)
    assert bool(a.geometry.geom_equals_exact(b.geometry, 1e-9).all())


def _as_xml(pbf: Path, out: Path) -> Path:
    writer = osmium.SimpleWriter(str(out))
    for obj in osmium.FileProcessor(str(pbf)):
        {"n": writer.add_node, "w": writer.add_way, "r": writer.add_relation}[obj.type_str()](obj)
    writer.close()
    return out


@pytest.fixture(scope="module")
def monaco_xml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _as_xml(MONACO, tmp_path_factory.mktemp("osm") / "monaco.osm")


@pytest.fixture(scope="module")
def clipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip_simple(MONACO, CLIP_BOX, tmp_path_factory.mktemp("clip") / "clip.osm.pbf")


@pytest.mark.parametrize(
    ("path", "xml"),
    [
        ("West-Oakland.osm.bz2", "West-Oakland.osm.bz2"),
        ("planet_10.068,48.135_10.071,48.137.osm", "planet_10.068,48.135_10.071,48.137.osm"),
        ("aguascalientes.osm.pbf", "aguascalientes.osm.bz2"),
    ],
)
def test_complete_extracts_give_exactly_the_osmnx_features(
    fixtures_dir: Path, path: str, xml: str
) -> None:
    """PBF or XML, the features (ids, categories, geometries) are osmnx's from the XML."""
    ours, report = read_osm_extract(fixtures_dir / OSMNX / path)
    reference = categorize(osmnx.features_from_xml(fixtures_dir / OSMNX / xml, tags=OSM_TAG_QUERY))
    assert len(ours) > 0
    _assert_same_features(ours, reference)
    # The Bavarian extract holds a building multipolygon none of whose 4 ways is in it.
    expected = {"building": 1} if path.startswith("planet_") else {}
    assert dict(report.clipped_relations) == expected and not report.clipped_ways


def test_a_regional_pbf_reads_directly(monaco_xml: Path) -> None:
    ours, report = read_osm_extract(MONACO)
    _assert_same_features(ours, categorize(osmnx.features_from_xml(monaco_xml, tags=OSM_TAG_QUERY)))
    assert report.total == 0 and len(ours) == 2284
    assert ours.category.value_counts()["building"] == 1158
    assert extract_bounds(MONACO) == pytest.approx((7.409205, 43.72335, 7.448637, 43.75169))


def test_a_clipped_extract_keeps_every_whole_feature_and_counts_the_rest(
    clipped: Path, tmp_path: Path
) -> None:
    """The independent answer: the features of the whole extract that lie inside the box
    are kept, those with vertices on both sides are skipped and counted per category.
    osmnx itself fails on the same data as XML (the bug this reader exists for)."""
    with pytest.raises(EmptyPartError):
        osmnx.features_from_xml(_as_xml(clipped, tmp_path / "clip.osm"), tags=OSM_TAG_QUERY)
    ours, report = read_osm_extract(clipped)
    whole, _ = read_osm_extract(MONACO)
    box = shapely.box(*CLIP_BOX)
    _assert_same_features(ours, whole[whole.geometry.covered_by(box)])
    expected: dict[str, dict[str, int]] = {"way": {}, "relation": {}}
    for row in whole.itertuples():
        coords = shapely.get_coordinates(row.geometry)
        inside = shapely.contains_xy(box.buffer(1e-12), coords[:, 0], coords[:, 1])
        if inside.any() and not inside.all():
            counts = expected[row.osm_type]
            counts[row.category] = counts.get(row.category, 0) + 1
    assert (
        dict(report.clipped_ways)
        == expected["way"]
        == {"building": 19, "highway": 18, "leisure": 4}
    )
    assert dict(report.clipped_relations) == expected["relation"] == {"building": 1, "leisure": 1}
    assert "skipped 2 clipped relation(s)" in report.describe()


def test_unreadable_extracts_are_named(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="does not exist"):
        read_osm_extract(tmp_path / "nothing.osm.pbf")
    odd = tmp_path / "extract.geojson"
    odd.write_text("{}")
    with pytest.raises(ExtractError, match=r"extract\.geojson: unknown format"):
        read_osm_extract(odd)
    garbage = tmp_path / "broken.osm.pbf"
    garbage.write_bytes(b"\x00\x01not a pbf" * 100)
    with pytest.raises(ExtractError, match=r"broken\.osm\.pbf cannot be read"):
        read_osm_extract(garbage)
