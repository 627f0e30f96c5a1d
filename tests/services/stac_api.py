"""A real STAC API (stac-fastapi-pgstac under uvicorn) over the pgstac test database.

Why: catalog code must be tested against the HTTP API it will meet at scale — real
paging links, real CQL2 and query-extension semantics, real request counts — not a
static catalog. The server runs in its own process group from a temp working dir (so no
stray `.env` file configures it) and counts requests server-side (stac_counting_app).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.postgres_pgstac import PgstacDatabase, run_pgstac_database
from tests.services.process import LOOPBACK, free_port, spawn, stopping, wait_until
from tests.services.stac_counting_app import COUNTS_PATH

REPO_ROOT = Path(__file__).resolve().parents[2]
ENABLED_EXTENSIONS = "query,sort,fields,filter,pagination,collection_search"
"""Search extensions switched on; transactions stay off (tests load through pypgstac)."""

JsonDict = dict[str, Any]


def _http_json(method: str, url: str, timeout_s: float = 10.0) -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def synthesize_collections(items: Iterable[Mapping[str, Any]]) -> list[JsonDict]:
    """Minimal valid STAC Collections for every collection id the items reference.

    Recorded API responses carry items but not their collections; pgstac needs the
    collection row first. Extents are the union of the items' bboxes and datetimes.
    """
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        collection_id = item.get("collection")
        if not collection_id:
            raise ValueError(f"item {item.get('id')!r} has no 'collection'; set one before loading")
        grouped.setdefault(str(collection_id), []).append(item)
    collections = []
    for collection_id, members in sorted(grouped.items()):
        bboxes = [m["bbox"] for m in members if m.get("bbox")]
        times = sorted(
            t
            for m in members
            for t in (
                m["properties"].get("datetime"),
                m["properties"].get("start_datetime"),
                m["properties"].get("end_datetime"),
            )
            if t
        )
        bbox = (
            [
                min(b[0] for b in bboxes),
                min(b[1] for b in bboxes),
                max(b[-2] for b in bboxes),
                max(b[-1] for b in bboxes),
            ]
            if bboxes
            else [-180.0, -90.0, 180.0, 90.0]
        )
        collections.append(
            {
                "type": "Collection",
                "stac_version": "1.0.0",
                "id": collection_id,
                "description": f"{collection_id} (synthesised for tests from its items)",
                "license": "other",
                "links": [],
                "extent": {
                    "spatial": {"bbox": [bbox]},
                    "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]},
                },
            }
        )
    return collections


@dataclass(frozen=True)
class StacApi:
    """Handle on a running STAC API: URL, its database, loading, server-side request counts."""

    url: str
    database: PgstacDatabase
    startup_s: float
    """Seconds from launching uvicorn to answering; the database's own is separate."""

    def load_collections(
        self, collections: Iterable[Mapping[str, Any]], mode: str = "upsert"
    ) -> None:
        """Insert STAC Collection dicts (mode: insert, insert_ignore, ignore or upsert)."""
        self._load("collections", list(collections), mode)

    def load_items(self, items: Iterable[Mapping[str, Any]], mode: str = "upsert") -> None:
        """Insert STAC Item dicts; their collections must already be loaded."""
        self._load("items", list(items), mode)

    def _load(self, table: str, records: list[Mapping[str, Any]], mode: str) -> None:
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods

        try:
            method = Methods(mode)
        except ValueError as exc:
            choices = ", ".join(m.value for m in Methods)
            raise ValueError(f"load mode {mode!r} unknown; use one of: {choices}") from exc
        if not records:
            return
        db = PgstacDB(dsn=self.database.dsn)
        try:
            loader = Loader(db=db)
            if table == "collections":
                loader.load_collections(iter(records), insert_mode=method)
            else:
                loader.load_items(iter(records), insert_mode=method)
        finally:
            db.close()

    def request_counts(self) -> dict[str, int]:
        """Requests the server received since the last reset, keyed "METHOD /path"."""
        return dict(_http_json("GET", self.url + COUNTS_PATH))

    def search_request_count(self, method: str | None = None) -> int:
        """Requests to /search the server received (GET and POST, or only `method`)."""
        return sum(
            n
            for key, n in self.request_counts().items()
            if key.split(" ", 1)[1] == "/search"
            and (method is None or key.split(" ", 1)[0] == method.upper())
        )

    def reset_request_count(self) -> None:
        _http_json("DELETE", self.url + COUNTS_PATH)


def _answers(url: str) -> bool:
    try:
        _http_json("GET", url + "/_mgmt/ping", timeout_s=2.0)
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return False


@contextmanager
def run_stac_api(database: PgstacDatabase, start_timeout_s: float = 60.0) -> Iterator[StacApi]:
    """Serve `database` with stac-fastapi-pgstac on a free loopback port until the block exits."""
    started = time.perf_counter()
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    env.update(database.libpq_env())
    env.update(
        {
            "ENABLED_EXTENSIONS": ENABLED_EXTENSIONS,
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    with tempfile.TemporaryDirectory(prefix="terracube-stac-api-") as workdir:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.services.stac_counting_app:create_app",
            "--factory",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        process = spawn(
            "stac-fastapi-pgstac", argv, Path(workdir) / "uvicorn.log", env=env, cwd=Path(workdir)
        )
        with stopping(process):
            wait_until(process, lambda: _answers(url), start_timeout_s, f"answering at {url}")
            api = StacApi(url=url, database=database, startup_s=time.perf_counter() - started)
            api.reset_request_count()  # the readiness pings are not the tests' requests
            yield api


@contextmanager
def run_pgstac_stac_api() -> Iterator[StacApi]:
    """Database and API together, for benchmarks and scripts outside pytest."""
    with run_pgstac_database() as database, run_stac_api(database) as api:
        yield api
