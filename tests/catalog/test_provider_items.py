"""Real provider items at the edges: asset-key variants, baselines from every place a
provider puts them, and items that must be set aside with their reason, not crash a plan.

Items: the recorded Earth Search v1 / Planetary Computer responses of the pystac-client
test cassettes (../shared/fixtures/real/pystac-client, Apache-2.0; "Contains modified
Copernicus Sentinel data"), and the recorded items of tests/catalog/data/ (SOURCES.md
there names each one's repository, commit and path).
"""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import pytest
import shapely
from terracube.catalog.plan_summary import print_summary
from terracube.catalog.s2_baseline import (
    BASELINE_NAME_PROPERTIES,
    baseline_in_metadata,
    baseline_in_name,
)
from terracube.catalog.stac.asset_keys import PROVIDER_KEYS
from terracube.catalog.stac.conversion import OFFSET_APPLIED_PROPERTIES
from terracube.catalog.stac.http import HrefPolicy
from terracube.catalog.stac.items import REASONS, ItemNormalizationError, normalize_item
from terracube.catalog.stac.search import search_tiles
from terracube.catalog.stac.sources import StaticCatalogSource

from tests.catalog.test_items import ES_S2_LANDSAT, PC_S2
from tests.catalog.test_sources import tile_at

DATA = Path(__file__).parent / "data"
ES_ID = "S2A_13TDE_20231008_0_L2A"


def _es_s2(fixtures_dir: Path) -> dict[str, Any]:
    features = json.loads((fixtures_dir / ES_S2_LANDSAT).read_text())["features"]
    return copy.deepcopy(next(f for f in features if f["id"] == ES_ID))


def _without_baseline_properties(item: dict[str, Any]) -> dict[str, Any]:
    """The item as a provider that publishes no baseline property nor raster:bands."""
    for key in ("s2:processing_baseline", *BASELINE_NAME_PROPERTIES, *OFFSET_APPLIED_PROPERTIES):
        item["properties"].pop(key, None)
    for asset in item["assets"].values():
        for band in asset.get("raster:bands", []):
            band.pop("scale", None), band.pop("offset", None)
    return item


# --------------------------------------------------------------------------- asset keys


def test_jp2_only_item_is_read_from_its_jp2_assets_with_the_same_conversion(
    fixtures_dir: Path,
) -> None:
    """Earth Search v1 publishes `red` (COG) beside `red-jp2`; with both, the COG is read;
    with only the JP2 originals, every band and the SCL come from them, with the
    raster:bands offset of the JP2 (-0.1 / 1e-4 = -1000 DN at baseline 05.09)."""
    both = normalize_item(_es_s2(fixtures_dir))
    assert both.asset("B04").asset_key == "red" and both.mask is not None
    assert both.mask.asset_key == "scl"
    jp2_only = _es_s2(fixtures_dir)
    for key in [k for k in jp2_only["assets"] if f"{k}-jp2" in jp2_only["assets"]]:
        del jp2_only["assets"][key]
    item = normalize_item(jp2_only)
    assert item.bands == both.bands and item.missing_bands == ()
    assert {r.band: r.asset_key for r in item.assets}["B04"] == "red-jp2"
    assert all(r.asset_key.endswith("-jp2") for r in item.assets)
    assert item.asset("B04").href == "s3://sentinel-s2-l2a/tiles/13/T/DE/2023/10/8/0/B04.jp2"
    assert item.mask is not None and item.mask.asset_key == "scl-jp2"
    for ref in item.assets:
        assert ref.conversion.dn_offset == -1000.0 and ref.conversion.source == "raster:bands"
        assert ref.transform == both.asset(ref.band).transform


def test_every_provider_table_names_registry_bands_only() -> None:
    from terracube.catalog.registry import modality

    for table in PROVIDER_KEYS:
        mod = modality(table.modality)
        names = {b.name for b in mod.bands} | ({mod.mask.name} if mod.mask else set())
        assert set(table.keys) <= names, table.provider
        assert set(table.collections) & set(mod.stac_collections), table.provider


# --------------------------------------------------------------------------- baselines


