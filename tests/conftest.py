"""Shared pytest fixtures: real-data fixtures, the synthetic world, the real local services.

Services (tests/services) start once per session on 127.0.0.1 at free ports and are
stopped in finalizers, also when tests fail. A service whose Debian package is missing
is skipped locally but fails under CI (CI set), so CI can never go green by skipping.

The synthetic world (`world`, `world_truth`) is generated at most once per session,
whichever module asks first; `world_assets` serves its files over HTTP and
`world_stac_api` holds its collections and items in the pgstac STAC API.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TypeVar

import pytest
from terracube.workflows.world import WorldManifest, WorldTruth, load_truth, rewrite_hrefs

from tests.services.fault_proxy import FaultProxy, run_fault_proxy
from tests.services.http_assets import AssetServer, run_asset_server
from tests.services.postgres_pgstac import PgstacDatabase, run_pgstac_database
from tests.services.process import ServiceUnavailable
from tests.services.s3 import S3Store, run_s3_server
from tests.services.stac_api import StacApi, run_stac_api
from tests.workflows.world_fixture import shared_world


@pytest.fixture(autouse=True, scope="session")
def torch_single_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread is ~10x faster on a busy 2-core box."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FIXTURES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real"
"""Real-data fixtures live beside the checkout (CI has shared/ there); never copied in."""

T = TypeVar("T")

SERVICE_STARTUP_S: dict[str, float] = {}
"""Start-up seconds of each service this session started, printed in the summary."""


def running_under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SERVICE_STARTUP_S:
        timings = ", ".join(f"{name} {sec:.1f} s" for name, sec in SERVICE_STARTUP_S.items())
        terminalreporter.write_line(f"service start-up: {timings}")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Root of the real-data fixtures; fails loudly (never skips) when they are absent."""
    if not FIXTURES_DIR.is_dir():
        pytest.fail(
            f"real-data fixtures not found at {FIXTURES_DIR}: check out shared/ beside the repo"
        )
    return FIXTURES_DIR


def enter_service(stack: ExitStack, service: Callable[[], AbstractContextManager[T]]) -> T:
    """Start a service inside `stack`; missing system package -> skip, or fail under CI."""
    try:
        return stack.enter_context(service())
    except ServiceUnavailable as exc:
        if running_under_ci():
            pytest.fail(f"required service unavailable under CI: {exc}")
        pytest.skip(f"service unavailable: {exc}")


@pytest.fixture(scope="session")
def pgstac_database() -> Iterator[PgstacDatabase]:
    """PostgreSQL 15 + PostGIS + migrated pgstac, for the whole session."""
    with ExitStack() as stack:
        database = enter_service(stack, run_pgstac_database)
        SERVICE_STARTUP_S["postgres+pgstac"] = database.startup_s
        yield database


@pytest.fixture(scope="session")
def stac_api_session(pgstac_database: PgstacDatabase) -> Iterator[StacApi]:
    """stac-fastapi-pgstac over `pgstac_database`; data loaded by one test stays loaded."""
    with ExitStack() as stack:
        api = enter_service(stack, lambda: run_stac_api(pgstac_database))
        SERVICE_STARTUP_S["stac-fastapi-pgstac"] = api.startup_s
        yield api


@pytest.fixture
def stac_api(stac_api_session: StacApi) -> StacApi:
    """The session STAC API with its server-side request counts reset for this test."""
    stac_api_session.reset_request_count()
    return stac_api_session


@pytest.fixture(scope="session")
def asset_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AssetServer]:
    with run_asset_server(tmp_path_factory.mktemp("assets")) as server:
        SERVICE_STARTUP_S["asset server"] = server.startup_s
        yield server


@pytest.fixture
def asset_server(asset_server_session: AssetServer) -> Iterator[AssetServer]:
    """Range-capable HTTP server over a session temp dir (write files into `.root`);
    counts and scripted faults are cleared before and after each test."""
    asset_server_session.reset()
    yield asset_server_session
    asset_server_session.reset()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """Factory: `fault_proxy("http://127.0.0.1:PORT")` starts a proxy closed after the test."""
    with ExitStack() as stack:
        yield lambda target_url: stack.enter_context(run_fault_proxy(target_url))


@pytest.fixture(scope="session")
def s3_store() -> Iterator[S3Store]:
    """moto S3 server with a fresh bucket; AWS_* env points at it for the session only."""
    with ExitStack() as stack:
        store = enter_service(stack, run_s3_server)
        SERVICE_STARTUP_S["moto S3"] = store.startup_s
        yield store


# --------------------------------------------------------------------------- synthetic world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    """The seed-0 test-size synthetic world, generated once per session into a temp dir."""
    return shared_world(tmp_path_factory)


@pytest.fixture(scope="session")
def world_corpus(world: WorldManifest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The world's corpus, every modality, built once per session with its statistics
    (read-only for the tests that use it: training and evaluation)."""
    from terracube.model.data.pixel_stats import stats_command
    from terracube.workflows.build.runner import BuildOptions, build_corpus
    from terracube.workflows.config import load_config

    from tests.workflows.workflows_support import world_config

    folder = tmp_path_factory.mktemp("world-corpus")
    config = load_config(world_config(world, folder))
    report = build_corpus(config, BuildOptions(synchronous=True, show_progress=False))
    assert report.tiles["done"] == len(world.tile_ids), report.tiles
    stats_command(config.store_url)
    return config.store_url


@pytest.fixture(scope="session")
def world_truth(world: WorldManifest) -> WorldTruth:
    """The world's ground truth (load_truth), read once per session."""
    return load_truth(world.root)


@pytest.fixture(scope="session")
def world_assets(world: WorldManifest) -> Iterator[AssetServer]:
    """Range-capable HTTP server over the world's root (its COGs under stac/).

    Session-wide and shared: a test that counts requests or scripts faults calls
    `.reset()` first and last.
    """
    with run_asset_server(world.root) as server:
        SERVICE_STARTUP_S["world asset server"] = server.startup_s
        yield server


def world_ndjson_items(world: WorldManifest, base_url: str | None = None) -> list[dict]:
    """Every item of the world's NDJSON, asset paths rewritten to `base_url` when given."""
    items = []
    for collection_id in world.item_ids:
        for line in world.ndjson[collection_id].read_text().splitlines():
            item = json.loads(line)
            items.append(rewrite_hrefs(item, world.root, base_url) if base_url else item)
    return items


@pytest.fixture(scope="session")
def world_stac_api(
    stac_api_session: StacApi, world: WorldManifest, world_assets: AssetServer
) -> StacApi:
    """The session STAC API with the world's collections and items loaded once.

    Item assets point at `world_assets` (http://127.0.0.1:PORT/stac/...), so the same
    items can be read as well as searched. Request counts are not reset here: ask for
    the `stac_api` fixture too (it resets them per test) or call reset_request_count().
    """
    collections = [
        json.loads(line) for line in world.ndjson["collections"].read_text().splitlines()
    ]
    stac_api_session.load_collections(collections)
    stac_api_session.load_items(world_ndjson_items(world, world_assets.url))
    stac_api_session.reset_request_count()
    return stac_api_session
