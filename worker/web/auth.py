"""Bearer-token authentication of the HTTP APIs (``SEGMENT_WORKER_API_TOKEN``), one aiohttp middleware for the
worker's API and the trigger service's.

With a token set, every path but ``API_OPEN_PATHS`` (default ``/metrics``, ``/healthz``, ``/readyz``: scrapers and
probes) needs ``Authorization: Bearer <token>``; anything else is answered 401. The comparison takes the same time
whatever the token sent (``hmac.compare_digest``). A request the worker routes to the user's owner carries its
headers along, and the owner checks them again.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from worker import codec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_open(path: str, open_paths: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in open_paths)


def authorized(token: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries the token (always, when no token is configured)."""
    if not token:
        return True
    scheme, _, sent = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


def auth_middleware(token: str, open_paths: tuple[str, ...]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request.path, open_paths) or authorized(token, request.headers.get("Authorization")):
            return await handler(request)
        return web.Response(
            status=401,
            body=codec.dumps({"error": "a valid 'Authorization: Bearer <token>' header is needed"}),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="segment-worker"'},
        )

    return check