def test_baseline_names_in_product_and_granule_ids() -> None:
    assert baseline_in_name(
        "S2A_MSIL2A_20231008T175231_N0509_R141_T13TDE_20231008T233154.SAFE"
    ) == ("05.09")
    assert baseline_in_name("S2A_OPER_MSI_L2A_TL_2APS_20231008T233154_A043324_T13TDE_N05.09") == (
        "05.09"
    )
    assert baseline_in_name("S2B_MSIL2A_20200606T101559_N0214_R065_T32TQM_20200606T135146") == (
        "02.14"
    )
    assert baseline_in_name("S2B_33UUP_20230101_0_L2A") is None
    xml = b"<n1:Level-2A_User_Product><PROCESSING_BASELINE>04.00</PROCESSING_BASELINE>"
    assert baseline_in_metadata(xml) == "04.00"
    assert baseline_in_metadata(b"<TILE_ID metadataLevel='Brief'>S2A_..._T33NZA_N04.00</TILE_ID>")
    assert baseline_in_metadata(b"<nothing/>") is None


@pytest.mark.parametrize(
    ("keep", "expected_source"),
    [
        ("s2:product_uri", "s2:product_uri"),
        ("s2:granule_id", "s2:granule_id"),
    ],
)
def test_baseline_read_from_the_product_or_granule_name(
    fixtures_dir: Path, keep: str, expected_source: str
) -> None:
    """The real item without s2:processing_baseline nor raster:bands: its N0509 is read
    from the name that is left, and the 1000 DN offset is removed exactly once."""
    original = _es_s2(fixtures_dir)
    item = _without_baseline_properties(_es_s2(fixtures_dir))
    item["properties"][keep] = original["properties"][keep]
    conv = normalize_item(item).asset("B04").conversion
    assert conv.dn_offset == -1000.0 and conv.source == expected_source


def test_unreadable_baseline_falls_back_to_the_name_or_is_refused(fixtures_dir: Path) -> None:
    item = _es_s2(fixtures_dir)
    bare = _without_baseline_properties(_es_s2(fixtures_dir))
    bare["properties"]["s2:processing_baseline"] = "04"
    with pytest.raises(ItemNormalizationError, match=r"unreadable .* '04'") as info:
        normalize_item(bare)
    assert info.value.reason == "unknown S2 baseline"
    bare["properties"]["s2:product_uri"] = item["properties"]["s2:product_uri"]
    conv = normalize_item(bare).asset("B04").conversion
    assert conv.dn_offset == -1000.0 and conv.source == "s2:product_uri"


def test_no_baseline_anywhere_is_refused_not_converted(fixtures_dir: Path) -> None:
    """Planetary Computer's real item: its baseline is in five places (property, product
    URI, granule, datatake and datastrip ids, all N02.12); each alone suffices, and with
    none left (PC item ids carry no Nxxyy) it is refused, never stored 1000 DN off."""
    pc = json.loads((fixtures_dir / PC_S2).read_text())["features"][0]
    props = pc["properties"]
    assert normalize_item(pc).asset("B04").conversion.source == "s2:processing_baseline"
    names = ["s2:product_uri", "s2:granule_id", "s2:datatake_id", "s2:datastrip_id"]
    del props["s2:processing_baseline"]
    for name in names:
        alone = copy.deepcopy(pc)
        for other in names:
            if other != name:
                del alone["properties"][other]
        conv = normalize_item(alone).asset("B04").conversion
        assert (conv.source, conv.dn_offset) == (name, 0.0)  # 02.12 < 04.00: no offset
    for name in names:
        del props[name]
    with pytest.raises(ItemNormalizationError, match="baseline unknown") as info:
        normalize_item(pc)
    assert info.value.reason == "unknown S2 baseline"


# --------------------------------------------------------------------------- plans


