"""Freshness and lookup latency of one Velocity worker under steady traffic.

The harness produces ``rate`` transactions/s (Zipf-like users, the
simulator's model) to the worker's input topic, reads its output topic, and
for every feature record takes ``computed_at`` minus the input message's
Kafka timestamp (set by the harness when it sends). At the same time, from
processes of their own (bench/probe.py), a client asks
``GET /features/{user_id}`` ``rps`` times a second for users the worker
already holds and ``GET /health`` ``floor_rps`` times a second (the floor of
any answer), a plain consumer of the input topic records Kafka's own
delivery latency (the floor of freshness), and, at the ``/health`` rate, an
aiohttp server in a process of its own that does nothing else answers
``GET /health`` (the floor of any Python HTTP answer on this machine under
this load, with no worker in the way). Meanwhile ``bench/sched.py`` samples
the worker's main thread: the CPU it got and the time it was runnable but
waiting for a CPU. The first ``warmup_s`` seconds
are not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.harness import kafka_options
from bench.probe import ASSIGNMENT_TIMEOUT_S, paced, settle_at_end
from bench.sched import SchedWatch


@dataclass
class SteadyResult:
    rate_tx_s: float
    sent: int = 0
    fresh_ms: list[float] = field(default_factory=list)
    lookup_ms: list[float] = field(default_factory=list)
    lookup_status: dict[str, int] = field(default_factory=dict)
    #: Batched lookups of BATCH_SIZE users (GET /features?user_id=...), at batch_rps.
    batch_ms: list[float] = field(default_factory=list)
    batch_status: dict[str, int] = field(default_factory=dict)
    missing_records: int = 0
    #: GET /health on the same worker at the same time: the floor of any lookup.
    http_floor_ms: list[float] = field(default_factory=list)
    #: GET /health on an idle aiohttp server of its own at the same time: the machine's HTTP floor.
    machine_floor_ms: list[float] = field(default_factory=list)
    #: A plain consumer of the input topic: arrival minus Kafka timestamp, the floor of freshness.
    delivery_floor_ms: list[float] = field(default_factory=list)
    #: The worker's main thread after the warm-up: CPU, and time runnable without a CPU (bench/sched.py).
    worker_sched: dict[str, Any] = field(default_factory=dict)


async def _probe(role: str, args: list[str], out: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.probe", role, *args, "--out", str(out)
    )


async def _wait_file(path: Path, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"probe did not get ready (exit {proc.returncode})")
        await asyncio.sleep(0.05)


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
    work: Path,
    floor_rps: float = 50.0,
    batch_rps: float = 5.0,
    worker_pid: int | None = None,
) -> SteadyResult:
    result = SteadyResult(rate)
    sent_at: dict[str, float] = {}  # transaction_id -> Kafka timestamp (s)
    work.mkdir(parents=True, exist_ok=True)
    users_file, lookups_out, delivery_out, delivery_ready, server_ready = (
        work / "lookup-users.txt",
        work / "lookups.json",
        work / "delivery.json",
        work / "delivery.ready",
        work / "server.ready",
    )
    users_file.write_text("\n".join(lookup_users) + "\n")
    for f in (lookups_out, delivery_out, delivery_ready, server_ready):
        f.unlink(missing_ok=True)
    producer = AIOKafkaProducer(**kafka_options(), linger_ms=5)
    consumer = AIOKafkaConsumer(output_topic, **kafka_options(), auto_offset_reset="latest")
    await producer.start()
    await consumer.start()
    # The plain consumer reads the input alongside the worker, from its end, until 3 s after the
    # last send (its clock starts once it is ready; sending starts then).
    delivery_proc = await _probe(
        "delivery",
        [
            "--topic",
            input_topic,
            "--duration",
            str(duration_s + 3.0),
            "--warmup",
            str(warmup_s),
            "--ready",
            str(delivery_ready),
        ],
        delivery_out,
    )
    server_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.probe", "server", "--ready", str(server_ready)
    )
    lookups_proc: asyncio.subprocess.Process | None = None
    try:
        # Subscribe and settle on the end of the output before sending anything.
        await settle_at_end(consumer, output_topic)
        await _wait_file(delivery_ready, delivery_proc, ASSIGNMENT_TIMEOUT_S)
        await _wait_file(server_ready, server_proc, ASSIGNMENT_TIMEOUT_S)
        machine_url = server_ready.read_text().strip()
        t_warm = time.time() + warmup_s
        watch = None if worker_pid is None else SchedWatch(worker_pid, os.cpu_count() or 1).start()
        watch_from = time.monotonic() + warmup_s
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
                            series.append((round(t_in - t_warm, 3), round(result.fresh_ms[-1], 2)))

        series: list[tuple[float, float]] = []  # (sent, seconds after the warm-up; freshness ms)
        reader = asyncio.create_task(read())
        try:
            lookups_proc = await _probe(
                "lookups",
                [
                    "--url",
                    web_url,
                    "--users",
                    str(users_file),
                    "--rps",
                    str(rps),
                    "--floor-rps",
                    str(floor_rps),
                    "--batch-rps",
                    str(batch_rps),
                    "--machine-url",
                    machine_url,
                    "--duration",
                    str(duration_s),
                    "--warmup",
                    str(warmup_s),
                ],
                lookups_out,
            )
            await paced(rate, duration_s, produce)
            if watch is not None:
                result.worker_sched = watch.stop(since=watch_from)
            await producer.flush()
            stop.set()
            await asyncio.wait_for(reader, timeout=600)
            await asyncio.wait_for(lookups_proc.wait(), timeout=120)
            await asyncio.wait_for(delivery_proc.wait(), timeout=120)
        finally:
            reader.cancel()
    finally:
        for proc in (lookups_proc, delivery_proc, server_proc):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
        await producer.stop()
        await consumer.stop()
    # Per record, for a look at when the slow ones were sent (kept with --keep).
    (work / "freshness.json").write_text(json.dumps(series))
    counted = sum(1 for t in sent_at.values() if t >= t_warm)
    result.missing_records = max(0, counted - len(result.fresh_ms))
    if lookups_out.exists():
        lk = json.loads(lookups_out.read_text())
        result.lookup_ms, result.lookup_status = lk["lookup_ms"], lk["lookup_status"]
        result.http_floor_ms, result.machine_floor_ms = lk["floor_ms"], lk["machine_ms"]
        result.batch_ms, result.batch_status = lk["batch_ms"], lk["batch_status"]
    if delivery_out.exists():
        result.delivery_floor_ms = json.loads(delivery_out.read_text())["delivery_ms"]
    return result
