"""Competitor design "seed_redis": the seed lesson's Redis sorted-set velocity processor.

    .venv/bin/python -m bench.designs.seed_redis

What it reproduces (design of the "Redis sorted set" processor in the seed lesson, own code):

* A confluent-kafka ``Consumer`` (``auto.offset.reset=earliest``, auto-commit off) polls the input
  topic one message at a time; each valid transaction is written to Redis and its features are read
  back with range queries, then one flat JSON feature record (key = ``user_id``) is produced with a
  confluent-kafka ``Producer``.
* Per user, one sorted set per kind, scored by the transaction's event ``timestamp``:
  ``vel:{user}:tx`` (member ``transaction_id``), ``vel:{user}:amt`` (member ``"<transaction_id>:<amount>"``)
  and ``vel:{user}:mer`` (member ``merchant_id``, score = timestamp of the merchant's last processed
  visit). The lesson keeps a copy of each set per window; here both windows are answered from the same
  set by score ranges, which is the same design with half the writes.
* Round trip 1 (a redis-py ``pipeline()``, MULTI/EXEC as in the lesson): ZADD to the three sets,
  EXPIRE them (2 x 24 h, wall clock) and ZREMRANGEBYSCORE everything at or before ``T - 24 h``.
  Round trip 2 (a non-transactional pipeline of reads): ZCOUNT of ``tx`` and ``mer`` over
  ``(T - 1 h, T]`` and ``(T - 24 h, T]``, ZRANGEBYSCORE of ``amt`` over ``(T - 24 h, T]`` WITHSCORES
  (sums, average, max and z-score are computed in Python from these members), and a
  ZREVRANGEBYSCORE of ``tx`` from ``T`` down, LIMIT 2, for the previous transaction. So two Redis
  round trips per transaction, nothing batched across transactions (as in the lesson).
* JSON with the standard library ``json`` (as in the lesson), strict: ``NaN``/``Infinity`` rejected.

Choices (kept equal in spirit to the Faust app and the other designs):

* Producer: ``acks=all``, ``linger.ms=5``, ``partitioner=murmur2_random`` (the Java/aiokafka key
  partitioner, so records land on the same partitions as Faust's), no compression and no idempotence
  (the lesson used lz4 + idempotence; the Faust app uses neither).
* Offsets: instead of the lesson's synchronous commit after every message, every second
  (the Faust app's ``broker_commit_interval``) the producer is flushed and the consumed offsets are
  committed synchronously (at-least-once: records before offsets). On SIGTERM/SIGINT the loop stops,
  flushes, commits and closes.
* Creates the output topic (same partition count as the input) if it does not exist, nothing else.
* Invalid input (SPEC 3) is skipped with a log line (the design has no dead-letter topic).

Where the output differs from SPEC 4:

* Windows are ``(T - W, T]`` as specified, evaluated on the sets as they are when ``x`` is processed,
  but state is trimmed at ``T - 24 h`` of *each* processed transaction: an out-of-order transaction
  processed after a newer one sees its older 24 h window already trimmed (undercounted 24 h features).
* ``unique_merchants_*`` counts merchants whose *last processed* visit falls in the window (ZADD
  overwrites a merchant's score): an out-of-order visit moves the score backwards, and a merchant seen
  in the window but also later is not counted for an out-of-order ``x``.
* ``seconds_since_last_tx`` only looks at the retained 24 h, so it is ``null`` instead of the true
  gap when the previous transaction is 24 h or more older (the spec keeps the latest evicted timestamp).
* No lateness rule (``ALLOWED_LATENESS_S``): every transaction, however late, is processed and
  published, never dead-lettered. No clock-skew check on ``timestamp``.
* Duplicates are half-handled: the same ``transaction_id`` is not counted twice (sorted-set members
  are unique) and its record is published again, but the replay's score/amount overwrite the
  original's, and a merchant's score moves to the replay's timestamp.
* Messages are not re-keyed: a key that differs from ``user_id`` is ignored (state is by ``user_id``
  anyway, but another consumer could own the user concurrently).
* State in Redis is not partitioned by Kafka partition nor restored from a changelog: it is exactly
  as durable as the Redis server (here: ``--save ""``, ``--appendonly no``, i.e. not at all).
* Float sums are recomputed from the members on every transaction, so they do not drift; but the
  cost of a transaction grows with the user's 24 h history (the whole window is read back and parsed by
  redis-py, in pure Python: no hiredis), so heavy users dominate the run time.

The helpers :func:`start_redis` / :func:`stop_redis` start and stop a private ``redis-server`` on
127.0.0.1 (free port, no persistence, temp dir) for the benchmark harness.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("bench.designs.seed_redis")

NAME = "seed_redis"
W1H = 3600.0
W24H = 86400.0
COMMIT_INTERVAL_S = 1.0
PRODUCER_CONFIG = {
    "acks": "all",
    "linger.ms": 5,
    "partitioner": "murmur2_random",
    "compression.type": "none",
}


def command(python: str) -> list[str]:
    """The argv that runs this design (from the repository root)."""
    return [python, "-m", "bench.designs.seed_redis"]


# --------------------------------------------------------------------------- redis-server helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    datadir: str | os.PathLike[str], timeout: float = 10.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a private ``redis-server`` on 127.0.0.1 and a free port; return (process, port).

    No persistence (``--save ""``, ``--appendonly no``); its working dir and log are a new temp dir
    under ``datadir``. Stop it with :func:`stop_redis` (by PID, never by name).
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=datadir))
    last_error = "no attempt"
    for _attempt in range(5):  # a free port can be taken between the probe and redis-server's bind
        port = _free_port()
        with open(workdir / f"redis-{port}.log", "wb") as logf:  # the child keeps its own copy
            proc = subprocess.Popen(
                [
                    exe,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                    "--daemonize",
                    "no",
                    "--databases",
                    "1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if client.ping():
                        return proc, port
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        stop_redis(proc)  # port taken meanwhile, or too slow: try another port
        last_error = f"exit code {proc.returncode}, log in {workdir}"
    raise RuntimeError(f"redis-server did not start: {last_error}")


def stop_redis(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a server started by :func:`start_redis` (SIGTERM, then SIGKILL), by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# --------------------------------------------------------------------------- input validation (SPEC 3)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _text(tx: dict[str, Any], field: str, lo: int, hi: int) -> bool:
    v = tx.get(field)
    return isinstance(v, str) and lo <= len(v) <= hi


def parse(raw: bytes | None) -> dict[str, Any] | None:
    """The transaction as a dict with SPEC 3 defaults applied, or None when it is invalid."""
    if raw is None:
        return None
    try:
        tx = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(tx, dict):
        return None
    amount, ts = tx.get("amount"), tx.get("timestamp")
    if not (
        _text(tx, "transaction_id", 1, 128)
        and _text(tx, "user_id", 1, 128)
        and _text(tx, "merchant_id", 1, 128)
        and isinstance(amount, int | float)
        and not isinstance(amount, bool)
        and math.isfinite(amount)
        and 0 <= amount < 1e12
        and isinstance(ts, int | float)
        and not isinstance(ts, bool)
        and math.isfinite(ts)
        and ts > 0
    ):
        return None
    cat = tx.get("merchant_category")
    if cat is None:
        tx["merchant_category"] = "unknown"
    elif not (isinstance(cat, str) and len(cat) <= 64):
        return None
    online = tx.get("is_online")
    if online is None:
        tx["is_online"] = False
    elif not isinstance(online, bool):
        return None
    return tx


# --------------------------------------------------------------------------- the processor


class RedisVelocity:
    """Feature computation on Redis sorted sets: one write round trip, one read round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def features(self, tx: dict[str, Any]) -> dict[str, Any]:
        user = tx["user_id"]
        tx_id = tx["transaction_id"]
        t = float(tx["timestamp"])
        amount = float(tx["amount"])
        k_tx, k_amt, k_mer = f"vel:{user}:tx", f"vel:{user}:amt", f"vel:{user}:mer"
        ttl = int(2 * W24H)
        cutoff = repr(t - W24H)

        writes = self.r.pipeline()  # MULTI/EXEC, as in the lesson
        writes.zadd(k_tx, {tx_id: t})
        writes.zadd(k_amt, {f"{tx_id}:{amount!r}": t})
        writes.zadd(k_mer, {tx["merchant_id"]: t})
        for key in (k_tx, k_amt, k_mer):
            writes.expire(key, ttl)
            writes.zremrangebyscore(key, "-inf", cutoff)
        writes.execute()

        lo1, lo24, hi = f"({t - W1H!r}", f"({t - W24H!r}", repr(t)
        reads = self.r.pipeline(transaction=False)
        reads.zcount(k_tx, lo1, hi)
        reads.zcount(k_tx, lo24, hi)
        reads.zcount(k_mer, lo1, hi)
        reads.zcount(k_mer, lo24, hi)
        reads.zrangebyscore(k_amt, lo24, hi, withscores=True)
        reads.zrevrangebyscore(k_tx, hi, "-inf", start=0, num=2, withscores=True)
        n1, n24, m1, m24, amount_entries, latest = reads.execute()

        amounts_24h: list[float] = []
        amounts_1h: list[float] = []
        for member, score in amount_entries:
            a = float(member.rsplit(b":", 1)[1])
            amounts_24h.append(a)
            if score > t - W1H:
                amounts_1h.append(a)
        total_1h, total_24h = math.fsum(amounts_1h), math.fsum(amounts_24h)
        zscore = None
        if len(amounts_24h) >= 2:
            mean = total_24h / len(amounts_24h)
            std = math.sqrt(math.fsum((a - mean) ** 2 for a in amounts_24h) / len(amounts_24h))
            if std > 0 and max(amounts_24h) != min(amounts_24h):
                zscore = (amount - mean) / std
        previous = next((score for member, score in latest if member != tx_id.encode()), None)

        return {
            "user_id": user,
            "transaction_id": tx_id,
            "event_time": tx["timestamp"],
            "tx_count_1h": n1,
            "tx_count_24h": n24,
            "total_amount_1h": total_1h,
            "total_amount_24h": total_24h,
            "avg_amount_1h": total_1h / n1 if n1 else 0.0,
            "avg_amount_24h": total_24h / n24 if n24 else 0.0,
            "max_amount_24h": max(amounts_24h) if amounts_24h else 0.0,
            "unique_merchants_1h": m1,
            "unique_merchants_24h": m24,
            "seconds_since_last_tx": t - previous if previous is not None else None,
            "amount_zscore_24h": zscore,
            "current_amount": tx["amount"],
            "is_online": tx["is_online"],
            "merchant_category": tx["merchant_category"],
            "computed_at": time.time(),
        }


