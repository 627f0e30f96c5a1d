"""The real local services behave like the remote ones the code will meet.

STAC items: real Earth Search v1 responses recorded by stac-utils/pystac-client
(Apache-2.0; Copernicus Sentinel data and USGS Landsat metadata), see
shared/fixtures/real/pystac-client/SOURCES.md.
"""

from __future__ import annotations

import http.client
import json
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac_client
import pytest
import rasterio
import requests
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from shapely.geometry import box, shape

from tests.services.cog_fixture import write_test_cog
from tests.services.fault_proxy import FaultProxy
from tests.services.faults import Fault, FaultScript
from tests.services.http_assets import AssetServer, RangeNotSatisfiable, parse_byte_ranges
from tests.services.stac_api import StacApi, synthesize_collections

# ------------------------------------------------------------------ helpers


def _earth_search_items(fixtures_dir: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for path in sorted((fixtures_dir / "pystac-client" / "items").glob("earth-search-v1_*.json")):
        items.extend(json.loads(path.read_text())["features"])
    return items


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


VSICURL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "0",
    "CPL_VSIL_CURL_CACHE_SIZE": "0",
}


# ------------------------------------------------------------------ fault script (pure)


def test_fault_script_plays_faults_in_order_then_answers_normally() -> None:
    script = FaultScript()
    script.add("/a.tif", Fault.error(500, times=2), Fault.throttle(retry_after_s=1))
    played = [script.next_fault("/a.tif") for _ in range(4)]
    assert [f.status if f else None for f in played] == [500, 500, 429, None]
    assert script.injected("/a.tif") == 3
    assert script.next_fault("/other") is None


def test_fault_script_prefix_and_forever() -> None:
    script = FaultScript()
    script.add("/dir/", Fault.error(503, times=None))
    assert all(script.next_fault(f"/dir/{i}").status == 503 for i in range(20))  # type: ignore[union-attr]
    assert script.next_fault("/dirt") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": 99}, "HTTP status"),
        ({"status": 500, "truncate_to_bytes": 3}, "not both"),
        ({"times": 0}, "times"),
        ({"delay_s": -1}, "delay_s"),
    ],
)
def test_fault_rejects_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)


# ------------------------------------------------------------------ byte ranges (pure)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", [(0, 99)]),
        ("bytes=100-", [(100, 999)]),
        ("bytes=-10", [(990, 999)]),
        ("bytes=990-5000", [(990, 999)]),
        ("bytes=0-0, 10-19", [(0, 0), (10, 19)]),
        ("bytes=-5000", [(0, 999)]),
        ("bytes=0-9,2000-3000", [(0, 9)]),
    ],
)
def test_parse_byte_ranges(header: str, expected: list[tuple[int, int]]) -> None:
    assert parse_byte_ranges(header, 1000) == expected


@pytest.mark.parametrize(
    "header",
    ["bytes=1000-", "bytes=5-2", "bytes=a-b", "items=0-1", "bytes=", "bytes=-0", "bytes=-"],
)
def test_parse_byte_ranges_refuses_bad_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_ranges(header, 1000)


# ------------------------------------------------------------------ asset server


def _write_bytes(server: AssetServer, name: str, size: int = 1000) -> bytes:
    data = bytes((i * 7) % 251 for i in range(size))
    (server.root / name).write_bytes(data)
    return data


