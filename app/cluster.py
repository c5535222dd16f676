"""The cluster view: this worker's figures and every other worker's, gathered over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from app.main import app, scorer, settings
from app.metrics import merge_snapshots
from app.readiness import is_ready
from app.web_auth import WebAccess, web_access

PEER_TIMEOUT_S = 2.0

#: How this worker calls the others: ``Authorization`` with HTTP_PEER_TOKEN, TLS trust (app/web_auth.py).
access: WebAccess = web_access(settings)


def worker_urls() -> list[str]:
    """Canonical URLs of every worker the partition assignor knows, this one first."""
    own = str(app.conf.canonical_url).rstrip("/")
    urls = [own]
    try:
        hosts = app.router.tables_metadata()
    except Exception:  # noqa: BLE001 - no assignment yet
        hosts = {}
    for url in hosts:
        url = str(url).rstrip("/")
        if url not in urls:
            urls.append(url)
    return urls


async def local_stats() -> dict[str, Any]:
    snapshot = app.metrics.snapshot()
    snapshot.update(
        worker=str(app.conf.canonical_url).rstrip("/"),
        ready=is_ready(),
        computed_at=time.time(),
        model_version=None if scorer is None else scorer.version,
    )
    return snapshot


async def cluster_stats() -> dict[str, Any]:
    """Every worker's local stats, gathered by this one (unreachable peers are listed as such)."""
    urls = worker_urls()

    async def fetch(url: str) -> dict[str, Any]:
        if url == urls[0]:
            return await local_stats()
        try:
            async with app.http_client.get(
                f"{url}/stats",
                params={"scope": "worker"},
                headers=access.peer_headers,
                ssl=access.peer_ssl,
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    return {"worker": url, "error": f"HTTP {response.status}"}
                body: dict[str, Any] = orjson.loads(await response.read())
                return body
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            return {"worker": url, "error": f"{type(exc).__name__}: {exc}"}

    workers = list(await asyncio.gather(*(fetch(u) for u in urls)))
    cluster = merge_snapshots(workers)
    for w in workers:
        w.pop("history", None)
    return {"cluster": cluster, "workers": workers, "computed_at": time.time()}
