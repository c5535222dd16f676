"""Processes of their own for the steady scenario's clients (bench/steady.py).

    python -m bench.probe lookups --url URL --users FILE --rps R --floor-rps F \
        --duration S --warmup S --out FILE
    python -m bench.probe delivery --topic T --duration S --warmup S --out FILE
    python -m bench.probe server --ready FILE

``lookups`` times ``GET /features/{user}`` at ``--rps``, batched lookups of
``--batch-size`` users (``GET /features?user_id=...``) at ``--batch-rps``, and, at ``--floor-rps``,
``GET /health`` on the same worker: an answer that does no work, the floor any
lookup pays on this machine (HTTP, the event loop, the scheduler).
``delivery`` is a plain aiokafka consumer of the input topic that records, for
every message, its arrival minus the message's Kafka timestamp: Kafka's own
delivery latency under the same traffic, the floor of freshness.
``server`` is an aiohttp server that answers ``GET /health`` and does
nothing else, in a process of its own (it writes its URL to ``--ready``):
``lookups --machine-url`` asks it at ``--floor-rps`` too. What that costs is
the floor of any Python HTTP answer on this machine under the same load (the
client, the loopback, the scheduler), with no worker's event loop in the way.

Each runs in its own process so that its event loop is not the one producing
and reading the traffic (a busy harness loop would delay its timers and its
answers, and show up as worker latency). Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiokafka import AIOKafkaConsumer

from bench.harness import kafka_options

ASSIGNMENT_TIMEOUT_S = 60.0


async def paced(rate: float, duration_s: float, each: Any) -> None:
    """Call ``each(i)`` ``rate`` times a second for ``duration_s``, in 10 ms slices (no drift)."""
    start = time.monotonic()
    done = 0
    total = int(duration_s * rate)
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= duration_s:
            return
        due = min(int(elapsed * rate) + 1, total)
        while done < due:
            await each(done)
            done += 1
        await asyncio.sleep(0.01)


async def lookups(
    url: str,
    users: list[str],
    rps: float,
    floor_rps: float,
    duration_s: float,
    warmup_s: float,
    batch_rps: float = 0.0,
    batch_size: int = 50,
    machine_url: str | None = None,
) -> dict[str, Any]:
    kinds = ("lookup", "floor", "batch", "machine")
    out: dict[str, Any] = {f"{kind}_ms": [] for kind in kinds} | {f"{kind}_status": {} for kind in kinds}
    t_warm = time.monotonic() + warmup_s
    rng = random.Random(5)
    pending: set[asyncio.Task[None]] = set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        def ask(path: str, kind: str, base: str = url) -> None:
            async def one() -> None:
                t0 = time.perf_counter()
                async with session.get(f"{base}{path}") as resp:
                    await resp.read()
                ms = (time.perf_counter() - t0) * 1000.0
                if time.monotonic() >= t_warm:
                    statuses = out[f"{kind}_status"]
                    statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                    out[f"{kind}_ms"].append(ms)

            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def feature(_: int) -> None:
            ask(f"/features/{rng.choice(users)}", "lookup")

        async def floor(_: int) -> None:
            ask("/health", "floor")

        async def machine(_: int) -> None:
            assert machine_url is not None
            ask("/health", "machine", machine_url)

        async def batch(_: int) -> None:
            chosen = rng.sample(users, min(batch_size, len(users)))
            ask("/features?" + "&".join(f"user_id={quote(u, safe='')}" for u in chosen), "batch")

        runs = [paced(rps, duration_s, feature)]
        if floor_rps > 0:
            runs.append(paced(floor_rps, duration_s, floor))
        if batch_rps > 0:
            runs.append(paced(batch_rps, duration_s, batch))
        if machine_url is not None and floor_rps > 0:
            runs.append(paced(floor_rps, duration_s, machine))
        await asyncio.gather(*runs)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return out


async def settle_at_end(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Wait for ``consumer`` (subscribed to ``topic``, ``latest``) to own partitions and sit at their end."""
    deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no partition of {topic} assigned in {ASSIGNMENT_TIMEOUT_S:.0f}s")
        await consumer.getmany(timeout_ms=200)
    for tp in consumer.assignment():
        await consumer.position(tp)


async def delivery(topic: str, duration_s: float, warmup_s: float, ready: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"delivery_ms": []}
    consumer = AIOKafkaConsumer(topic, **kafka_options(), auto_offset_reset="latest")
    await consumer.start()
    try:
        await settle_at_end(consumer, topic)
        if ready is not None:
            ready.write_text("ready\n")
        t_warm = time.time() + warmup_s
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batch.values():
                for r in records:
                    if r.timestamp / 1000.0 >= t_warm:
                        out["delivery_ms"].append(max(0.0, now * 1000.0 - r.timestamp))
    finally:
        await consumer.stop()
    return out


async def idle_server(ready: Path) -> None:
    """Answer ``GET /health`` on a free loopback port until terminated; write the URL to ``ready``."""
    from aiohttp import web

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    application = web.Application()
    application.router.add_get("/health", health)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    partial = ready.with_suffix(".partial")
    partial.write_text(f"http://127.0.0.1:{port}\n")
    partial.rename(ready)  # whole or absent to the reader
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role", required=True)
    lk = sub.add_parser("lookups")
    lk.add_argument("--url", required=True)
    lk.add_argument("--users", type=Path, required=True, help="file with one user id per line")
    lk.add_argument("--rps", type=float, required=True)
    lk.add_argument("--floor-rps", type=float, default=0.0)
    lk.add_argument(
        "--batch-rps", type=float, default=0.0, help="batched lookups (GET /features?user_id=...)"
    )
    lk.add_argument("--batch-size", type=int, default=50)
    lk.add_argument("--machine-url", help="an idle HTTP server (the server role), asked at --floor-rps")
    dl = sub.add_parser("delivery")
    dl.add_argument("--topic", required=True)
    dl.add_argument("--ready", type=Path, help="file written once the consumer sits at the topic's end")
    sv = sub.add_parser("server")
    sv.add_argument("--ready", type=Path, required=True, help="file the server's URL is written to")
    for p in (lk, dl):
        p.add_argument("--duration", type=float, required=True)
        p.add_argument("--warmup", type=float, default=0.0)
        p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.role == "server":
        asyncio.run(idle_server(args.ready))
        return
    if args.role == "lookups":
        users = args.users.read_text().split()
        result = asyncio.run(
            lookups(
                args.url,
                users,
                args.rps,
                args.floor_rps,
                args.duration,
                args.warmup,
                args.batch_rps,
                args.batch_size,
                args.machine_url,
            )
        )
    else:
        result = asyncio.run(delivery(args.topic, args.duration, args.warmup, args.ready))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
