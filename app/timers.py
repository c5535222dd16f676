"""Timers that keep the worker's figures true, log them, and publish them.

* every ``REFRESH_S``: readiness, one point of rate/freshness history, and
  the consumer lag of the owned input partitions;
* every ``EXPIRY_SWEEP_INTERVAL_S``, once ready: a pass of the expiry sweep
  (``tables/expiry.py``, bounded work per event-loop turn);
* after a rebalance, once ready: a recount of the users in the active
  partitions (``tables/user_state.py``, bounded work per event-loop turn);
* every ``HEALTH_LOG_INTERVAL_S``: one log line per worker, and a warning when
  lag or freshness cross ``LAG_WARN_MESSAGES`` / ``FRESHNESS_WARN_S``;
* on the leader, every ``HEALTH_LOG_INTERVAL_S``: the cluster view as one JSON
  record on ``HEALTH_TOPIC`` (``monitoring.pipeline-health``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from app.cluster import cluster_stats
from app.faust_ext import committed_offset, timer
from app.main import app, health_topic, settings
from app.readiness import input_topics, is_ready, owned_partitions
from tables.user_state import stream_times, sweeper, user_counts

log = logging.getLogger(__name__)

REFRESH_S = 1.0


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
    committed = {tp: committed_offset(consumer, tp) for tp in tps}
    never = [tp for tp, offset in committed.items() if offset is None and highwaters.get(tp)]
    earliest = await consumer.earliest_offsets(*never) if never else {}
    lag: dict[tuple[str, int], int] = {}
    for tp in tps:
        start = committed[tp] if committed[tp] is not None else earliest.get(tp, 0)
        lag[(tp.topic, tp.partition)] = max(0, int(highwaters.get(tp) or 0) - int(start or 0))
    app.metrics.set_lag(lag, owned_partitions())


@timer(app, REFRESH_S)
async def refresh_health() -> None:
    metrics = app.metrics
    metrics.set_ready(is_ready())
    metrics.sample()
    metrics.set_users(user_counts.total())


@timer(app, REFRESH_S)
async def count_users() -> None:
    if is_ready() and not user_counts.complete and await user_counts.recount(owned_partitions()):
        app.metrics.set_users(user_counts.total())


@timer(app, REFRESH_S)
async def refresh_consumer_lag() -> None:
    if not is_ready():
        return
    try:
        await refresh_lag()
    except Exception as exc:  # noqa: BLE001 - a failed refresh must not stop the timer
        log.warning("could not refresh consumer lag: %s", exc)


@timer(app, settings.expiry_sweep_interval_s)
async def sweep_expired_users() -> None:
    """SPEC 4, Expiry: queue the users of the active partitions that have fallen behind (tables/expiry.py)."""
    if stream_times.tracking and is_ready() and await sweeper.sweep(owned_partitions()):
        app.metrics.on_sweep(sweeper.last_pass_s or 0.0, sweeper.last_pass_keys)


def health_line(snapshot: dict[str, Any]) -> str:
    def seconds(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 1000:.1f}ms"

    dead = snapshot["dead_letters"]
    return (
        f"health: rate={snapshot['rate_tx_s']:.1f} tx/s processed={snapshot['processed_total']} "
        f"lag={snapshot['lag_total']} partitions={snapshot['partitions']} users={snapshot['users']} "
        f"freshness_p99={seconds(snapshot['freshness_p99_s'])} duplicates={snapshot['duplicates_total']} "
        f"expired={snapshot['users_expired_total']} "
        f"dlq={sum(dead.values())} " + " ".join(f"{k}={v}" for k, v in dead.items())
    )


@timer(app, settings.health_log_interval_s)
async def log_health() -> None:
    snapshot = app.metrics.snapshot()
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


@timer(app, settings.health_log_interval_s, on_leader=True)
async def publish_health() -> None:
    stats = await cluster_stats()
    record = {"app_id": settings.app_id, "published_by": str(app.conf.canonical_url), **stats}
    await health_topic.send(key=settings.app_id.encode(), value=orjson.dumps(record))
