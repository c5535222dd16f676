"""Timers that keep the health figures true, log them, and publish them.

* every ``REFRESH_S``: consumer lag of the owned input partitions, readiness,
  one point of rate/freshness history, and (after a rebalance) a recount of
  the users in the active partitions;
* every ``HEALTH_LOG_INTERVAL_S``: one log line per worker, and a warning when
  lag or freshness cross ``LAG_WARN_MESSAGES`` / ``FRESHNESS_WARN_S``;
* on the leader, every ``HEALTH_LOG_INTERVAL_S``: the cluster view as one JSON
  record on ``HEALTH_TOPIC`` (``monitoring.pipeline-health``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from app.health import health, merge_snapshots
from app.main import app, health_topic, settings
from tables.store import is_head_key, user_state

log = logging.getLogger(__name__)

REFRESH_S = 1.0
PEER_TIMEOUT_S = 2.0

_recount_needed = True
_was_ready = False


def input_topics() -> tuple[str, str]:
    return settings.transactions_topic, settings.rekey_topic


def is_ready() -> bool:
    """Partitions assigned and table recovery finished (and not rebalancing now)."""
    recovery = app.tables.recovery
    return bool(
        _assigned_once and recovery.completed.is_set() and not app.rebalancing and not app.in_recovery
    )


_assigned_once = False


async def _on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
    global _assigned_once, _recount_needed
    _assigned_once = True
    _recount_needed = True


app.on_partitions_assigned.connect(_on_assigned)


def owned_partitions() -> list[int]:
    """Partitions of the input topic this worker actively owns (standbys excluded)."""
    return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.transactions_topic)


def count_users(partitions: list[int]) -> int:
    """Head keys in the table's active partitions (RocksDB: one DB per partition)."""
    data = user_state.data
    dbs = getattr(data, "_dbs", None)
    if dbs is None:  # memory:// store
        return sum(1 for key in data.keys() if is_head_key(key))
    # Each partition DB also holds Faust's own offset bookkeeping key.
    offset_key = getattr(data, "offset_key", None)
    return sum(
        1 for p in partitions if p in dbs for key in dbs[p].keys() if key != offset_key and is_head_key(key)
    )


async def refresh_lag() -> None:
    """High watermark minus committed offset for each owned input partition.

    High watermarks come from the fetcher's last responses (no broker round
    trip); only partitions never fetched or never committed need a request.
    """
    consumer = app.consumer
    tps = [tp for tp in consumer.assignment() if tp.topic in input_topics()]
    highwaters = {tp: consumer.highwater(tp) for tp in tps}
    unknown = [tp for tp, hw in highwaters.items() if hw is None]
    if unknown:
        highwaters.update(await consumer.highwaters(*unknown))
    committed = {tp: consumer._committed_offset.get(tp) for tp in tps}
    never = [tp for tp, offset in committed.items() if offset is None and highwaters.get(tp)]
    earliest = await consumer.earliest_offsets(*never) if never else {}
    lag: dict[tuple[str, int], int] = {}
    for tp in tps:
        start = committed[tp] if committed[tp] is not None else earliest.get(tp, 0)
        lag[(tp.topic, tp.partition)] = max(0, int(highwaters.get(tp) or 0) - int(start or 0))
    health.set_lag(lag, owned_partitions())


@app.timer(interval=REFRESH_S)
async def refresh_health() -> None:
    global _recount_needed, _was_ready
    ready = is_ready()
    health.set_ready(ready)
    if ready and not _was_ready:
        health.on_ready()
    _was_ready = ready
    health.sample()
    if ready and _recount_needed:
        _recount_needed = False
        health.set_users(count_users(owned_partitions()))


@app.timer(interval=REFRESH_S)
async def refresh_consumer_lag() -> None:
    if not is_ready():
        return
    try:
        await refresh_lag()
    except Exception as exc:  # noqa: BLE001 - a failed refresh must not stop the timer
        log.warning("could not refresh consumer lag: %s", exc)


def health_line(snapshot: dict[str, Any]) -> str:
    def seconds(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 1000:.1f}ms"

    dead = snapshot["dead_letters"]
    return (
        f"health: rate={snapshot['rate_tx_s']:.1f} tx/s processed={snapshot['processed_total']} "
        f"lag={snapshot['lag_total']} partitions={snapshot['partitions']} users={snapshot['users']} "
        f"freshness_p99={seconds(snapshot['freshness_p99_s'])} duplicates={snapshot['duplicates_total']} "
        f"dlq={sum(dead.values())} " + " ".join(f"{k}={v}" for k, v in dead.items())
    )


@app.timer(interval=settings.health_log_interval_s)
async def log_health() -> None:
    snapshot = health.snapshot()
    log.info("%s", health_line(snapshot))
    if snapshot["lag_total"] > settings.lag_warn_messages:
        worst = max(snapshot["lag"], key=lambda x: x["messages"])
        log.warning(
            "health: consumer lag %s > LAG_WARN_MESSAGES=%s (worst %s[%s]: %s)",
            snapshot["lag_total"],
            settings.lag_warn_messages,
            worst["topic"],
            worst["partition"],
            worst["messages"],
        )
    p99 = snapshot["freshness_p99_s"]
    if p99 is not None and p99 > settings.freshness_warn_s:
        log.warning(
            "health: feature freshness p99 %.3fs > FRESHNESS_WARN_S=%ss", p99, settings.freshness_warn_s
        )


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
    snapshot = health.snapshot()
    snapshot.update(worker=str(app.conf.canonical_url).rstrip("/"), ready=is_ready(), computed_at=time.time())
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


@app.timer(interval=settings.health_log_interval_s, on_leader=True)
async def publish_health() -> None:
    stats = await cluster_stats()
    record = {"app_id": settings.app_id, "published_by": str(app.conf.canonical_url), **stats}
    await health_topic.send(key=settings.app_id.encode(), value=orjson.dumps(record))
