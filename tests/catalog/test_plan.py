"""Time schemes, item -> (tile, modality, period) assignment, plan tables and the summary.

Items are real Earth Search v1 responses from the pystac-client test cassettes
(Apache-2.0; Copernicus Sentinel data, USGS Landsat) and the ESA WorldCover example
item from stactools-packages/esa-worldcover (Apache-2.0; (c) ESA WorldCover project
2021, CC-BY-4.0); some are edited copies (date, cloud cover, footprint) to test ranking.
"""

from __future__ import annotations

import copy
import io
import json
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import shapely
from terracube.catalog.grid import tile_at
from terracube.catalog.plan import STATIC_PERIOD, Plan, PlanParams, make_plan, tile_coverage
from terracube.catalog.plan_summary import print_summary, summarize
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.catalog.timescheme import TimeScheme, add_months

ES = "pystac-client/items/earth-search-v1_s2l2a+landsatc2l2_point-105.1_40.17_2023-10-08_page1.json"
WORLDCOVER = (
    "esa-worldcover/examples/ESA_WorldCover_10m_2021_v200_N00E006/"
    "ESA_WorldCover_10m_2021_v200_N00E006.json"
)

# ----------------------------------------------------------------------------- time scheme


def test_monthly_periods_and_clamped_anchor() -> None:
    scheme = TimeScheme(date(2023, 1, 1), periods=12)
    starts = scheme.period_starts()
    assert starts[0] == date(2023, 1, 1) and starts[-1] == date(2024, 1, 1) and len(starts) == 13
    assert [d.month for d in starts[:12]] == list(range(1, 13))
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert TimeScheme(date(2023, 1, 31), 3).period_starts() == [
        date(2023, 1, 31), date(2023, 2, 28), date(2023, 3, 31), date(2023, 4, 30),
    ]  # fmt: skip
    start, end = scheme.bounds()[1]
    assert (start, end) == (datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 3, 1, tzinfo=UTC))


def test_day_periods_and_period_lookup() -> None:
    scheme = TimeScheme(date(2023, 1, 1), periods=4, period_days=10)
    assert scheme.period_starts(date(2023, 6, 1))[:2] == [date(2023, 6, 1), date(2023, 6, 11)]
    assert scheme.span() == (datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 10, tzinfo=UTC))
    assert scheme.period_of(datetime(2023, 1, 10, 23, 59, tzinfo=UTC)) == 0
    assert scheme.period_of(datetime(2023, 1, 11, tzinfo=UTC)) == 1  # half-open
    assert scheme.period_of(datetime(2023, 2, 10, tzinfo=UTC)) is None
    assert TimeScheme.from_dict(scheme.to_dict()) == scheme
    with pytest.raises(ValueError, match="periods must be >= 1"):
        TimeScheme(date(2023, 1, 1), periods=0)


# ----------------------------------------------------------------------------- plan


def _es(fixtures_dir: Path, item_id: str) -> dict[str, Any]:
    features = json.loads((fixtures_dir / ES).read_text())["features"]
    return next(f for f in features if f["id"] == item_id)


def _variant(
    base: dict[str, Any], suffix: str, when: str, cloud: float, geometry=None
) -> NormalizedItem:
    item = copy.deepcopy(base)
    item["id"] = f"{base['id']}-{suffix}"
    item["properties"]["datetime"] = when
    item["properties"]["eo:cloud_cover"] = cloud
    if geometry is not None:
        item["geometry"] = shapely.geometry.mapping(geometry)
    return normalize_item(item)