@pytest.mark.services
def test_asset_server_head_get_and_ranges(asset_server: AssetServer) -> None:
    data = _write_bytes(asset_server, "blob.bin")
    url = asset_server.url_for("blob.bin")

    head = requests.head(url, timeout=10)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "1000"
    assert head.headers["Accept-Ranges"] == "bytes"

    whole = requests.get(url, timeout=10)
    assert whole.content == data

    part = requests.get(url, headers={"Range": "bytes=100-149"}, timeout=10)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 100-149/1000"
    assert part.content == data[100:150]

    tail = requests.get(url, headers={"Range": "bytes=-24"}, timeout=10)
    assert (tail.status_code, tail.content) == (206, data[-24:])

    multi = requests.get(url, headers={"Range": "bytes=0-3,500-503"}, timeout=10)
    assert multi.status_code == 206
    assert multi.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 0-3/1000\r\n\r\n" + data[0:4] in multi.content
    assert b"Content-Range: bytes 500-503/1000\r\n\r\n" + data[500:504] in multi.content

    beyond = requests.get(url, headers={"Range": "bytes=1000-1100"}, timeout=10)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == "bytes */1000"
    assert requests.get(url, headers={"Range": "bytes=9-3"}, timeout=10).status_code == 416
    assert requests.get(asset_server.url_for("missing.bin"), timeout=10).status_code == 404
    assert requests.get(f"{asset_server.url}/../etc/passwd", timeout=10).status_code == 404

    stats = asset_server.stats("blob.bin")
    assert stats.requests == 7
    assert stats.by_method == {"HEAD": 1, "GET": 6}
    assert stats.statuses == [200, 200, 206, 206, 206, 416, 416]
    assert stats.ranges == [(100, 149), (976, 999), (0, 3), (500, 503)]
    assert stats.bytes_sent >= 1000 + 50 + 24 + 8


@pytest.mark.services
def test_cog_window_over_vsicurl_reads_same_pixels_with_few_bytes(
    asset_server: AssetServer,
) -> None:
    name = f"cog-{uuid.uuid4().hex}.tif"  # a fresh name: GDAL caches per URL in-process
    local = asset_server.root / name
    data = write_test_cog(local)
    window = Window(col_off=300, row_off=500, width=200, height=150)

    with rasterio.Env(**VSICURL_ENV), rasterio.open(asset_server.vsicurl(name)) as remote:
        assert (remote.width, remote.height, remote.dtypes[0]) == (1024, 1024, "uint16")
        over_http = remote.read(1, window=window)

    np.testing.assert_array_equal(over_http, data[500:650, 300:500])
    with rasterio.open(local) as src:
        np.testing.assert_array_equal(over_http, src.read(1, window=window))

    stats = asset_server.stats(name)
    file_size = local.stat().st_size
    assert stats.requests >= 1
    assert stats.ranges, "GDAL must have used range requests"
    assert 0 < stats.bytes_sent < file_size / 4, (stats.bytes_sent, file_size)


@pytest.mark.services
def test_scripted_faults_on_the_asset_server(asset_server: AssetServer) -> None:
    data = _write_bytes(asset_server, "f.bin")
    url = asset_server.url_for("f.bin")
    asset_server.faults.add(
        "/f.bin",
        Fault.error(500, times=2),
        Fault.throttle(retry_after_s=1),
        Fault.not_found(),
        Fault.truncated(keep_bytes=100),
    )
    assert requests.get(url, timeout=10).status_code == 500
    assert requests.get(url, timeout=10).status_code == 500
    throttled = requests.get(url, timeout=10)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "1")
    assert requests.get(url, timeout=10).status_code == 404

    host, port = asset_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/f.bin")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == "1000"
    with pytest.raises(http.client.IncompleteRead) as truncated:
        response.read()
    assert truncated.value.partial == data[:100]
    conn.close()

    recovered = requests.get(url, timeout=10)
    assert (recovered.status_code, recovered.content) == (200, data)
    assert asset_server.faults.injected("/f.bin") == 5
    assert asset_server.stats("f.bin").statuses == [500, 500, 429, 404, 200, 200]