def _catalog(items: list[dict[str, Any]], root: Path) -> Path:
    catalog = pystac.Catalog("edge", "items at the edges")
    for feature in items:
        item = pystac.Item.from_dict(feature)
        item.clear_links()
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_bad_items_are_set_aside_with_reasons_and_the_plan_goes_on(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """Beside the good real item: baseline "04" with no name, a missing band, a field of
    the wrong type. The plan keeps the good one, and the dry-run table counts the others
    by reason with their ids."""
    good = _es_s2(fixtures_dir)
    bad_baseline = _without_baseline_properties(_es_s2(fixtures_dir))
    bad_baseline["id"], bad_baseline["properties"]["s2:processing_baseline"] = "bad-baseline", "04"
    del bad_baseline["assets"]["granule_metadata"]  # no metadata to read: tests stay offline
    no_red = _es_s2(fixtures_dir)
    no_red["id"] = "no-red"
    del no_red["assets"]["red"], no_red["assets"]["red-jp2"]
    wrong_type = _es_s2(fixtures_dir)
    wrong_type["id"] = "wrong-type"
    wrong_type["assets"]["red"]["proj:transform"] = 42  # not a list
    path = _catalog([good, bad_baseline, no_red, wrong_type], tmp_path / "cat")
    source = StaticCatalogSource(path, href_policy=HrefPolicy(allow_local_files=True))
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 31, tzinfo=UTC)
    result = search_tiles(source, [tile_at(-105.1, 40.17)], start, end, ["sentinel2_l2a"])
    assert [i.id for i in result.items["sentinel2_l2a"]] == [ES_ID]
    reasons = {r["item_id"]: r["reason"] for r in result.rejected}
    assert reasons == {
        "bad-baseline": "unknown S2 baseline",
        "no-red": "missing band",
        "wrong-type": "malformed item",
    }
    assert set(reasons.values()) <= set(REASONS)

    from terracube.catalog.plan import PlanParams
    from terracube.catalog.stac.search import search_and_plan
    from terracube.catalog.timescheme import TimeScheme

    plan = search_and_plan(
        {"sentinel2_l2a": source},
        [tile_at(-105.1, 40.17)],
        TimeScheme(start=start.date(), periods=1),
        plan_params=PlanParams(),
    )
    text = io.StringIO()
    summary = print_summary(plan, stream=text)
    assert summary["rejected_items"] == 3
    assert summary["rejected_by_reason"]["missing band"]["examples"] == ["no-red"]
    assert summary["rejected_by_reason"]["malformed item"]["count"] == 1
    out = text.getvalue()
    assert "3 item(s) set aside" in out
    assert "unknown S2 baseline" in out and "bad-baseline" in out and "'04'" in out


# --------------------------------------------------------------------------- recorded items

STAC = Path(__file__).parents[1] / "data" / "stac"


def _recorded(name: str) -> dict[str, Any]:
    return json.loads((STAC / name).read_text())


def test_earth_search_v1_2025_item_prefers_cogs_and_trusts_the_offset_flag() -> None:
    raw = _recorded("es-v1-sentinel-2-l2a_S2B_20EPT_20250731_0_L2A.json")
    item = normalize_item(raw)
    assert (item.epsg, item.platform, item.missing_bands) == (32720, "sentinel-2b", ())
    assert {r.asset_key for r in item.assets} == {
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
        "nir", "nir08", "nir09", "swir16", "swir22",
    }  # fmt: skip
    conv = item.asset("B04").conversion
    assert (conv.dn_offset, conv.source) == (0.0, "earthsearch:boa_offset_applied")
    # Its JP2 originals (ESA's own DN): the -0.1 of raster:bands holds, -1000 DN.
    for key in [k for k in raw["assets"] if f"{k}-jp2" in raw["assets"]]:
        del raw["assets"][key]
    jp2 = normalize_item(raw)
    assert jp2.asset("B04").asset_key == "red-jp2"
    assert (jp2.asset("B04").conversion.dn_offset, jp2.asset("B04").conversion.source) == (
        -1000.0,
        "raster:bands",
    )
    assert jp2.mask is not None and jp2.mask.asset_key == "scl-jp2"


def test_earth_search_collection_1_item_applies_its_raster_offset() -> None:
    item = normalize_item(_recorded("es-v1-sentinel-2-c1-l2a_S2B_T20EPT_20250731T131905_L2A.json"))
    assert item.modality == "sentinel2_l2a" and item.epsg == 32720
    conv = item.asset("B04").conversion
    assert (conv.dn_offset, conv.source) == (-1000.0, "raster:bands")


def test_earth_search_v0_items_read_their_baseline_from_the_product_id() -> None:
    """2020: only `sentinel:product_id` says N0214 (no offset); 2025: the v0-only
    `sentinel:processing_baseline` says 05.11 and `sentinel:boa_offset_applied` true."""
    old = normalize_item(_recorded("es-v0-sentinel-s2-l2a-cogs_S2A_28QCH_20200714_0_L2A.json"))
    assert (old.modality, old.epsg, old.asset("B04").asset_key) == ("sentinel2_l2a", 32628, "B04")
    assert old.mask is not None and old.mask.asset_key == "SCL"
    assert old.asset("B04").transform is not None and old.asset("B04").transform.a == 10.0
    conv = old.asset("B04").conversion
    assert (conv.dn_offset, conv.source) == (0.0, "sentinel:product_id")
    new = _recorded("es-v0-sentinel-s2-l2a-cogs_S2B_20EPT_20250731_0_L2A_N0511.json")
    conv = normalize_item(new).asset("B04").conversion
    assert (conv.dn_offset, conv.source) == (0.0, "sentinel:boa_offset_applied")
    new["properties"]["sentinel:boa_offset_applied"] = False
    conv = normalize_item(new).asset("B04").conversion
    assert (conv.dn_offset, conv.source) == (-1000.0, "sentinel:processing_baseline")


