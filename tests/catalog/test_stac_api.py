"""StacApiSource against the real loopback STAC API (stac-fastapi-pgstac), through faults.

Items: recorded Planetary Computer / Earth Search v1 responses from the pystac-client
test cassettes (Apache-2.0; Copernicus Sentinel data, USGS Landsat).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from terracube.catalog.stac.http import RemoteServiceError, RetryPolicy
from terracube.catalog.stac.sources import StacApiSource, generic_profile

from tests.services.faults import Fault
from tests.services.stac_api import synthesize_collections

pytestmark = pytest.mark.services

PC_S2 = "pystac-client/items/planetary-computer_sentinel-2-l2a_2019-01-01T000001-000010_page1.json"
DAY = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 1, 1, 23, 59, tzinfo=UTC))
BBOX = (150.0, 40.0, 180.0, 80.0)


@pytest.fixture
def loaded(stac_api, fixtures_dir: Path):
    items = json.loads((fixtures_dir / PC_S2).read_text())["features"]
    stac_api.load_collections(synthesize_collections(items))
    stac_api.load_items(items)
    return stac_api, sorted(i["id"] for i in items)


def _source(url: str) -> StacApiSource:
    profile = generic_profile(url, {"sentinel2_l2a": "sentinel-2-l2a"})
    return StacApiSource(profile, retry=RetryPolicy(attempts=3, backoff_s=0.01), page_size=10)


def test_paged_search_returns_every_item(loaded) -> None:
    api, ids = loaded
    api.reset_request_count()
    source = _source(api.url)
    found = source.search(BBOX, *DAY, ["sentinel-2-l2a"])
    assert sorted(i["id"] for i in found) == ids  # 33 items
    assert api.search_request_count() == 4  # pages of 10
    # Our counter agrees with the server; pystac-client reads the landing page twice on open.
    assert source.counter.by_endpoint[f"{api.url}/search"] == 4
    assert source.counter.requests == 4 + source.counter.by_endpoint[f"{api.url}/"]


def test_500_then_429_then_success(loaded, fault_proxy) -> None:
    api, ids = loaded
    proxy = fault_proxy(api.url)
    proxy.faults.add("/search", Fault.error(500), Fault.throttle(1))
    source = _source(proxy.url)
    found = source.search(BBOX, *DAY, ["sentinel-2-l2a"])
    assert sorted(i["id"] for i in found) == ids
    assert source.counter.retries == 2


def test_never_recovering_search_names_the_endpoint(loaded, fault_proxy) -> None:
    api, _ = loaded
    proxy = fault_proxy(api.url)
    proxy.faults.add("/search", Fault.error(503, times=None))
    with pytest.raises(RemoteServiceError, match=rf"{proxy.url}/search failed after 3 attempt"):
        _source(proxy.url).search(BBOX, *DAY, ["sentinel-2-l2a"])