@pytest.mark.services
def test_slow_fault_trips_a_client_timeout_then_recovers(asset_server: AssetServer) -> None:
    data = _write_bytes(asset_server, "slow.bin")
    url = asset_server.url_for("slow.bin")
    asset_server.faults.add("/slow.bin", Fault.slow(delay_s=3.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url, timeout=(5, 0.3))
    assert requests.get(url, timeout=10).content == data


@pytest.mark.services
def test_gdal_retries_through_scripted_500s_and_fails_on_404(asset_server: AssetServer) -> None:
    name = f"retry-{uuid.uuid4().hex}.tif"
    data = write_test_cog(asset_server.root / name)
    asset_server.faults.add(f"/{name}", Fault.error(503, times=2))
    env = {**VSICURL_ENV, "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "0.05"}
    with rasterio.Env(**env), rasterio.open(asset_server.vsicurl(name)) as remote:
        np.testing.assert_array_equal(remote.read(1, window=Window(0, 0, 64, 64)), data[:64, :64])
    assert asset_server.stats(name).statuses[:2] == [503, 503]

    gone = f"gone-{uuid.uuid4().hex}.tif"
    write_test_cog(asset_server.root / gone)
    asset_server.faults.add(f"/{gone}", Fault.not_found(times=None))
    with rasterio.Env(**VSICURL_ENV), pytest.raises(RasterioIOError):
        rasterio.open(asset_server.vsicurl(gone))


# ------------------------------------------------------------------ fault proxy


@pytest.mark.services
def test_fault_proxy_forwards_and_injects(
    asset_server: AssetServer, fault_proxy: Callable[[str], FaultProxy]
) -> None:
    data = _write_bytes(asset_server, "p.bin")
    proxy = fault_proxy(asset_server.url)

    part = requests.get(f"{proxy.url}/p.bin", headers={"Range": "bytes=10-19"}, timeout=10)
    assert (part.status_code, part.content) == (206, data[10:20])
    assert part.headers["Content-Range"] == "bytes 10-19/1000"
    head = requests.head(f"{proxy.url}/p.bin", timeout=10)
    assert (head.status_code, head.headers["Content-Length"]) == (200, "1000")

    proxy.faults.add("/p.bin", Fault.error(500), Fault.throttle(retry_after_s=2))
    assert requests.get(f"{proxy.url}/p.bin", timeout=10).status_code == 500
    throttled = requests.get(f"{proxy.url}/p.bin", timeout=10)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
    assert requests.get(f"{proxy.url}/p.bin", timeout=10).content == data

    proxy.faults.add("/down", Fault.error(503, times=None))
    assert [requests.get(f"{proxy.url}/down", timeout=10).status_code for _ in range(4)] == [
        503
    ] * 4

    # A faulted POST's body is consumed, so the kept-alive connection stays in sync.
    proxy.faults.add("/p.bin", Fault.error(500))
    with requests.Session() as session:
        faulted = session.post(f"{proxy.url}/p.bin", data=b"x" * 5000, timeout=10)
        assert faulted.status_code == 500
        assert session.get(f"{proxy.url}/p.bin", timeout=10).content == data

    # Faulted requests never reached the upstream server.
    assert proxy.stats("/p.bin").requests == 7
    assert asset_server.stats("p.bin").requests == 4
    assert asset_server.stats("down").requests == 0


# ------------------------------------------------------------------ STAC API over pgstac


@pytest.fixture(scope="module")
def earth_search_items(fixtures_dir: Path, stac_api_session: StacApi) -> list[dict[str, Any]]:
    items = _earth_search_items(fixtures_dir)
    stac_api_session.load_collections(synthesize_collections(items))
    stac_api_session.load_items(items)
    return items


SEARCH_BBOX = (-40.0, -5.0, -37.5, -4.0)
SEARCH_START, SEARCH_END = "2025-07-31T13:03:20Z", "2025-07-31T13:03:30Z"


def _expected_ids(items: list[dict[str, Any]], cloud_below: float | None) -> set[str]:
    """The answer computed directly from the item dicts: geometry, time, cloud cover."""
    area = box(*SEARCH_BBOX)
    start, end = _parse_time(SEARCH_START), _parse_time(SEARCH_END)
    return {
        item["id"]
        for item in items
        if shape(item["geometry"]).intersects(area)
        and start <= _parse_time(item["properties"]["datetime"]) <= end
        and (
            cloud_below is None
            or (
                item["properties"].get("eo:cloud_cover") is not None
                and item["properties"]["eo:cloud_cover"] < cloud_below
            )
        )
    }


@pytest.mark.services
def test_stac_search_bbox_datetime_query(
    stac_api: StacApi, earth_search_items: list[dict[str, Any]]
) -> None:
    client = pystac_client.Client.open(stac_api.url)
    search = client.search(
        bbox=SEARCH_BBOX,
        datetime=f"{SEARCH_START}/{SEARCH_END}",
        query={"eo:cloud_cover": {"lt": 20}},
        max_items=None,
    )
    found = {item.id for item in search.items()}
    expected = _expected_ids(earth_search_items, cloud_below=20)
    assert found == expected == {"S2B_24MWV_20250731_0_L1C", "S2B_24MXV_20250731_0_L1C"}
    # The cloud filter really discriminates: without it the same box and time hold more.
    assert len(_expected_ids(earth_search_items, cloud_below=None)) == 12
    assert stac_api.search_request_count() == 1


@pytest.mark.services
def test_stac_search_cql2_json_filter(
    stac_api: StacApi, earth_search_items: list[dict[str, Any]]
) -> None:
    threshold = 26.02542  # exactly one scene's value: `<=` must include it
    cql2 = {
        "op": "and",
        "args": [
            {"op": "<=", "args": [{"property": "eo:cloud_cover"}, threshold]},
            {"op": "=", "args": [{"property": "collection"}, "sentinel-2-l2a"]},
        ],
    }
    # The session API also holds other modules' items (the synthetic world, 2022; PC, 2019):
    # bound the search to the Earth Search fixtures' years.
    window = ("2023-01-01T00:00:00Z", "2025-12-31T23:59:59Z")
    client = pystac_client.Client.open(stac_api.url)
    search = client.search(filter=cql2, datetime="/".join(window), max_items=None)
    found = {item.id for item in search.items()}
    start, end = (_parse_time(t) for t in window)
    expected = {
        item["id"]
        for item in earth_search_items
        if item["collection"] == "sentinel-2-l2a"
        and start <= _parse_time(item["properties"]["datetime"]) <= end
        and item["properties"].get("eo:cloud_cover") is not None
        and item["properties"]["eo:cloud_cover"] <= threshold
    }
    assert found == expected
    assert {"S2B_20EPT_20250731_0_L2A", "S2B_24MXV_20250731_0_L2A"} <= found
    assert "S2B_24MWV_20250731_0_L2A" in found
    assert "S2B_24MVV_20250731_0_L2A" not in found  # 34.8 % cloud


@pytest.mark.services
@pytest.mark.parametrize("page_size", [3, 5, 25])
def test_stac_paging_returns_everything_and_counts_pages(
    stac_api: StacApi, earth_search_items: list[dict[str, Any]], page_size: int
) -> None:
    collections = sorted({item["collection"] for item in earth_search_items})
    ids = [item["id"] for item in earth_search_items]
    client = pystac_client.Client.open(stac_api.url)
    stac_api.reset_request_count()
    found = [
        item.id
        for item in client.search(
            collections=collections, ids=ids, limit=page_size, max_items=None
        ).items()
    ]
    assert len(found) == len(set(found)) == len(earth_search_items) == 22
    assert set(found) == set(ids)
    assert stac_api.search_request_count() == math.ceil(22 / page_size)
    assert stac_api.search_request_count("POST") == math.ceil(22 / page_size)
    assert stac_api.search_request_count("GET") == 0


@pytest.mark.services
def test_stac_paging_through_the_fault_proxy_stays_behind_it(
    stac_api: StacApi,
    earth_search_items: list[dict[str, Any]],
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    proxy = fault_proxy(stac_api.url)
    client = pystac_client.Client.open(proxy.url)
    found = [
        item.id
        for item in client.search(
            ids=[item["id"] for item in earth_search_items], limit=10, max_items=None
        ).items()
    ]
    assert len(found) == 22
    assert proxy.stats("/search").requests == 3  # next links point at the proxy
    assert stac_api.search_request_count() == 3

    proxy.faults.add("/search", Fault.error(502))
    response = requests.post(f"{proxy.url}/search", json={"limit": 1}, timeout=10)
    assert response.status_code == 502
    assert stac_api.search_request_count() == 3


def test_synthesize_collections_extent_and_bad_input() -> None:
    items = [
        {
            "id": "a",
            "collection": "c",
            "bbox": [0, 0, 1, 1],
            "properties": {"datetime": "2020-01-02T00:00:00Z"},
        },
        {
            "id": "b",
            "collection": "c",
            "bbox": [-1, 2, 0.5, 3],
            "properties": {"datetime": "2020-01-01T00:00:00Z"},
        },
    ]
    (collection,) = synthesize_collections(items)
    assert collection["id"] == "c"
    assert collection["extent"]["spatial"]["bbox"] == [[-1, 0, 1, 3]]
    assert collection["extent"]["temporal"]["interval"] == [
        ["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"]
    ]
    with pytest.raises(ValueError, match="has no 'collection'"):
        synthesize_collections([{"id": "x", "properties": {}}])
