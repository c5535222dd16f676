"""aiohttp middleware and server options: every HTTP error is a JSON object with an ``error`` field,
never a stack trace, and no request or connection holds the server longer than its deadline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger(__name__)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status, headers=_kept(exc))
    except Exception:
        log.exception("request %s %s failed", request.method, request.path_qs)
        return web.json_response({"error": "internal error; see the worker log"}, status=500)


def _kept(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


def request_timeout(timeout_s: float) -> Middleware:
    """A request answered after ``timeout_s`` is a 504 JSON error (its handler is cancelled)."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(timeout_s):
                return await handler(request)
        except TimeoutError:
            log.warning("request %s %s took longer than %gs: 504", request.method, request.path, timeout_s)
            return web.json_response(
                {"error": f"no answer within {timeout_s:g}s (HTTP_REQUEST_TIMEOUT_S)"}, status=504
            )

    return deadline


def server_options(timeout_s: float) -> dict[str, Any]:
    """aiohttp's per-connection options (``Application(handler_args=...)``).

    ``keepalive_timeout``: aiohttp closes a connection that has not completed
    a request head this long after it opened (or after its last answer), so
    clients that stall or send their head byte by byte hold a socket for
    ``timeout_s`` at most (its default is about an hour). ``debug`` off: even
    with asyncio's debug mode on, aiohttp's own 500 page carries no traceback.
    """
    return {"keepalive_timeout": timeout_s, "debug": False}
