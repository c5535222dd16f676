"""Freshness and lookup latency of one Velocity worker under steady traffic.

The harness produces ``rate`` transactions/s (Zipf-like users, the
simulator's model) to the worker's input topic, reads its output topic, and
for every feature record takes ``computed_at`` minus the input message's
Kafka timestamp (set by the harness when it sends). At the same time it asks
``GET /features/{user_id}`` ``rps`` times a second for users the worker
already holds, and times each answer. The first ``warmup_s`` seconds are
not counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.harness import bootstrap

ASSIGNMENT_TIMEOUT_S = 60.0


@dataclass
class SteadyResult:
    rate_tx_s: float
    sent: int = 0
    fresh_ms: list[float] = field(default_factory=list)
    lookup_ms: list[float] = field(default_factory=list)
    lookup_status: dict[int, int] = field(default_factory=dict)
    missing_records: int = 0


async def _paced(rate: float, duration_s: float, each: Any) -> None:
    """Call ``each(i)`` ``rate`` times a second for ``duration_s``, in 10 ms slices (no drift)."""
    start = time.monotonic()
    done = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= duration_s:
            return
        due = min(int(elapsed * rate) + 1, int(duration_s * rate))
        while done < due:
            await each(done)
            done += 1
        await asyncio.sleep(0.01)


async def run_steady(
    *,
    input_topic: str,
    output_topic: str,
    web_url: str,
    transactions: list[tuple[bytes, bytes]],
    lookup_users: list[str],
    rate: float,
    rps: float,
    duration_s: float,
    warmup_s: float,
) -> SteadyResult:
    result = SteadyResult(rate)
    sent_at: dict[str, float] = {}  # transaction_id -> Kafka timestamp (s)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), linger_ms=5)
    consumer = AIOKafkaConsumer(output_topic, bootstrap_servers=bootstrap(), auto_offset_reset="latest")
    await producer.start()
    await consumer.start()
    # Subscribe and settle on the end of the output before sending anything.
    deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
    while not consumer.assignment():
        if time.monotonic() > deadline:
            await producer.stop()
            await consumer.stop()
            raise TimeoutError(f"no partition of {output_topic} assigned in {ASSIGNMENT_TIMEOUT_S:.0f}s")
        await consumer.getmany(timeout_ms=200)
    for tp in consumer.assignment():
        await consumer.position(tp)
    t_warm = time.time() + warmup_s
    stop = asyncio.Event()

    async def produce(i: int) -> None:
        key, value = transactions[i % len(transactions)]
        now = time.time()
        txid = orjson.loads(value)["transaction_id"]
        sent_at[txid] = now
        await producer.send(input_topic, value, key=key, timestamp_ms=int(now * 1000))
        result.sent += 1

    async def read() -> None:
        # After the last send, read on until every record is back or 10 s pass without one.
        seen = 0
        quiet_since = time.monotonic()
        while not stop.is_set() or (seen < result.sent and time.monotonic() - quiet_since < 10):
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                quiet_since = time.monotonic()
            for records in batch.values():
                for r in records:
                    seen += 1
                    v = orjson.loads(r.value)
                    t_in = sent_at.get(v.get("transaction_id", ""))
                    if t_in is not None and t_in >= t_warm:
                        result.fresh_ms.append((v["computed_at"] - t_in) * 1000.0)

    rng = random.Random(5)

    async def lookups(session: aiohttp.ClientSession) -> None:
        pending: set[asyncio.Task[None]] = set()

        async def one(_: int) -> None:
            user = rng.choice(lookup_users)

            async def ask() -> None:
                t0 = time.perf_counter()
                async with session.get(f"{web_url}/features/{user}") as resp:
                    await resp.read()
                ms = (time.perf_counter() - t0) * 1000.0
                if time.time() >= t_warm:
                    result.lookup_status[resp.status] = result.lookup_status.get(resp.status, 0) + 1
                    result.lookup_ms.append(ms)

            task = asyncio.create_task(ask())
            pending.add(task)
            task.add_done_callback(pending.discard)

        await _paced(rps, duration_s, one)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    reader = asyncio.create_task(read())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            await asyncio.gather(_paced(rate, duration_s, produce), lookups(session))
        await producer.flush()
        stop.set()
        await asyncio.wait_for(reader, timeout=600)
    finally:
        reader.cancel()
        await producer.stop()
        await consumer.stop()
    counted = sum(1 for t in sent_at.values() if t >= t_warm)
    result.missing_records = max(0, counted - len(result.fresh_ms))
    return result