@pytest.fixture
def scene(fixtures_dir: Path) -> dict[str, Any]:
    s2 = _es(fixtures_dir, "S2A_13TDE_20231008_0_L2A")
    tile_a = tile_at(-105.1, 40.17)  # inside S2 and Landsat footprints
    tile_b = tile_at(-104.0, 40.17)  # east of the S2 footprint, inside Landsat
    tile_w = tile_at(7.0, 1.0)  # on the WorldCover example tile only
    west_half = shapely.box(-107.0, 39.0, tile_a.center_lonlat[0], 41.0)
    s2_items = [
        normalize_item(s2),  # Oct 8, 0.000299 % cloud
        _variant(s2, "cloudy", "2023-10-20T18:00:00Z", 50.0),
        _variant(s2, "half", "2023-10-25T18:00:00Z", 0.0001, west_half),
        _variant(s2, "sep-full", "2023-09-10T18:00:00Z", 5.0),
        _variant(s2, "sep-half", "2023-09-12T18:00:00Z", 5.0, west_half),
        _variant(s2, "december", "2023-12-01T00:00:00Z", 0.0),  # after the scheme
    ]
    landsat = normalize_item(_es(fixtures_dir, "LC08_L2SP_033032_20231008_02_T1"))
    wc_path = fixtures_dir / WORLDCOVER
    worldcover = normalize_item(json.loads(wc_path.read_text()), base_href=str(wc_path))
    return {
        "tiles": [tile_a, tile_b, tile_w],
        "items": {"sentinel2_l2a": s2_items, "landsat_c2l2": [landsat], "worldcover": [worldcover]},
        "scheme": TimeScheme(date(2023, 9, 1), periods=3),
    }


def test_tile_coverage_in_the_tile_crs(scene) -> None:
    tile_a, tile_b, _ = scene["tiles"]
    full, *_ = scene["items"]["sentinel2_l2a"]
    half = scene["items"]["sentinel2_l2a"][2]
    assert tile_coverage(full.geometry, tile_a) == pytest.approx(1.0, abs=1e-6)
    assert tile_coverage(half.geometry, tile_a) == pytest.approx(0.5, abs=0.02)
    assert tile_coverage(full.geometry, tile_b) == 0.0


def test_assignment_ranks_by_cloud_then_coverage(scene) -> None:
    plan = make_plan(scene["tiles"], scene["scheme"], scene["items"])
    tile_a = scene["tiles"][0].id
    october = [i.id for i in plan.candidates(tile_a, "sentinel2_l2a", 1)]
    assert october == [
        "S2A_13TDE_20231008_0_L2A-half",  # 0.0001 % cloud
        "S2A_13TDE_20231008_0_L2A",  # 0.000299 %
        "S2A_13TDE_20231008_0_L2A-cloudy",  # 50 %
    ]
    september = [i.id for i in plan.candidates(tile_a, "sentinel2_l2a", 0)]
    assert september == ["S2A_13TDE_20231008_0_L2A-sep-full", "S2A_13TDE_20231008_0_L2A-sep-half"]
    assert plan.candidates(tile_a, "sentinel2_l2a", 2) == []  # November: none; December is outside
    rows = plan.assignments.set_index(["tile_id", "modality", "period", "rank"])
    assert rows.loc[(tile_a, "sentinel2_l2a", 0, 1), "coverage"] == pytest.approx(0.5, abs=0.02)
    assert rows.loc[(tile_a, "landsat_c2l2", 1, 0), "item_id"] == "LC08_L2SP_033032_20231008_02_T1"
    assert "S2A_13TDE_20231008_0_L2A-december" not in plan.items


def test_availability_records_no_data_and_static_maps(scene) -> None:
    tile_a, tile_b, tile_w = (t.id for t in scene["tiles"])
    plan = make_plan(scene["tiles"], scene["scheme"], scene["items"])
    avail = plan.availability.set_index(["tile_id", "modality", "period"])
    assert len(plan.availability) == 3 * (3 + 3 + 1)  # tiles x (S2 + Landsat periods + static)
    assert avail.loc[(tile_a, "sentinel2_l2a", 1), "candidates"] == 3
    assert not avail.loc[(tile_b, "sentinel2_l2a", 1), "has_data"]
    assert avail.loc[(tile_b, "landsat_c2l2", 1), "has_data"]
    assert avail.loc[(tile_w, "worldcover", STATIC_PERIOD), "has_data"]
    assert not avail.loc[(tile_a, "worldcover", STATIC_PERIOD), "has_data"]
    assert [i.id for i in plan.candidates(tile_w, "worldcover", STATIC_PERIOD)] == [
        "ESA_WorldCover_10m_2021_v200_N00E006"
    ]
    samples = plan.samples.set_index("tile_id")
    assert list(samples.loc[tile_a, "period_starts"]) == ["2023-09-01", "2023-10-01", "2023-11-01"]
    assert samples.loc[tile_a, "epsg"] == 32613
    lon, lat = scene["tiles"][0].center_lonlat
    assert (samples.loc[tile_a, "center_lon"], samples.loc[tile_a, "center_lat"]) == (lon, lat)


