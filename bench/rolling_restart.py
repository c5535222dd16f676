"""Processing pause of a rolling restart, with and without static membership.

    .venv/bin/python bench/rolling_restart.py [--rate 200]

For each mode (dynamic membership; static: CONSUMER_GROUP_INSTANCE_ID per
worker) it runs two workers under steady simulated traffic, restarts worker 1
(SIGTERM, then the same APP_DATADIR), then worker 2, and reports the longest
gap between consecutive feature records on any partition of the output topic
(the processing pause) and the number of group rebalances the survivors logged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

REPO = Path(__file__).resolve().parents[1]
FAUST = str(Path(sys.executable).parent / "faust")


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.2)


async def longest_gap(bootstrap: str, topic: str, start_ms: int, end_ms: int) -> float:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    last: dict[int, int] = {}
    gap = 0
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for tp, records in batch.items():
                for r in records:
                    if start_ms <= r.timestamp <= end_ms:
                        if tp.partition in last:
                            gap = max(gap, r.timestamp - last[tp.partition])
                        last[tp.partition] = r.timestamp
    finally:
        await consumer.stop()
    return gap / 1000.0


def run(mode: str, rate: float, bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="velocity-rolling-"))
    base = dict(
        os.environ,
        BROKER_URL=f"kafka://{bootstrap}",
        APP_ID=f"roll-{tag}",
        TRANSACTIONS_TOPIC=f"roll-tx-{tag}",
        FEATURES_TOPIC=f"roll-f-{tag}",
        DLQ_TOPIC=f"roll-d-{tag}",
        TOPIC_PARTITIONS="8",
        WEB_BIND="127.0.0.1",
        WEB_HOST="127.0.0.1",
    )
    ports = [37100 + os.getpid() % 300, 37500 + os.getpid() % 300]

    def start(i: int) -> subprocess.Popen[bytes]:
        env = dict(base, WEB_PORT=str(ports[i]), APP_DATADIR=str(tmp / f"w{i}"))
        if mode == "static":
            env["CONSUMER_GROUP_INSTANCE_ID"] = f"velocity-w{i}"
        return subprocess.Popen(
            [FAUST, "-A", "app", "worker", "-l", "info"],
            cwd=REPO,
            env=env,
            stdout=(tmp / f"w{i}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    workers = [start(0), start(1)]
    sim = None
    try:
        wait(lambda: all(ready(p) for p in ports), 180)
        sim = subprocess.Popen(
            [
                FAUST,
                "-A",
                "app",
                "simulate",
                "--rate",
                str(rate),
                "--duration",
                "0",
                "--progress-every",
                "600",
            ],
            cwd=REPO,
            env=base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(10)  # steady traffic before the restarts (a benchmark, not a test)
        start_ms = int(time.time() * 1000)
        for i in range(2):
            workers[i].terminate()
            workers[i].wait(timeout=120)
            workers[i] = start(i)
            wait(lambda: all(ready(p) for p in ports), 300)
            time.sleep(5)
        end_ms = int(time.time() * 1000)
    finally:
        if sim:
            sim.terminate()
            sim.wait(timeout=30)
        for w in workers:
            w.terminate()
            w.wait(timeout=120)
    gap = asyncio.run(longest_gap(bootstrap, base["FEATURES_TOPIC"], start_ms, end_ms))
    joins = sum((tmp / f"w{i}.log").read_text(errors="replace").count("Joined group") for i in range(2))
    print(
        f"rolling restart ({mode} membership): longest processing pause {gap:.1f}s; "
        f"group joins logged by the workers: {joins}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--bootstrap", default=f"localhost:{os.environ.get('KAFKA_PORT', '9092')}")
    args = ap.parse_args()
    for mode in ("dynamic", "static"):
        run(mode, args.rate, args.bootstrap)


if __name__ == "__main__":
    main()
