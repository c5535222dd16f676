"""Scale: memory, disk, restore and takeover of one Velocity app against the number of users in state.

    make bench-scale                                   # 100k, 1M and 5M users (about 20 minutes)
    .venv/bin/python -m bench.scale --users 100000 1000000 --takeover-at 1000000

Needs the local Kafka (scripts/kafka.sh start). Not part of CI. For each
user count N, on topics of its own:

1. ``fill``: N transactions, one per user, event times over ten minutes of
   the past (so nothing expires), consumed by one cold worker. Figures: its
   catch-up rate and its RSS with N users in state.
2. ``disk``: the worker stops; its RocksDB partitions are compacted offline
   (rocksdict, the table's own databases) and measured: bytes per user.
3. ``restore``: a worker on an empty data directory restores the table from
   the changelog: records restored, records/s, process start to ``/ready``,
   RSS afterwards.
4. At ``--takeover-at`` users only, ``takeover``: a second worker joins with
   ``TABLE_STANDBY_REPLICAS=1`` and catches up its standby copies; the first
   is killed with SIGKILL; the time until the survivor owns every partition
   and answers a sample of lookups spread over all partitions (and how many
   changelog records it re-read to get there), against the session timeout.
   Then ``expiry``: steady traffic of other users at ``--rate`` tx/s, first
   with event times that expire nobody, then with event times that put every
   one of the N users past ``USER_TTL_S``: freshness p50/p99 of both phases,
   and how many users the sweep removed during the second.

Writes ``bench/results/scale.json``, ``scale.md`` and ``scale.png`` (RSS,
disk and restore time against users), or under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench import harness
from bench.harness import PARTITIONS, VELOCITY_WORKER, Proc, free_port
from bench.steady import run_steady

RESULTS = harness.REPO / "bench" / "results"
SESSION_TIMEOUT_S = 10.0
TTL_S = 3600.0
SPAN_S = 600.0


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def user_id(i: int) -> str:
    return f"u{i:08d}"


async def fill_topic(topic: str, users: int, t0: float) -> None:
    """One transaction per user, event times rising over SPAN_S from t0."""
    producer = AIOKafkaProducer(**harness.kafka_options(), linger_ms=50, max_batch_size=524288)
    await producer.start()
    try:
        rng = random.Random(5)
        step = SPAN_S / users
        pending = []
        for i in range(users):
            u = user_id(i)
            value = orjson.dumps(
                {
                    "transaction_id": f"fill-{i}",
                    "user_id": u,
                    "amount": round(rng.uniform(1, 500), 2),
                    "merchant_id": f"m{rng.randrange(5000)}",
                    "merchant_category": "grocery",
                    "timestamp": t0 + i * step,
                }
            )
            pending.append(await producer.send(topic, value, key=u.encode()))
            if len(pending) >= 50000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def http_text(url: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return None


def metric(port: int, name: str) -> float:
    text = http_text(f"http://127.0.0.1:{port}/metrics") or ""
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compact_offline(datadir: Path) -> dict[str, Any]:
    """Compact every partition database of the table (the worker is stopped); their size after."""
    import rocksdict

    dbs = sorted(p for p in datadir.rglob("user-state-*.db") if p.is_dir())
    keys = 0
    for path in dbs:
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            db.compact_range(None, None)
            keys += sum(1 for _ in db.keys())
        finally:
            db.close()
    return {"databases": len(dbs), "keys": keys, "bytes": sum(dir_bytes(p) for p in dbs)}


class Scale:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.tag = uuid.uuid4().hex[:6]
        self.work = Path(opts.work or f"/tmp/velocity-scale-{self.tag}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def env(
        self, app_id: str, topic: str, out: str, datadir: Path, port: int, **extra: str
    ) -> dict[str, str]:
        env = harness.velocity_env(app_id, topic, out, datadir, port)
        env.update(
            USER_TTL_S=str(TTL_S),
            EXPIRY_SWEEP_INTERVAL_S="5",
            BROKER_SESSION_TIMEOUT_S=str(SESSION_TIMEOUT_S),
            HEALTH_LOG_INTERVAL_S="10",
        )
        env.update(extra)
        return env

    def start(self, name: str, env: dict[str, str]) -> Proc:
        proc = Proc.start(name, VELOCITY_WORKER, env, self.work / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()

    def run_size(self, users: int) -> dict[str, Any]:
        o: dict[str, Any] = {"users": users}
        app_id = f"scale-{self.tag}-{users}"
        topic, out = f"scale-in-{self.tag}-{users}", f"scale-out-{self.tag}-{users}"
        asyncio.run(harness.create_topics([topic, out, f"{out}-dlq"]))
        t0 = time.time() - 2 * TTL_S  # old enough for the expiry phase to put them all past the TTL
        started = time.monotonic()
        asyncio.run(fill_topic(topic, users, t0))
        log(f"{users:,}: produced {users:,} transactions in {time.monotonic() - started:.0f}s")

        # 1. fill
        port = free_port()
        first_dir = self.work / f"{users}-first"
        first = self.start(f"first-{users}", self.env(app_id, topic, out, first_dir, port))
        began = first.started  # from process start: a small fill is done before /ready answers
        harness.wait_started(port, first, 300)
        harness.wait_until(
            lambda: (
                (s := harness.worker_stats(port)) and s["processed_total"] >= users and s["lag_total"] == 0
            ),
            3600,
            f"{users:,} users processed",
            first,
        )
        took = time.monotonic() - began
        stats = harness.worker_stats(port) or {}
        o["fill"] = {
            "seconds": took,
            "tx_s": users / took,
            "rss_mb": first.rss_mb(),
            "users": stats.get("users"),
        }
        log(
            f"{users:,}: filled in {took:.0f}s from process start ({users / took:,.0f} tx/s), "
            f"RSS {o['fill']['rss_mb']:.0f} MB"
        )
        first.stop()

        # 2. disk
        o["disk_before_compaction_bytes"] = dir_bytes(first_dir)
        compacted = compact_offline(first_dir)
        o["disk"] = compacted | {"bytes_per_user": compacted["bytes"] / users}
        log(
            f"{users:,}: RocksDB {compacted['bytes'] / 1e6:.1f} MB after compaction "
            f"({o['disk']['bytes_per_user']:.0f} bytes/user, {compacted['keys']:,} keys)"
        )

        # 3. restore
        port = free_port()
        cold = self.start(f"cold-{users}", self.env(app_id, topic, out, self.work / f"{users}-cold", port))
        stats = harness.wait_started(port, cold, 1800)
        rec = stats.get("last_recovery") or {}
        o["restore"] = {
            "records": rec.get("records"),
            "records_s": rec.get("records_per_s"),
            "start_to_ready_s": stats.get("startup_to_ready_s"),
            "rss_mb": cold.rss_mb(),
        }
        log(f"{users:,}: cold restore {o['restore']}")

        if users == self.opts.takeover_at:
            o["takeover"] = self.takeover(users, app_id, topic, out, cold, port)
            survivor_port = o["takeover"].pop("port")
            o["expiry"] = self.expiry(users, topic, out, survivor_port)
        self.stop_all()
        self.procs.clear()
        shutil.rmtree(self.work / f"{users}-first", ignore_errors=True)
        return o

    def takeover(
        self, users: int, app_id: str, topic: str, out: str, first: Proc, first_port: int
    ) -> dict[str, Any]:
        port = free_port()
        second = self.start(
            f"second-{users}",
            self.env(app_id, topic, out, self.work / f"{users}-second", port, TABLE_STANDBY_REPLICAS="1"),
        )
        harness.wait_started(port, second, 1800)

        def settled() -> bool:
            a, b = harness.worker_stats(first_port), harness.worker_stats(port)
            if not (a and b and harness.ready(first_port) and harness.ready(port)):
                return False
            parts = sorted(a["partitions"] + b["partitions"])
            return parts == list(range(PARTITIONS)) and bool(a["partitions"]) and bool(b["partitions"])

        harness.wait_until(settled, 600, "two workers sharing the partitions", [first, second])
        # The standby copies catch up: wait until the second worker's standby count stops growing.
        last, same_since = -1.0, time.monotonic()
        while time.monotonic() - same_since < 5:
            now = metric(port, "velocity_changelog_records_standby_total")
            if now != last:
                last, same_since = now, time.monotonic()
            time.sleep(0.5)
        log(f"{users:,}: second worker's standbys applied {last:,.0f} changelog records")
        sample = [user_id(i) for i in random.Random(9).sample(range(users), 2000)]
        restored_before = metric(port, "velocity_changelog_records_restored_total")
        killed = time.monotonic()
        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait()

        def owns_all() -> bool:
            s = harness.worker_stats(port)
            owns = s is not None and sorted(s["partitions"]) == list(range(PARTITIONS))
            return owns and harness.ready(port)

        harness.wait_until(owns_all, 600, "the survivor owning every partition, ready", second)
        ready_at = time.monotonic()

        def serving() -> float | None:
            """When a check began that found every sampled user answered (200)."""
            began = time.monotonic()
            ok = all(harness.http_status(f"http://127.0.0.1:{port}/features/{u}") == 200 for u in sample)
            return began if ok else None

        served_at = harness.wait_until(serving, 600, "the survivor serving every sampled user", second)
        took = served_at - killed
        result = {
            "kill_to_serving_s": took,
            "kill_to_ready_s": ready_at - killed,
            "session_timeout_s": SESSION_TIMEOUT_S,
            "after_session_timeout_s": took - SESSION_TIMEOUT_S,
            "standby_records_before_kill": last,
            "records_reread": metric(port, "velocity_changelog_records_restored_total") - restored_before,
            "sampled_lookups": len(sample),
            "port": port,
        }
        log(f"{users:,}: takeover {result}")
        return result

    def expiry(self, users: int, topic: str, out: str, port: int) -> dict[str, Any]:
        """Steady traffic of other users: event times that expire nobody, then ones that expire all N."""
        rate, duration = self.opts.rate, self.opts.expiry_s

        since = time.time()

        def settled() -> bool:  # after the takeover: users recounted, a sweep pass done since
            s = harness.worker_stats(port)
            sweep = None if s is None else s.get("last_expiry_sweep")
            return s is not None and s["users"] == users and sweep is not None and sweep["at"] > since

        harness.wait_until(settled, 600, "the survivor's recount and first sweep pass")
        base_t = time.time() - 2 * TTL_S + SPAN_S + 60  # stream time stays below every user's M + TTL
        result: dict[str, Any] = {"rate_tx_s": rate}
        for phase, ts0 in (("before", base_t), ("during", time.time() - 30)):
            n = int(rate * duration)
            txs = []
            for i in range(n):
                u = f"steady-{phase}-{i % 5000}"
                txs.append(
                    (
                        u.encode(),
                        orjson.dumps(
                            {
                                "transaction_id": f"{phase}-{i}",
                                "user_id": u,
                                "amount": 12.5,
                                "merchant_id": "m1",
                                "timestamp": ts0 + i / rate * 0.01,
                            }
                        ),
                    )
                )
            expired_before = (harness.worker_stats(port) or {}).get("users_expired_total", 0)
            res = asyncio.run(
                run_steady(
                    input_topic=topic,
                    output_topic=out,
                    web_url=f"http://127.0.0.1:{port}",
                    transactions=txs,
                    lookup_users=[user_id(i) for i in range(0, users, max(1, users // 1000))],
                    rate=rate,
                    rps=50.0,
                    duration_s=duration,
                    warmup_s=3.0,
                    work=self.work / f"steady-{phase}",
                    floor_rps=10.0,
                )
            )
            expired = (harness.worker_stats(port) or {}).get("users_expired_total", 0) - expired_before
            q = harness.quantile
            result[phase] = {
                "freshness_p50_ms": q(res.fresh_ms, 0.5),
                "freshness_p99_ms": q(res.fresh_ms, 0.99),
                "delivery_floor_p99_ms": q(res.delivery_floor_ms, 0.99),
                "users_expired": expired,
            }
            log(f"{users:,}: expiry phase {phase}: {result[phase]}")
        return result


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        "| users | fill tx/s | RSS after fill | disk after compaction | bytes/user "
        "| restore records/s | start to /ready (cold) | RSS after restore |"
    )
    lines = [f"{meta['when']} on {meta['machine']}; command: `{meta['command']}`", "", head]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f, d, rs = r["fill"], r["disk"], r["restore"]
        cells = [
            f"{r['users']:,}",
            f"{f['tx_s']:,.0f}",
            f"{f['rss_mb']:.0f} MB",
            f"{d['bytes'] / 1e6:.1f} MB",
            f"{d['bytes_per_user']:.0f}",
            f"{rs['records_s'] or 0:,.0f}",
            f"{rs['start_to_ready_s']:.1f} s",
            f"{rs['rss_mb']:.0f} MB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for r in results:
        if "takeover" in r:
            t = r["takeover"]
            lines += [
                "",
                f"Takeover at {r['users']:,} users (TABLE_STANDBY_REPLICAS=1, session timeout "
                f"{t['session_timeout_s']:.0f} s): SIGKILL to the survivor answering "
                f"{t['sampled_lookups']:,} sampled lookups over every partition in "
                f"{t['kill_to_serving_s']:.1f} s ({t['after_session_timeout_s']:.1f} s after the "
                f"session timeout); changelog records re-read: {t['records_reread']:,.0f} "
                f"(its standby copies had applied {t['standby_records_before_kill']:,.0f}).",
            ]
        if "expiry" in r:
            e = r["expiry"]
            before, during = e["before"], e["during"]
            lines += [
                "",
                f"Expiry at {r['users']:,} idle users, steady {e['rate_tx_s']:.0f} tx/s: freshness p50/p99 "
                f"{before['freshness_p50_ms']:.1f} / {before['freshness_p99_ms']:.1f} ms before, "
                f"{during['freshness_p50_ms']:.1f} / {during['freshness_p99_ms']:.1f} ms while the sweep "
                f"removed {during['users_expired']:,} users (Kafka delivery p99 "
                f"{before['delivery_floor_p99_ms']:.1f} / {during['delivery_floor_p99_ms']:.1f} ms).",
            ]
    return "\n".join(lines) + "\n"


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    series = [
        (
            "RSS (MB)",
            [[r["fill"]["rss_mb"] for r in results], [r["restore"]["rss_mb"] for r in results]],
            ["after fill", "after restore"],
        ),
        ("RocksDB on disk (MB)", [[r["disk"]["bytes"] / 1e6 for r in results]], ["after compaction"]),
        ("cold start to /ready (s)", [[r["restore"]["start_to_ready_s"] for r in results]], ["restore"]),
    ]
    for ax, (title, ys, labels) in zip(axes, series, strict=True):
        for y, label in zip(ys, labels, strict=True):
            ax.plot(users, y, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("users in state")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    ap.add_argument("--takeover-at", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="steady tx/s of the expiry phases")
    ap.add_argument("--expiry-s", type=float, default=30.0, help="seconds of each expiry phase")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=str, default=None)
    opts = ap.parse_args()
    scale = Scale(opts)
    results = []
    try:
        for n in opts.users:
            results.append(scale.run_size(n))
    finally:
        scale.stop_all()
    import platform

    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python -m bench.scale " + " ".join(f"{n}" for n in opts.users),
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "scale.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (opts.out / "scale.md").write_text(markdown(results, meta))
    chart(results, opts.out / "scale.png")
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
