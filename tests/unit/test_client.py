"""The lookup client against a real HTTP server in the test (aiohttp): retries, deadlines, batches."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from app.client import BadLookup, LookupFailed, VelocityClient
from tests.ports import free_port


class Worker:
    """A stand-in worker: answers from ``script`` (one entry per request, then the last one forever)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, Any], dict[str, str]]] = [(200, {"user_id": "u"}, {})]
        self.seen: list[tuple[str, str]] = []  # (path, query string)
        self.port = free_port()
        app = web.Application()
        app.router.add_get("/features/{user}", self.single)
        app.router.add_get("/features", self.batch)
        self.runner = web.AppRunner(app)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _next(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.query_string))
        status, body, headers = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return web.json_response(body, status=status, headers=headers)

    async def single(self, request: web.Request) -> web.Response:
        return self._next(request)

    async def batch(self, request: web.Request) -> web.Response:
        return self._next(request)


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    w = Worker()
    await w.start()
    yield w
    await w.runner.cleanup()


async def test_a_found_user_a_missing_one_and_a_bad_request(worker: Worker) -> None:
    worker.script = [
        (200, {"user_id": "a b/c", "tx_count_1h": 2}, {}),
        (404, {"error": "no state"}, {}),
        (400, {"error": "at must be a JSON number"}, {}),
    ]
    async with VelocityClient(worker.url) as client:
        assert await client.features("a b/c", at=12.5) == {"user_id": "a b/c", "tx_count_1h": 2}
        assert await client.features("nobody") is None
        with pytest.raises(BadLookup, match="at must be"):
            await client.features("x")
    assert worker.seen[0] == ("/features/a b/c", "at=12.5")


async def test_a_503_is_retried_after_its_retry_after(worker: Worker) -> None:
    worker.script = [(503, {"error": "rebalancing"}, {"Retry-After": "0.3"}), (200, {"user_id": "u"}, {})]
    async with VelocityClient(worker.url, timeout_s=5.0) as client:
        started = time.monotonic()
        assert await client.features("u") == {"user_id": "u"}
        assert 0.25 < time.monotonic() - started < 3.0
    assert len(worker.seen) == 2


async def test_retries_and_the_deadline_are_bounded(worker: Worker) -> None:
    worker.script = [(503, {"error": "restoring"}, {"Retry-After": "5"})]
    async with VelocityClient(worker.url, timeout_s=0.6, retries=10, max_retry_after_s=0.1) as client:
        started = time.monotonic()
        with pytest.raises(LookupFailed, match="503 restoring"):
            await client.features("u")
        assert time.monotonic() - started < 2.0
    assert 2 <= len(worker.seen) <= 11
    worker.script = [(500, {"error": "internal error"}, {})]
    async with VelocityClient(worker.url) as client:
        with pytest.raises(LookupFailed, match="internal error"):
            await client.features("u")


async def test_a_dead_worker_is_skipped_for_the_next(worker: Worker) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with VelocityClient([dead, worker.url], retries=2) as client:
        for _ in range(3):
            assert await client.features("u") == {"user_id": "u"}


async def test_a_batch_in_one_request_with_its_503s_asked_again_alone(worker: Worker) -> None:
    worker.script = [
        (
            200,
            {
                "results": [
                    {"user_id": "a", "status": 200, "features": {"user_id": "a"}},
                    {"user_id": "b", "status": 404, "error": "no state"},
                    {"user_id": "c", "status": 503, "error": "owner did not answer"},
                ]
            },
            {},
        ),
        (200, {"user_id": "c"}, {}),
    ]
    async with VelocityClient(worker.url) as client:
        got = await client.features_many(["a", "b", "c", "a"])
    assert got == {"a": {"user_id": "a"}, "b": None, "c": {"user_id": "c"}}
    assert worker.seen[0] == ("/features", "user_id=a&user_id=b&user_id=c")
    assert worker.seen[1][0] == "/features/c"