def _ensure_output_topic(bootstrap: str, input_topic: str, output_topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = admin.list_topics(timeout=10).topics
    if output_topic in topics:
        return
    partitions = len(topics[input_topic].partitions) if input_topic in topics else 8
    fut = admin.create_topics([NewTopic(output_topic, num_partitions=partitions, replication_factor=1)])
    try:
        fut[output_topic].result(30)
    except Exception as exc:  # KafkaException; created concurrently is fine
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


def run() -> int:
    env = os.environ
    bootstrap = env["BENCH_BOOTSTRAP"]
    input_topic, output_topic = env["BENCH_INPUT"], env["BENCH_OUTPUT"]
    group = env["BENCH_GROUP"]
    port = int(env["BENCH_REDIS_PORT"])

    stop = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    _ensure_output_topic(bootstrap, input_topic, output_topic)
    processor = RedisVelocity(redis.Redis(host="127.0.0.1", port=port))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "max.poll.interval.ms": 300000,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    consumer.subscribe([input_topic])
    processed = skipped = 0
    pending = False
    next_commit = time.monotonic() + COMMIT_INTERVAL_S

    def commit() -> None:
        nonlocal pending
        if pending:
            producer.flush()
            try:
                consumer.commit(asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - e.g. during a rebalance; retried next time
                log.warning("commit failed: %s", exc)
            pending = False

    try:
        while not stop:
            msg = consumer.poll(0.5)
            if msg is not None:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", msg.error())
                    continue
                pending = True
                tx = parse(msg.value())
                if tx is None:
                    skipped += 1
                    log.warning(
                        "skipping invalid message at %s[%d]@%d", msg.topic(), msg.partition(), msg.offset()
                    )
                else:
                    record = processor.features(tx)
                    producer.produce(
                        output_topic,
                        key=tx["user_id"].encode("utf-8"),
                        value=json.dumps(record).encode("utf-8"),
                    )
                    producer.poll(0)
                    processed += 1
            if time.monotonic() >= next_commit:
                commit()
                next_commit = time.monotonic() + COMMIT_INTERVAL_S
        commit()
    finally:
        producer.flush(10)
        consumer.close()
        processor.r.close()
    print(f"{NAME}: stopped after {processed} records ({skipped} invalid skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(run())
