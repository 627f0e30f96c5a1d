"""Normalization of real provider items into one NormalizedItem shape.

Items are the recorded Earth Search v1 / Planetary Computer responses from the
pystac-client test cassettes (Apache-2.0; Copernicus Sentinel data, USGS Landsat), the
USGS-format Landsat item from stactools-packages/landsat (Apache-2.0; USGS public
domain) and the ESA WorldCover example item from stactools-packages/esa-worldcover
(Apache-2.0; (c) ESA WorldCover project 2021, CC-BY-4.0).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
from terracube.catalog.registry import RadiometryKind, modality
from terracube.catalog.stac.http import REMOTE_POLICY, HrefPolicy, UnsafeHrefError
from terracube.catalog.stac.items import (
    ItemNormalizationError,
    normalize_item,
    normalize_items,
)

ITEMS = "pystac-client/items"
ES_S2_LANDSAT = f"{ITEMS}/earth-search-v1_s2l2a+landsatc2l2_point-105.1_40.17_2023-10-08_page1.json"
ES_MIXED = f"{ITEMS}/earth-search-v1_cql2-filter_cloudcover-lte40_page1.json"
PC_S2 = f"{ITEMS}/planetary-computer_sentinel-2-l2a_2019-01-01T000001-000010_page1.json"
PC_LANDSAT = f"{ITEMS}/planetary-computer_landsat-c2-l2_items-page1_page1.json"
USGS_LANDSAT = "landsat-c2l2-stactools/LC08_L2SP_008059_20191201_20200825_02_T1_SR_stac.json"
WORLDCOVER = (
    "esa-worldcover/examples/ESA_WorldCover_10m_2021_v200_N00E006/"
    "ESA_WorldCover_10m_2021_v200_N00E006.json"
)


def _features(fixtures_dir: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((fixtures_dir / name).read_text())["features"]


def _by_id(fixtures_dir: Path, name: str, item_id: str) -> dict[str, Any]:
    return next(f for f in _features(fixtures_dir, name) if f["id"] == item_id)


@pytest.fixture
def es_s2(fixtures_dir: Path) -> dict[str, Any]:
    return _by_id(fixtures_dir, ES_S2_LANDSAT, "S2A_13TDE_20231008_0_L2A")


@pytest.fixture
def pc_s2(fixtures_dir: Path) -> dict[str, Any]:
    return _features(fixtures_dir, PC_S2)[0]


def test_earth_search_and_planetary_computer_s2_give_the_same_band_set(es_s2, pc_s2) -> None:
    es, pc = normalize_item(es_s2), normalize_item(pc_s2)
    s2_bands = tuple(b.name for b in modality("sentinel2_l2a").bands)
    assert es.bands == pc.bands == s2_bands
    assert es.modality == pc.modality == "sentinel2_l2a"
    # Keys differ by provider; the registry alias decides.
    assert es.asset("B04").asset_key == "red" and pc.asset("B04").asset_key == "B04"
    assert es.asset("B8A").asset_key == "nir08" and pc.asset("B8A").asset_key == "B8A"
    assert es.asset("B04").href.endswith("/B04.tif")
    assert es.mask is not None and es.mask.asset_key == "scl"
    assert pc.mask is not None and pc.mask.asset_key == "SCL"


def test_earth_search_cogs_flagged_as_offset_applied_are_stored_as_they_are(es_s2) -> None:
    """The real ES v1 item says earthsearch:boa_offset_applied: true (Element84 removed
    the +1000 from its COGs) beside raster:bands offset -0.1, which its maintainers say
    can be stale: the flag wins, so the COG DN are stored unchanged, never -1000 twice."""
    assert es_s2["properties"]["earthsearch:boa_offset_applied"] is True
    item = normalize_item(es_s2)
    conv = item.asset("B02").conversion
    assert conv.kind is RadiometryKind.S2_BASELINE_OFFSET
    assert (conv.dn_offset, conv.scale, conv.source) == (
        0.0,
        1e-4,
        "earthsearch:boa_offset_applied",
    )
    assert conv.to_stored(np.array([0, 1500], np.uint16), nodata=0).tolist() == [0, 1500]
    unflagged = copy.deepcopy(es_s2)
    unflagged["properties"]["earthsearch:boa_offset_applied"] = False
    conv = normalize_item(unflagged).asset("B02").conversion
    assert (conv.dn_offset, conv.scale, conv.source) == (-1000.0, 1e-4, "raster:bands")
    dn = np.array([0, 1000, 1500, 11000, 500], dtype=np.uint16)
    assert conv.to_stored(dn, nodata=0).tolist() == [0, 1, 500, 10000, 1]


def test_planetary_computer_baseline_02_12_has_no_offset(pc_s2) -> None:
    assert pc_s2["properties"]["s2:processing_baseline"] == "02.12"
    conv = normalize_item(pc_s2).asset("B02").conversion
    assert (conv.dn_offset, conv.source) == (0.0, "s2:processing_baseline")
    assert conv.to_stored(np.array([0, 1500], np.uint16), 0).tolist() == [0, 1500]


def test_planetary_computer_style_item_at_baseline_04_gets_minus_1000(pc_s2) -> None:
    edited = copy.deepcopy(pc_s2)
    edited["properties"]["s2:processing_baseline"] = "04.00"
    conv = normalize_item(edited).asset("B11").conversion
    assert (conv.dn_offset, conv.source) == (-1000.0, "s2:processing_baseline")
    assert conv.to_stored(np.array([2500], np.uint16), 0).tolist() == [1500]


def test_earth_search_metadata_is_never_combined_with_the_baseline_rule(es_s2) -> None:
    """ES publishes raster:bands offset -0.1 AND baseline 05.09: exactly -1000, not -2000."""
    assert es_s2["properties"]["s2:processing_baseline"] == "05.09"
    unflagged = copy.deepcopy(es_s2)
    del unflagged["properties"]["earthsearch:boa_offset_applied"]
    item = normalize_item(unflagged)
    assert {a.conversion.dn_offset for a in item.assets} == {-1000.0}


def test_landsat_scale_offset_from_raster_bands(fixtures_dir: Path) -> None:
    es = normalize_item(_by_id(fixtures_dir, ES_S2_LANDSAT, "LC08_L2SP_033032_20231008_02_T1"))
    sr, st = es.asset("SR_B4").conversion, es.asset("ST_B10").conversion
    assert (sr.kind, sr.scale, sr.offset, sr.source) == (
        RadiometryKind.IDENTITY,
        2.75e-5,
        -0.2,
        "raster:bands",
    )
    assert (st.scale, st.offset) == (0.00341802, 149.0)
    assert es.asset("ST_B10").asset_key == "lwir11"
    assert es.mask is not None and es.mask.asset_key == "qa_pixel"
    # Stored = DN as published.
    assert sr.to_stored(np.array([7273, 0], np.uint16), 0).tolist() == [7273, 0]
    # The Landsat item carries its proj:transform at item level; assets inherit it.
    assert es.asset("SR_B4").transform.c == 449085 and es.asset("SR_B4").shape == (7831, 7711)


def test_pc_landsat_l2sr_item_lacks_thermal_which_is_optional(fixtures_dir: Path) -> None:
    item = normalize_item(_by_id(fixtures_dir, PC_LANDSAT, "LC09_L2SR_084082_20250722_02_T1"))
    assert item.missing_bands == ("ST_B10",)
    assert item.platform == "landsat-9" and item.epsg == 32657
    with pytest.raises(ItemNormalizationError, match=r"LC09_L2SR_084082.*ST_B10"):
        normalize_item(
            _by_id(fixtures_dir, PC_LANDSAT, "LC09_L2SR_084082_20250722_02_T1"),
            required_bands=["SR_B4", "ST_B10"],
        )


def test_a_landsat_7_item_is_refused_naming_the_platforms_the_registry_follows(
    fixtures_dir: Path,
) -> None:
    """The same real Planetary Computer item, relabelled landsat-7 (ETM+ numbers bands
    differently): refused, with the accepted platforms named; landsat-9 as published is fine."""
    data = _by_id(fixtures_dir, PC_LANDSAT, "LC09_L2SR_084082_20250722_02_T1")
    assert normalize_item(data).platform == "landsat-9"
    relabelled = {**data, "properties": {**data["properties"], "platform": "landsat-7"}}
    with pytest.raises(
        ItemNormalizationError, match=r"'landsat-7' is not among landsat-8/landsat-9"
    ):
        normalize_item(relabelled)


def test_usgs_stactools_item_uses_eo_band_names_and_registry_scale(fixtures_dir: Path) -> None:
    path = fixtures_dir / USGS_LANDSAT
    item = normalize_item(pystac.Item.from_file(str(path)))
    assert item.asset("SR_B1").asset_key == "SR_B1.TIF"
    assert item.asset("SR_B7").conversion.source == "registry"
    assert (item.asset("SR_B7").conversion.scale, item.asset("SR_B7").conversion.offset) == (
        2.75e-5,
        -0.2,
    )
    assert item.platform == "landsat-8" and item.cloud_cover == 81.02
    assert item.epsg is None  # USGS publishes no projection: the reader takes it from the file


def test_worldcover_relative_hrefs_resolve_against_the_item_file(fixtures_dir: Path) -> None:
    path = fixtures_dir / WORLDCOVER
    data = json.loads(path.read_text())
    with pytest.raises(ItemNormalizationError, match=r"relative.*base_href"):
        normalize_item(data)
    item = normalize_item(data, base_href=str(path))
    ref = item.asset("map")
    expected = (
        fixtures_dir
        / "esa-worldcover/tests/data-files/ESA_WorldCover_10m_2021_v200_N00E006"
        / "ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
    )
    assert Path(ref.href) == expected and Path(ref.href).is_file()
    assert item.modality == "worldcover" and item.epsg == 4326
    assert ref.conversion.kind is RadiometryKind.CLASSES
    assert (ref.dtype, ref.nodata, ref.shape) == ("uint8", 0.0, (36000, 36000))
    assert item.datetime.year == 2021  # datetime null -> start_datetime
    # The same item through pystac resolves via its self href.
    assert normalize_item(pystac.Item.from_file(str(path))).asset("map").href == ref.href


def test_relative_hrefs_resolve_against_a_remote_self_link(pc_s2) -> None:
    edited = copy.deepcopy(pc_s2)
    edited["assets"]["B02"]["href"] = "../assets/B02.tif"
    for link in edited["links"]:
        if link["rel"] == "self":
            link["href"] = "https://example.com/stac/items/x.json"
    item = normalize_item(edited)
    assert item.asset("B02").href == "https://example.com/stac/assets/B02.tif"


@pytest.mark.parametrize("drop", ["proj:code", "proj:epsg"])
def test_proj_code_and_proj_epsg_both_work(pc_s2, drop: str) -> None:
    edited = copy.deepcopy(pc_s2)
    props = edited["properties"]
    props["proj:code"] = f"EPSG:{props['proj:epsg']}"
    del props[drop]
    assert normalize_item(edited).epsg == 32660


def test_proj_wkt2_at_asset_level(pc_s2) -> None:
    from pyproj import CRS

    edited = copy.deepcopy(pc_s2)
    del edited["properties"]["proj:epsg"]
    for asset in edited["assets"].values():
        asset["proj:wkt2"] = CRS.from_epsg(32660).to_wkt()
    assert normalize_item(edited).epsg == 32660


def test_unknown_collection_and_missing_band_name_the_item(es_s2) -> None:
    odd = copy.deepcopy(es_s2)
    odd["collection"] = "my-odd-collection"
    with pytest.raises(ItemNormalizationError, match=r"S2A_13TDE_20231008_0_L2A.*my-odd"):
        normalize_item(odd)
    assert normalize_item(odd, collection_modalities={"my-odd-collection": "sentinel2_l2a"})
    broken = copy.deepcopy(es_s2)
    del broken["assets"]["rededge1"], broken["assets"]["rededge1-jp2"]
    with pytest.raises(ItemNormalizationError, match=r"S2A_13TDE_20231008_0_L2A.*B05") as info:
        normalize_item(broken)
    assert info.value.reason == "missing band"
    no_scl = copy.deepcopy(es_s2)
    del no_scl["assets"]["scl"], no_scl["assets"]["scl-jp2"]
    with pytest.raises(ItemNormalizationError, match="SCL"):
        normalize_item(no_scl)


def test_mask_less_s2_normalizes_with_require_mask_false(es_s2) -> None:
    """Major TOM / SSL4EO style: every band, no SCL; the mask is None, nothing else changes."""
    no_scl = copy.deepcopy(es_s2)
    del no_scl["assets"]["scl"], no_scl["assets"]["scl-jp2"]
    with pytest.raises(ItemNormalizationError, match="require_mask=False"):
        normalize_items([es_s2, no_scl])
    full, bare = normalize_items([es_s2, no_scl], require_mask=False)
    assert full.mask is not None and full.mask.asset_key == "scl"  # present masks still used
    assert bare.mask is None
    assert bare.assets == full.assets and bare.bands == full.bands
    assert bare.asset("B04").conversion == full.asset("B04").conversion
    # A missing band is still an error: require_mask relaxes the mask only.
    del no_scl["assets"]["red"], no_scl["assets"]["red-jp2"]
    with pytest.raises(ItemNormalizationError, match="B04"):
        normalize_item(no_scl, require_mask=False)


def test_sentinel1_grd_is_refused_with_the_reason(fixtures_dir: Path) -> None:
    grd = _features(fixtures_dir, ES_MIXED)[0]
    assert grd["collection"] == "sentinel-1-grd"
    with pytest.raises(ItemNormalizationError, match=r"radar geometry.*sentinel-1-rtc"):
        normalize_item(grd)


def test_sentinel1_linear_power_to_db() -> None:
    from terracube.catalog.stac.items import Conversion

    conv = Conversion(RadiometryKind.LINEAR_TO_DB)
    out = conv.to_stored(np.array([1.0, 0.1, 0.0, -1.0, np.nan], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:2], [0.0, -10.0], atol=1e-6)
    assert np.isnan(out[2:]).all()


def test_remote_item_with_file_href_is_refused(es_s2) -> None:
    evil = copy.deepcopy(es_s2)
    evil["assets"]["red"]["href"] = "file:///etc/passwd"
    with pytest.raises(UnsafeHrefError, match=r"file:///etc/passwd.*local files"):
        normalize_item(evil, policy=REMOTE_POLICY)
    # The same item is fine when it names a public host.
    assert normalize_item(es_s2, policy=REMOTE_POLICY).asset("B04").href.startswith("https://")
    metadata = copy.deepcopy(es_s2)
    metadata["assets"]["scl"]["href"] = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(UnsafeHrefError, match="metadata"):
        normalize_item(metadata, policy=HrefPolicy())