def test_planetary_computer_baseline_04_without_raster_bands_gets_minus_1000() -> None:
    item = normalize_item(_recorded("pc-sentinel-2-l2a_S2B_T24XWR_20220612_N0400.json"))
    assert (item.epsg, item.platform) == (32624, "sentinel-2b")
    conv = item.asset("B11").conversion
    assert (conv.dn_offset, conv.scale, conv.source) == (-1000.0, 1e-4, "s2:processing_baseline")


def test_usgs_landsatlook_item_without_raster_bands_uses_the_registry_scale() -> None:
    item = normalize_item(_recorded("usgs-landsat-c2l2-sr_LC08_L2SP_028030_20200114.json"))
    assert (item.modality, item.epsg, item.platform) == ("landsat_c2l2", 32615, "landsat-8")
    assert item.asset("SR_B4").asset_key == "red" and item.mask is not None
    assert item.mask.asset_key == "qa_pixel"
    conv = item.asset("SR_B4").conversion
    assert (conv.scale, conv.offset, conv.source) == (2.75e-5, -0.2, "registry")


@pytest.mark.parametrize(
    ("xml", "dn_offset"),
    [
        ("s2-N0400_T33XWJ_20220413_MTD_MSIL2A.xml", -1000.0),
        ("s2-N0400_T33XWJ_20220413_MTD_TL.xml", -1000.0),
        ("s2-N0212_T01CCV_20191228_MTD_MSIL2A.xml", 0.0),
        ("roda-s2l2a_T34VEL_20240108_metadata.xml", -1000.0),
    ],
)
def test_baseline_read_from_real_metadata_xml_over_http(
    asset_server, tmp_path: Path, xml: str, dn_offset: float
) -> None:
    """A Planetary Computer item stripped of every baseline property: its
    product-metadata asset, served by the local HTTP server, is read once at plan time."""
    (asset_server.root / xml).write_bytes((STAC / xml).read_bytes())
    raw = _without_baseline_properties(
        _recorded("pc-sentinel-2-l2a_S2B_T24XWR_20220612_N0400.json")
    )
    raw["assets"] = {k: v for k, v in raw["assets"].items() if not k.endswith("-metadata")} | {
        "product-metadata": {"href": asset_server.url_for(xml), "roles": ["metadata"]}
    }
    path = _catalog([raw], tmp_path / "cat")
    policy = HrefPolicy(internal_hosts=frozenset({"127.0.0.1"}))
    source = StaticCatalogSource(path, href_policy=policy)
    footprint = shapely.geometry.shape(raw["geometry"]).centroid
    when = datetime.fromisoformat(raw["properties"]["datetime"].replace("Z", "+00:00"))
    result = search_tiles(
        source,
        [tile_at(footprint.x, footprint.y)],
        when.replace(day=1),
        when.replace(day=28),
        ["sentinel2_l2a"],
    )
    assert result.rejected == []
    conv = result.items["sentinel2_l2a"][0].asset("B04").conversion
    assert (conv.dn_offset, conv.source) == (dn_offset, "metadata XML")
    assert asset_server.stats(xml).requests == 1


def test_a_doubtful_earth_search_flag_is_a_plan_warning(fixtures_dir: Path, tmp_path: Path) -> None:
    """flag false at baseline 05.09: converted by raster:bands (-1000), but said out loud."""
    item = _es_s2(fixtures_dir)
    item["properties"]["earthsearch:boa_offset_applied"] = False
    source = StaticCatalogSource(_catalog([item], tmp_path / "cat"))
    start, end = datetime(2023, 10, 1, tzinfo=UTC), datetime(2023, 10, 31, tzinfo=UTC)
    result = search_tiles(source, [tile_at(-105.1, 40.17)], start, end, ["sentinel2_l2a"])
    assert result.items["sentinel2_l2a"][0].asset("B04").conversion.dn_offset == -1000.0
    assert len(result.warnings) == 1 and ES_ID in result.warnings[0]
    assert "Element84/earth-search#66" in result.warnings[0]
    flagged = search_tiles(
        StaticCatalogSource(_catalog([_es_s2(fixtures_dir)], tmp_path / "cat2")),
        [tile_at(-105.1, 40.17)],
        start,
        end,
        ["sentinel2_l2a"],
    )
    assert flagged.warnings == []
