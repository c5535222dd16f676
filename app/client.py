"""An async client for model servers that read features synchronously (``GET /features``).

::

    async with VelocityClient(["http://worker-1:6066", "http://worker-2:6066"]) as client:
        one = await client.features("user-000001")                # dict, or None for 404
        many = await client.features_many(["u1", "u2", "u3"])     # {user: dict | None}, one request

Any worker answers any user (it asks the owner), so the client spreads
requests over the workers it knows, round robin. One pooled aiohttp session
(``max_connections``), a deadline per call (``timeout_s``), and retries:
a ``503`` is retried after its ``Retry-After`` (capped by the deadline) —
the worker is rebalancing or restoring, or ownership is moving — and a
connection error on the next worker. ``400`` raises :class:`BadLookup`;
anything else unexpected raises :class:`LookupFailed` (a ``401``/``403``: a
missing, unknown or under-scoped ``token``). With ``token`` every request
carries ``Authorization: Bearer <token>`` (a token of scope ``read``, see
``HTTP_AUTH_TOKENS_FILE``); with ``ssl`` (an ``ssl.SSLContext`` trusting the
workers' certificate) it talks to ``https://`` workers. Imports no Faust: a
model server needs only ``aiohttp`` and ``orjson``.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson


class LookupFailed(Exception):
    """The lookup did not succeed within the deadline and retries."""


class BadLookup(LookupFailed):
    """The request itself is wrong (400): a malformed ``at``, an ``at`` beyond the lateness, no user id."""


class VelocityClient:
    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        max_connections: int = 100,
        max_retry_after_s: float = 1.0,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("give at least one worker URL")
        self._urls = [u.rstrip("/") for u in urls]
        self._next = itertools.cycle(range(len(self._urls)))
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_retry_after_s = max_retry_after_s
        self._connector_limit = max_connections
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> VelocityClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connector_limit, ssl=self._ssl),
                headers=self._headers,
                json_serialize=lambda v: orjson.dumps(v).decode(),
            )
        return self._session

    async def features(self, user_id: str, at: float | None = None) -> dict[str, Any] | None:
        """The user's features (SPEC 7), or None if it has no state (404)."""
        path = "/features/" + quote(user_id, safe="")
        status, body = await self._get(path, [] if at is None else [("at", repr(at))])
        if status == 404:
            return None
        features: dict[str, Any] = body
        return features

    async def features_many(
        self, user_ids: Iterable[str], at: float | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """Many users in one request (answered by their owners in parallel); None for those without state.

        A user whose owner could not answer (503 within the batch) is asked
        again, alone, with the same retries as :meth:`features`.
        """
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        query = [("user_id", u) for u in users] + ([] if at is None else [("at", repr(at))])
        _, body = await self._get("/features", query)
        out: dict[str, dict[str, Any] | None] = {}
        again: list[str] = []
        for item in body["results"]:
            status = item["status"]
            if status == 200:
                out[item["user_id"]] = item["features"]
            elif status == 404:
                out[item["user_id"]] = None
            elif status == 400:
                raise BadLookup(item["error"])
            else:
                again.append(item["user_id"])
        for user_id, features in zip(
            again, await asyncio.gather(*(self.features(u, at) for u in again)), strict=True
        ):
            out[user_id] = features
        return out

    async def _get(self, path: str, query: list[tuple[str, str]]) -> tuple[int, Any]:
        deadline = time.monotonic() + self.timeout_s
        last = "no attempt"
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            url = self._urls[next(self._next)] + path
            try:
                async with self._get_session().get(
                    url, params=query, timeout=aiohttp.ClientTimeout(total=left)
                ) as response:
                    raw = await response.read()
                    status = response.status
                    if status in (200, 404):
                        return status, orjson.loads(raw)
                    message = _error_of(raw) or f"HTTP {status}"
                    if status == 400:
                        raise BadLookup(message)
                    if status != 503:
                        raise LookupFailed(f"{url}: {status} {message}")
                    last = f"{url}: 503 {message}"
                    wait = _retry_after(response.headers.get("Retry-After"), self.max_retry_after_s)
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                last = f"{url}: {type(exc).__name__}: {exc}"
                wait = 0.0  # the next worker, at once
            if attempt < self.retries:
                await asyncio.sleep(max(0.0, min(wait, deadline - time.monotonic())))
        raise LookupFailed(f"no answer within {self.timeout_s}s and {self.retries} retries (last: {last})")


def _retry_after(header: str | None, cap_s: float) -> float:
    try:
        return min(max(float(header), 0.0), cap_s) if header else 0.05
    except ValueError:
        return 0.05


def _error_of(raw: bytes) -> str | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return str(body.get("error")) if isinstance(body, dict) and "error" in body else None
