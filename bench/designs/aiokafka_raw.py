"""Competitor design "aiokafka_raw": the consumption ceiling of any Python (aiokafka) consumer.

    .venv/bin/python -m bench.designs.aiokafka_raw

An ``AIOKafkaConsumer`` in consumer group ``BENCH_GROUP`` reads the input topic from the earliest
offset with ``getmany`` and large fetches (``fetch_max_bytes`` 50 MiB, ``max_partition_fetch_bytes``
10 MiB, CRC checks left on as by default), counts the records and
decodes nothing (aiokafka still parses the record batches into ``ConsumerRecord`` objects, which
every aiokafka-based consumer, Faust included, pays for). No offsets are committed, nothing is
produced, no state is kept: it computes no SPEC 4 feature at all.

When it has consumed ``BENCH_EXPECT`` messages it prints exactly one JSON line to stdout,
``{"design": "aiokafka_raw", "consumed": N, "seconds": S, "tx_s": N / S}``, where ``S`` runs from the
arrival of the first message to that of the ``N``-th (the group join and first fetch are not counted),
and exits 0. ``getmany`` returns at most ``MAX_RECORDS`` (500) records a call: the first call's records
are counted in ``N`` but not timed, so the rate is biased upwards by at most 500 / N (0.5 % for 100,000);
aiokafka keeps fetching in the background meanwhile, so the small batches cost only the call overhead.
On SIGTERM/SIGINT before that it stops cleanly, reports the count on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from aiokafka import AIOKafkaConsumer

NAME = "aiokafka_raw"
MAX_RECORDS = 500


def command(python: str) -> list[str]:
    """The argv that runs this design (from the repository root)."""
    return [python, "-m", "bench.designs.aiokafka_raw"]


async def consume(bootstrap: str, topic: str, group: str, expect: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=50 * 1024 * 1024,
        max_partition_fetch_bytes=10 * 1024 * 1024,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    consumed = 0
    first = last = 0.0
    try:
        while consumed < expect and not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            if not batches:
                continue
            n = sum(len(records) for records in batches.values())
            now = time.perf_counter()
            if consumed == 0:
                first = now
            consumed += n
            last = now
    finally:
        await consumer.stop()
    if consumed < expect:
        print(f"{NAME}: interrupted after {consumed} of {expect} messages", file=sys.stderr)
        return 1
    seconds = last - first
    print(
        json.dumps(
            {
                "design": NAME,
                "consumed": consumed,
                "seconds": seconds,
                "tx_s": consumed / seconds if seconds > 0 else None,
            }
        ),
        flush=True,
    )
    return 0


def main() -> int:
    env = os.environ
    return asyncio.run(
        consume(env["BENCH_BOOTSTRAP"], env["BENCH_INPUT"], env["BENCH_GROUP"], int(env["BENCH_EXPECT"]))
    )


if __name__ == "__main__":
    sys.exit(main())