def test_per_sample_anchor_and_max_candidates(scene) -> None:
    tiles = scene["tiles"][:1]
    plan = make_plan(
        tiles,
        scene["scheme"],
        scene["items"],
        anchors=[date(2023, 10, 1)],
        params=PlanParams(max_candidates=1),
    )
    assert list(plan.samples.period_starts[0]) == ["2023-10-01", "2023-11-01", "2023-12-01"]
    s2 = plan.assignments[plan.assignments.modality == "sentinel2_l2a"]
    assert s2[["period", "item_id"]].values.tolist() == [
        [0, "S2A_13TDE_20231008_0_L2A-half"],
        [2, "S2A_13TDE_20231008_0_L2A-december"],
    ]
    with pytest.raises(ValueError, match="2 anchors for 1 tiles"):
        make_plan(tiles, scene["scheme"], scene["items"], anchors=[date(2023, 1, 1)] * 2)


def test_plan_round_trips_through_parquet(scene, tmp_path: Path) -> None:
    plan = make_plan(scene["tiles"], scene["scheme"], scene["items"])
    plan.search = {"http_requests": 7, "search_calls": 3, "cache_hits": 0, "rejected": []}
    plan.to_parquet(tmp_path / "plan")
    back = Plan.read_parquet(tmp_path / "plan")
    pd.testing.assert_frame_equal(back.assignments, plan.assignments)
    pd.testing.assert_frame_equal(back.availability, plan.availability)
    assert back.items == plan.items
    assert back.scheme == plan.scheme
    assert back.samples.tile_id.tolist() == plan.samples.tile_id.tolist()
    assert summarize(back) == summarize(plan)
    with pytest.raises(FileNotFoundError, match=r"no plan\.json"):
        Plan.read_parquet(tmp_path)


def test_summary_counts_bytes_requests_and_gaps(scene) -> None:
    plan = make_plan(scene["tiles"], scene["scheme"], scene["items"])
    plan.search = {"http_requests": 5, "search_calls": 3, "cache_hits": 1, "rejected": [("x", "y")]}
    summary = summarize(plan)
    tile_a, tile_b, tile_w = (t.id for t in scene["tiles"])
    assert summary["tiles"] == 3 and summary["periods"] == 3
    assert summary["items"] == {"sentinel2_l2a": 5, "landsat_c2l2": 1, "worldcover": 1}
    # S2 window per item: 4 bands at 10 m, 6 at 20 m, 2 at 60 m (uint16) + SCL at 20 m (uint8).
    s2_item = 4 * 256**2 * 2 + 6 * 128**2 * 2 + 2 * math.ceil(2560 / 60) ** 2 * 2 + 128**2
    s2_rows = 5  # tile A: 2 in September, 3 in October
    landsat_item = 9 * math.ceil(2560 / 30) ** 2 * 2  # 8 bands + QA_PIXEL, uint16, 30 m
    worldcover = 256**2  # EPSG:4326 asset: the registry's 10 m, uint8
    assert summary["estimated_bytes"] == {
        "sentinel2_l2a": s2_rows * s2_item,
        "landsat_c2l2": 2 * landsat_item,  # tiles A and B
        "worldcover": worldcover,
        "total": s2_rows * s2_item + 2 * landsat_item + worldcover,
    }
    assert summary["requests"]["asset_reads"]["sentinel2_l2a"] == s2_rows * 13 * 2
    assert summary["requests"]["search"] == 5 and summary["rejected_items"] == 1
    assert summary["tiles_without_data"] == {
        "landsat_c2l2": [tile_w],
        "sentinel2_l2a": sorted([tile_b, tile_w]),
        "worldcover": sorted([tile_a, tile_b]),
    }
    assert summary["empty_periods"]["sentinel2_l2a"] == 3 * 3 - 2
    text = io.StringIO()
    print_summary(plan, as_json=True, stream=text)
    assert json.loads(text.getvalue()) == summary
