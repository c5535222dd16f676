"""Catch-up throughput of one Velocity worker on a pre-filled topic.

    .venv/bin/python bench/catchup.py --messages 100000 --users 100000

Fills a fresh input topic with the simulator's traffic, starts one worker
(new app id, RocksDB, defaults as shipped), and times from its first feature
record to the moment it has published one record per input message. Prints
transactions/s. Needs the local Kafka (scripts/kafka.sh start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


async def end_offsets_sum(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return sum((await consumer.end_offsets(tps)).values()) if tps else 0
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--bootstrap", default=f"localhost:{os.environ.get('KAFKA_PORT', '9092')}")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(
        BROKER_URL=f"kafka://{args.bootstrap}",
        APP_ID=f"bench-{tag}",
        TRANSACTIONS_TOPIC=f"bench-tx-{tag}",
        FEATURES_TOPIC=f"bench-features-{tag}",
        DLQ_TOPIC=f"bench-dlq-{tag}",
        TOPIC_PARTITIONS=str(args.partitions),
        WEB_PORT=str(36000 + os.getpid() % 1000),
        WEB_BIND="127.0.0.1",
        WEB_HOST="127.0.0.1",
        APP_DATADIR=tempfile.mkdtemp(prefix="velocity-bench-"),
    )
    faust = str(BIN / "faust")
    t0 = time.monotonic()
    subprocess.run(
        [
            faust,
            "-A",
            "app",
            "simulate",
            "--rate",
            "1000000",
            "--max-messages",
            str(args.messages),
            "--users",
            str(args.users),
            "--duration",
            "0",
            "--progress-every",
            "10",
            "--out-of-order",
            "0.02",
        ],
        cwd=REPO,
        env=env,
        check=True,
    )
    produced = asyncio.run(end_offsets_sum(args.bootstrap, env["TRANSACTIONS_TOPIC"]))
    print(f"catchup: {produced} messages pre-filled in {time.monotonic() - t0:.1f}s")
    log = open(Path(env["APP_DATADIR"]) / "worker.log", "wb")
    worker = subprocess.Popen(
        [faust, "-A", "app", "worker", "-l", "info"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        started = time.monotonic()
        first = None
        done = 0
        while time.monotonic() - started < args.timeout:
            done = asyncio.run(end_offsets_sum(args.bootstrap, env["FEATURES_TOPIC"]))
            dead = asyncio.run(end_offsets_sum(args.bootstrap, env["DLQ_TOPIC"]))
            now = time.monotonic()
            if first is None and done:
                first = (now, done)
            if done + dead >= produced:
                break
            if worker.poll() is not None:
                raise SystemExit(f"worker exited with {worker.returncode}; see {log.name}")
            time.sleep(0.5)
        end = time.monotonic()
        assert first is not None, "no feature record appeared"
        rate = (done - first[1]) / max(end - first[0], 1e-9)
        print(
            f"catchup: {done} feature records + {dead} dead letters; start-to-first-record "
            f"{first[0] - started:.1f}s; steady catch-up {rate:,.0f} tx/s "
            f"(overall {done / (end - started):,.0f} tx/s incl. start-up)"
        )
    finally:
        worker.terminate()
        worker.wait(timeout=60)


if __name__ == "__main__":
    main()
