"""Table recovery speed and time to /ready for N users (default 100,000).

    .venv/bin/python bench/recovery.py --users 100000

1. fills a fresh input topic with one transaction per user (plus --extra
   transactions spread over them), and lets one worker process it all;
2. stops that worker and starts a cold one (fresh APP_DATADIR, same app id):
   it restores the whole table from the changelog;
3. reports the records restored, restore records/s (from the worker's own
   /stats "last_recovery") and the time from process start to /ready.
Then 4. restarts the first worker on its old APP_DATADIR (warm start) and
reports what it replayed. Needs the local Kafka (scripts/kafka.sh start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catchup import end_offsets_sum

REPO = Path(__file__).resolve().parents[1]
FAUST = str(Path(sys.executable).parent / "faust")


async def fill(bootstrap: str, topic: str, users: int, extra: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=262144)
    await producer.start()
    now = time.time() - 600
    sent = 0
    try:
        for i in range(users + extra):
            u = i % users
            tx = {
                "transaction_id": f"r-{i}",
                "user_id": f"user-{u:07d}",
                "amount": 10.0 + i % 97,
                "merchant_id": f"m-{i % 501}",
                "timestamp": now + i * 0.001,
            }
            await producer.send(topic, orjson.dumps(tx), key=tx["user_id"].encode())
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def stats(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?scope=worker", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def start(env: dict[str, str], datadir: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    e = dict(env, APP_DATADIR=datadir, WEB_PORT=str(port))
    return subprocess.Popen(
        [FAUST, "-A", "app", "worker", "-l", "info"],
        cwd=REPO,
        env=e,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        s = stats(port)
        if s and s.get("startup_to_ready_s") is not None:
            return s
        time.sleep(0.2)
    raise SystemExit("worker not ready in time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--extra", type=int, default=0, help="more transactions over the same users")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--bootstrap", default=f"localhost:{os.environ.get('KAFKA_PORT', '9092')}")
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="velocity-recovery-"))
    env = dict(
        os.environ,
        BROKER_URL=f"kafka://{args.bootstrap}",
        APP_ID=f"rec-{tag}",
        TRANSACTIONS_TOPIC=f"rec-tx-{tag}",
        FEATURES_TOPIC=f"rec-f-{tag}",
        DLQ_TOPIC=f"rec-d-{tag}",
        TOPIC_PARTITIONS=str(args.partitions),
        WEB_BIND="127.0.0.1",
        WEB_HOST="127.0.0.1",
    )
    port = 36500 + os.getpid() % 400
    first = start(env, str(tmp / "first"), port, tmp / "first.log")
    try:
        wait_ready(port, first, 120)
        n = asyncio.run(fill(args.bootstrap, env["TRANSACTIONS_TOPIC"], args.users, args.extra))
        t0 = time.monotonic()
        while asyncio.run(end_offsets_sum(args.bootstrap, env["FEATURES_TOPIC"])) < n:
            time.sleep(1)
        print(f"recovery: {n} transactions for {args.users} users processed in {time.monotonic() - t0:.1f}s")
    finally:
        first.terminate()
        first.wait(timeout=120)
    changelog = asyncio.run(end_offsets_sum(args.bootstrap, f"{env['APP_ID']}-user-state-changelog"))

    cold = start(env, str(tmp / "cold"), port, tmp / "cold.log")
    try:
        s = wait_ready(port, cold, 1800)
        rec = s["last_recovery"] or {}
        print(
            f"recovery: cold start restored {rec.get('records')} of {changelog} changelog records in "
            f"{rec.get('seconds', 0):.1f}s = {rec.get('records_per_s') or 0:,.0f} records/s; "
            f"process start to /ready {s['startup_to_ready_s']:.1f}s; users in state {s['users']}"
        )
    finally:
        cold.terminate()
        cold.wait(timeout=120)

    warm = start(env, str(tmp / "first"), port, tmp / "warm.log")
    try:
        s = wait_ready(port, warm, 1800)
        rec = s["last_recovery"] or {"records": 0}
        print(
            f"recovery: warm start (old APP_DATADIR) replayed {rec.get('records')} records; "
            f"process start to /ready {s['startup_to_ready_s']:.1f}s"
        )
    finally:
        warm.terminate()
        warm.wait(timeout=120)


if __name__ == "__main__":
    main()
