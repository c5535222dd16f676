"""Competitor design "quix_sliding": the velocity features with Quix Streams sliding windows.

    .venv/bin/python -m bench.designs.quix_sliding

The pipeline (quixstreams 3.28, one ``Application``, RocksDB window stores with changelog topics):

1. Input topic: key deserialized as ``str`` (the ``user_id``), value as JSON (Quix's orjson), and a
   timestamp extractor that makes the transaction's ``timestamp`` field (seconds, rounded to
   milliseconds) the event time, instead of the Kafka message timestamp.
2. ``filter``: drop messages that are not valid SPEC 3 transactions (logged).
3. ``sliding_window(1 h - 1 ms, grace 1 h).agg(...)`` with ``Count()``, ``Sum("amount")``, a
   ``Reduce`` that keeps the set of merchant ids, and ``Last()`` (the transaction itself), emitted with
   ``.current()``. Quix's sliding windows are closed on both ends, so a duration of ``W - 1 ms`` is the
   spec's ``(T - W, T]`` at millisecond resolution.
4. ``.current()`` emits every window the message updated; an out-of-order message also updates the
   later windows of other messages. Keep only the window that ends at the message's own timestamp
   (its "left" window, whose ``Last()`` is the message), so exactly one record per transaction goes on.
5. Flatten (transaction fields + 1 h features) and ``set_timestamp`` back to the transaction's event
   time (a window result carries its window start as timestamp).
6. ``sliding_window(24 h - 1 ms, grace 1 h).agg(...)`` with ``Count()``, ``Sum("amount")``,
   ``Max("amount")``, ``Reduce`` merchant set, a ``Reduce`` Welford (count, mean, M2) for the z-score, a
   ``Reduce`` keeping the two largest timestamps (for ``seconds_since_last_tx``) and ``Last()``; the
   same left-window filter; then the flat SPEC 4 record with ``computed_at``.
7. ``to_topic(output)``: key = message key (``user_id``), value JSON, Kafka timestamp = ``computed_at``.

Choices: consumer group = ``BENCH_GROUP``, ``auto_offset_reset="earliest"``, state dir
``$BENCH_DATADIR/quix-state``, ``commit_interval=1.0`` (the Faust app commits every second),
at-least-once, changelog topics on (Quix's fault tolerance, like Faust's table changelogs; they are
named ``changelog__<group>--<input>--<window>``), producer ``acks=all``, ``linger.ms=5``, murmur2
partitioner (Quix's default), no compression. The output topic is created by Quix if missing, with the
input's partition count. SIGTERM is handled by Quix once ``Application.run`` has started (it stops,
commits and closes); a SIGTERM during the first second or two (imports, topic set-up) kills it outright.
Startup to the first record takes several seconds (topic and changelog creation, group join, recovery).

Where the output differs from SPEC 4:

* Event time has millisecond resolution (Quix timestamps are integer ms): windows are exact for the
  simulator's millisecond timestamps, not for finer ones.
* Lateness is Quix's per-key ``grace_ms`` (set to the spec's 1 h): a transaction more than 1 h behind
  its user's latest is dropped with a Quix warning and produces **no record** (the spec dead-letters
  it); otherwise out-of-order transactions are exact, as in SPEC 4.
* No duplicate handling: a replayed ``transaction_id`` is counted again and changes later records.
* ``seconds_since_last_tx`` comes from the 24 h window, so it is ``null`` instead of the true gap when
  the previous transaction is 24 h or more older (the spec keeps the latest evicted timestamp).
* Messages are grouped by the Kafka key, not re-keyed by ``user_id`` (a ``group_by`` would add a
  repartition topic); the benchmark input is keyed by ``user_id``. No dead-letter topic: invalid
  messages are dropped with a log line. No clock-skew check on ``timestamp``.
* Sums are never subtracted (Quix sliding windows only add to fresh aggregates), so they do not drift;
  they may differ from an exact sum in the last bits (summation order).

Cost note: a Quix sliding window keeps one aggregate per distinct timestamp (its "left" window and the
"right" window after it) and a new message updates every window it falls into, i.e. every distinct
timestamp of the user in the last ``W``: per-user work per message is linear in the user's distinct
timestamps in the window (quadratic over a burst), and each update re-serializes the merchant set.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from quixstreams import Application
from quixstreams.dataframe.windows import Count, Last, Max, Reduce, Sum
from quixstreams.models import TopicConfig

log = logging.getLogger("bench.designs.quix_sliding")

NAME = "quix_sliding"
W1H_MS = 3_600_000
W24H_MS = 86_400_000
GRACE_MS = 3_600_000  # SPEC's default ALLOWED_LATENESS_S
PRODUCER_CONFIG = {"acks": "all", "linger.ms": 5, "compression.type": "none"}


def command(python: str) -> list[str]:
    """The argv that runs this design (from the repository root)."""
    return [python, "-m", "bench.designs.quix_sliding"]


# --------------------------------------------------------------------------- input (SPEC 3)


def _text(tx: dict[str, Any], field: str, lo: int, hi: int) -> bool:
    v = tx.get(field)
    return isinstance(v, str) and lo <= len(v) <= hi


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def valid(tx: Any) -> bool:
    """SPEC 3 validation of a decoded value (orjson already rejects NaN/Infinity literals)."""
    ok = (
        isinstance(tx, dict)
        and _text(tx, "transaction_id", 1, 128)
        and _text(tx, "user_id", 1, 128)
        and _text(tx, "merchant_id", 1, 128)
        and _number(tx.get("amount"))
        and 0 <= tx["amount"] < 1e12
        and _number(tx.get("timestamp"))
        and tx["timestamp"] > 0
        and (tx.get("merchant_category") is None or _text(tx, "merchant_category", 0, 64))
        and (tx.get("is_online") is None or isinstance(tx.get("is_online"), bool))
    )
    if not ok:
        log.warning("dropping invalid transaction: %.200r", tx)
    return ok


def ts_ms(seconds: float) -> int:
    return round(seconds * 1000)


def event_time(value: Any, _headers: Any, timestamp: int, _timestamp_type: Any) -> int:
    """Timestamp extractor: the transaction's ``timestamp`` field in ms (Kafka's for invalid values)."""
    if isinstance(value, dict) and _number(value.get("timestamp")) and value["timestamp"] > 0:
        return ts_ms(value["timestamp"])
    return timestamp


# --------------------------------------------------------------------------- aggregations


def _merchants_init(tx: dict[str, Any]) -> dict[str, int]:
    return {tx["merchant_id"]: 1}


def _merchants_add(seen: dict[str, int], tx: dict[str, Any]) -> dict[str, int]:
    m = tx["merchant_id"]
    return seen if m in seen else {**seen, m: 1}


def _welford_init(tx: dict[str, Any]) -> list[float]:
    return [1, float(tx["amount"]), 0.0]


def _welford_add(state: list[float], tx: dict[str, Any]) -> list[float]:
    n, mean, m2 = state
    x = float(tx["amount"])
    n += 1
    delta = x - mean
    mean += delta / n
    return [n, mean, m2 + delta * (x - mean)]


def _top2_init(tx: dict[str, Any]) -> list[float]:
    return [tx["timestamp"]]


def _top2_add(top: list[float], tx: dict[str, Any]) -> list[float]:
    return sorted([*top, tx["timestamp"]], reverse=True)[:2]


def _own_window(window: dict[str, Any], last_field: str) -> bool:
    """The window that ends at the timestamp of the message being processed (see step 4)."""
    return bool(window["end"] == ts_ms(window[last_field]["timestamp"]))


def _with_1h(window: dict[str, Any]) -> dict[str, Any]:
    tx = window["tx"]
    n, total = window["count_1h"], window["total_1h"]
    return {
        "transaction_id": tx["transaction_id"],
        "user_id": tx["user_id"],
        "amount": tx["amount"],
        "merchant_id": tx["merchant_id"],
        "merchant_category": tx.get("merchant_category") or "unknown",
        "timestamp": tx["timestamp"],
        "is_online": bool(tx.get("is_online")),
        "tx_count_1h": n,
        "total_amount_1h": float(total),
        "avg_amount_1h": total / n if n else 0.0,
        "unique_merchants_1h": len(window["merchants_1h"]),
    }


def _record(window: dict[str, Any]) -> dict[str, Any]:
    x = window["x"]
    n, total = window["count_24h"], float(window["total_24h"])
    _, mean, m2 = window["stats"]
    std = math.sqrt(m2 / n) if n else 0.0
    top = window["top2"]
    return {
        "user_id": x["user_id"],
        "transaction_id": x["transaction_id"],
        "event_time": x["timestamp"],
        "tx_count_1h": x["tx_count_1h"],
        "tx_count_24h": n,
        "total_amount_1h": x["total_amount_1h"],
        "total_amount_24h": total,
        "avg_amount_1h": x["avg_amount_1h"],
        "avg_amount_24h": total / n if n else 0.0,
        "max_amount_24h": float(window["max_24h"] or 0.0),
        "unique_merchants_1h": x["unique_merchants_1h"],
        "unique_merchants_24h": len(window["merchants_24h"]),
        "seconds_since_last_tx": x["timestamp"] - top[1] if len(top) > 1 else None,
        "amount_zscore_24h": (x["amount"] - mean) / std if n >= 2 and m2 > 0 and std > 0 else None,
        "current_amount": x["amount"],
        "is_online": x["is_online"],
        "merchant_category": x["merchant_category"],
        "computed_at": time.time(),
    }


def _input_partitions(bootstrap: str, topic: str) -> int:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    t = meta.topics.get(topic)
    return len(t.partitions) if t is not None and t.error is None and t.partitions else 8


def _skip_undecodable(exc: BaseException | None, message: Any, logger: logging.Logger) -> bool:
    if message is None or exc is None:
        return False  # Kafka-level errors: let Quix raise as by default
    logger.warning("dropping undecodable message at offset %s: %s", message.offset(), exc)
    return True


def build(app: Application, input_name: str, output_name: str, partitions: int) -> None:
    source = app.topic(
        input_name, key_deserializer="str", value_deserializer="json", timestamp_extractor=event_time
    )
    sink = app.topic(
        output_name,
        key_serializer="str",
        value_serializer="json",
        config=TopicConfig(num_partitions=partitions, replication_factor=1),
    )
    sdf = app.dataframe(source)
    sdf = sdf.filter(valid)

    sdf = (
        sdf.sliding_window(duration_ms=W1H_MS - 1, grace_ms=GRACE_MS, name="velocity-1h")
        .agg(
            count_1h=Count(),
            total_1h=Sum("amount"),
            merchants_1h=Reduce(reducer=_merchants_add, initializer=_merchants_init),
            tx=Last(),
        )
        .current()
    )
    sdf = sdf.filter(lambda w: _own_window(w, "tx"))
    sdf = sdf.apply(_with_1h)
    sdf = sdf.set_timestamp(lambda value, _key, _ts, _headers: ts_ms(value["timestamp"]))

    sdf = (
        sdf.sliding_window(duration_ms=W24H_MS - 1, grace_ms=GRACE_MS, name="velocity-24h")
        .agg(
            count_24h=Count(),
            total_24h=Sum("amount"),
            max_24h=Max("amount"),
            merchants_24h=Reduce(reducer=_merchants_add, initializer=_merchants_init),
            stats=Reduce(reducer=_welford_add, initializer=_welford_init),
            top2=Reduce(reducer=_top2_add, initializer=_top2_init),
            x=Last(),
        )
        .current()
    )
    sdf = sdf.filter(lambda w: _own_window(w, "x"))
    sdf = sdf.apply(_record)
    sdf = sdf.set_timestamp(lambda value, _key, _ts, _headers: ts_ms(value["computed_at"]))
    sdf.to_topic(sink)


def run() -> int:
    env = os.environ
    bootstrap = env["BENCH_BOOTSTRAP"]
    state_dir = Path(env["BENCH_DATADIR"]) / "quix-state"
    state_dir.mkdir(parents=True, exist_ok=True)
    app = Application(
        broker_address=bootstrap,
        consumer_group=env["BENCH_GROUP"],
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=state_dir,
        producer_extra_config=PRODUCER_CONFIG,
        on_consumer_error=_skip_undecodable,
        loglevel="WARNING",
    )
    build(app, env["BENCH_INPUT"], env["BENCH_OUTPUT"], _input_partitions(bootstrap, env["BENCH_INPUT"]))
    app.run()
    print(f"{NAME}: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run())
