"""The stac-fastapi-pgstac app wrapped so the *server* counts the requests it receives.

Why: tests of the planner assert how many /search requests a plan makes. Counting on the
server side (not in the client) is the only count that cannot be fooled by client-side
caching or retries being hidden. Served by uvicorn as
`tests.services.stac_counting_app:create_app --factory`; the counts are read and reset
over HTTP at COUNTS_PATH (GET returns JSON, DELETE resets), which is itself not counted.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

COUNTS_PATH = "/_terracube/request-counts"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestCountingApp:
    """ASGI wrapper: counts every HTTP request by "METHOD /path", then delegates."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == COUNTS_PATH:
            await self._answer_counts(scope["method"], send)
            return
        with self._lock:
            self._counts[f"{scope['method']} {path}"] += 1
        await self.app(scope, receive, send)

    async def _answer_counts(self, method: str, send: Send) -> None:
        if method == "DELETE":
            with self._lock:
                self._counts.clear()
            status, body = 204, b""
        elif method == "GET":
            with self._lock:
                body = json.dumps(dict(self._counts)).encode()
            status = 200
        else:
            status, body = 405, b'{"detail": "use GET to read or DELETE to reset"}'
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app() -> RequestCountingApp:
    """uvicorn factory: the stock stac-fastapi-pgstac app (settings from env) plus counting."""
    from stac_fastapi.pgstac.app import create_app as create_stac_app

    return RequestCountingApp(create_stac_app())
