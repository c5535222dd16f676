"""The benchmark suite: Velocity against the designs people would pick instead, in one run.

    make bench          # full: 100,000 users, 300,000 transactions (takes a while)
    make bench-quick    # the same scenarios on a smaller stream, under 5 minutes

Needs the local Kafka (scripts/kafka.sh start) and, for the Redis design,
``redis-server`` on the PATH. Writes ``bench/results/latest.json``,
``bench/results/latest.md`` and ``bench/results/throughput.png`` (or the
directory given by ``--out``).

Scenarios, in order, one process at a time on the same machine:

1. Throughput: the same pre-filled topic (every user once, then Zipf-like
   traffic) consumed from the start by each design in turn: Velocity (one
   worker, shipped settings), a Faust pass-through agent, the seed's Faust
   hopping-window design, the seed's Redis sorted-set design, Quix Streams
   sliding windows, and a raw aiokafka consumer. Rate = output records/s from
   the first output record to the last (start-up excluded); a design that
   does not finish within its time limit is reported at the rate it had.
2. Freshness and lookups: the caught-up Velocity worker gets ``--rate``
   transactions/s and ``--rps`` lookups/s (bench/steady.py).
3. Recovery: a cold Velocity worker (same app id, empty data dir) restores
   the table from the changelog; records/s, start to /ready, and its RSS.
4. Heavy user: Velocity on the same stream with one user carrying 20,000
   transactions in 24 h mixed in; its rate over the uniform rate.
5. Exactly-once: Velocity's catch-up on the same stream with
   PROCESSING_GUARANTEE=exactly_once (in the details, and the Markdown).
6. RocksDB bindings: bench/rocksdb_bindings.py on the table's workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import harness
from bench.harness import FAUST, PYTHON, Proc, StreamSpec

RESULTS = Path(__file__).resolve().parent / "results"
DESIGNS = [
    "velocity",
    "faust_passthrough",
    "seed_faust_hopping",
    "seed_redis",
    "quix_streams",
    "aiokafka_raw_consume",
]


@dataclass(frozen=True)
class Size:
    users: int
    messages: int
    heavy_user_tx: int
    design_timeout_s: float
    steady_s: float
    warmup_s: float


SIZES = {
    "full": Size(
        users=100_000, messages=300_000, heavy_user_tx=20_000, design_timeout_s=300, steady_s=60, warmup_s=10
    ),
    "quick": Size(
        users=10_000, messages=30_000, heavy_user_tx=20_000, design_timeout_s=35, steady_s=15, warmup_s=3
    ),
    # CI: only that the harness works end to end.
    "smoke": Size(users=300, messages=1_500, heavy_user_tx=500, design_timeout_s=120, steady_s=6, warmup_s=1),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    def __init__(self, size: Size, work: Path, rate: float, rps: float, only: list[str]) -> None:
        self.size = size
        self.work = work
        self.rate = rate
        self.rps = rps
        self.only = only
        self.tag = uuid.uuid4().hex[:8]
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}
        self.throughput: dict[str, float | None] = dict.fromkeys(DESIGNS)
        self.procs: list[Proc] = []

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def note(self, msg: str) -> None:
        self.log("note: " + msg)
        self.notes.append(msg)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc.start(name, argv, env, self.work / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop(timeout=30)

    # ------------------------------------------------------------------ stream

    def prepare(self) -> None:
        s = self.size
        self.input = f"bench-in-{self.tag}"
        self.heavy_input = f"bench-heavy-{self.tag}"
        t0 = time.monotonic()
        self.stream = harness.generate(StreamSpec(s.users, s.messages), run_id=f"b{self.tag}")
        heavy = harness.generate(
            StreamSpec(s.users, s.messages + s.heavy_user_tx, s.heavy_user_tx), run_id=f"h{self.tag}"
        )
        asyncio.run(harness.create_topics([self.input, self.heavy_input]))
        asyncio.run(harness.prefill(self.input, self.stream))
        asyncio.run(harness.prefill(self.heavy_input, heavy))
        self.heavy_count = len(heavy)
        self.log(
            f"pre-filled {len(self.stream):,} transactions of {s.users:,} users "
            f"(+{self.heavy_count:,} with a heavy user) in {time.monotonic() - t0:.1f}s"
        )

    def bench_env(self, name: str, output: str) -> dict[str, str]:
        env = harness.base_env()
        datadir = self.work / name
        datadir.mkdir(parents=True, exist_ok=True)
        env.update(
            BENCH_BOOTSTRAP=harness.bootstrap(),
            BENCH_INPUT=self.input,
            BENCH_OUTPUT=output,
            BENCH_GROUP=f"bench-{name}-{self.tag}",
            BENCH_DATADIR=str(datadir),
            BENCH_WEB_PORT=str(free_port()),
            BENCH_EXPECT=str(len(self.stream)),
        )
        return env

    def measure(self, name: str, proc: Proc, output: str, expected: int) -> float | None:
        # The limit counts from the process start, so a slow start-up shortens the measured part.
        progress = asyncio.run(harness.watch_output(output, expected, self.size.design_timeout_s, proc))
        rate = progress.rate()
        self.details[name] = {
            "records": progress.done,
            "expected": expected,
            "timed_out": progress.timed_out,
            "tx_s": rate,
            "rss_mb": proc.rss_mb(),
        }
        if progress.timed_out:
            self.note(
                f"{name}: {progress.done:,} of {expected:,} records within the time limit; "
                f"its rate is over that part"
            )
        self.log(f"{name}: {progress.done:,} records, {rate or 0:,.0f} tx/s")
        return rate

    # ------------------------------------------------------------------ designs

    def velocity(self) -> None:
        app_id = f"bench-velocity-{self.tag}"
        self.velocity_app = app_id
        self.velocity_out = f"bench-out-velocity-{self.tag}"
        self.velocity_port = free_port()
        self.velocity_proc = self.start(
            "velocity",
            [FAUST, "-A", "app", "worker", "-l", "info"],
            harness.velocity_env(
                app_id, self.input, self.velocity_out, self.work / "velocity", self.velocity_port
            ),
        )
        self.throughput["velocity"] = self.measure(
            "velocity", self.velocity_proc, self.velocity_out, len(self.stream)
        )

    def faust_design(self, name: str, module: str) -> None:
        from importlib import import_module

        mod = import_module(f"bench.designs.{module}")
        output = f"bench-out-{name}-{self.tag}"
        proc = self.start(name, mod.command(FAUST), self.bench_env(name, output))
        try:
            self.throughput[name] = self.measure(name, proc, output, len(self.stream))
        finally:
            proc.stop()

    def seed_redis(self) -> None:
        from bench.designs import seed_redis

        output = f"bench-out-seed_redis-{self.tag}"
        (self.work / "redis").mkdir(parents=True, exist_ok=True)
        redis_proc, port = seed_redis.start_redis(str(self.work / "redis"))
        try:
            env = self.bench_env("seed_redis", output)
            env["BENCH_REDIS_PORT"] = str(port)
            proc = self.start("seed_redis", seed_redis.command(PYTHON), env)
            try:
                self.throughput["seed_redis"] = self.measure("seed_redis", proc, output, len(self.stream))
            finally:
                proc.stop()
        finally:
            seed_redis.stop_redis(redis_proc)

    def quix(self) -> None:
        from bench.designs import quix_sliding

        output = f"bench-out-quix-{self.tag}"
        proc = self.start(
            "quix_streams", quix_sliding.command(PYTHON), self.bench_env("quix_streams", output)
        )
        try:
            self.throughput["quix_streams"] = self.measure("quix_streams", proc, output, len(self.stream))
        finally:
            proc.stop()

    def raw(self) -> None:
        from bench.designs import aiokafka_raw

        proc = self.start(
            "aiokafka_raw_consume", aiokafka_raw.command(PYTHON), self.bench_env("aiokafka_raw", "unused")
        )
        harness.wait_until(lambda: not proc.alive(), self.size.design_timeout_s + 60, "the raw consumer")
        line = next((ln for ln in reversed(proc.log.read_text().splitlines()) if ln.startswith("{")), None)
        report = json.loads(line) if line else {}
        self.details["aiokafka_raw_consume"] = report
        self.throughput["aiokafka_raw_consume"] = report.get("tx_s")
        self.log(f"aiokafka_raw_consume: {report}")

    # ------------------------------------------------------------------ velocity scenarios

    def steady(self) -> dict[str, Any]:
        figures = self._steady_at(self.rate, "steady")
        if self.rate >= 1000:
            # What the worker sustains matters too: the same at half the rate (details only).
            self._steady_at(self.rate / 2, "steady_half_rate")
        return figures

    def _steady_at(self, rate: float, name: str) -> dict[str, Any]:
        from app.simulator import TrafficConfig, TrafficModel
        from bench.steady import run_steady

        s = self.size
        model = TrafficModel(
            TrafficConfig(
                users=s.users, heavy_users=0, fraud_burst_every=0, seed=23, run_id=f"{name}{self.tag}"
            )
        )
        n = int(rate * s.steady_s) + 1
        txs = [(tx["user_id"].encode(), orjson.dumps(tx)) for tx in model.take(n, time.time())]
        users = sorted({k.decode() for k, _ in self.stream})
        lookup_users = random.Random(3).sample(users, min(1000, len(users)))
        url = f"http://127.0.0.1:{self.velocity_port}"
        res = asyncio.run(
            run_steady(
                input_topic=self.input,
                output_topic=self.velocity_out,
                web_url=url,
                transactions=txs,
                lookup_users=lookup_users,
                rate=rate,
                rps=self.rps,
                duration_s=s.steady_s,
                warmup_s=s.warmup_s,
            )
        )
        q = harness.quantile
        fresh = {"rate_tx_s": rate, "p50": q(res.fresh_ms, 0.5), "p99": q(res.fresh_ms, 0.99)}
        lookup = {"rps": self.rps, "p50": q(res.lookup_ms, 0.5), "p99": q(res.lookup_ms, 0.99)}
        self.details[name] = {
            "freshness_ms": fresh,
            "lookup_ms": lookup,
            "sent": res.sent,
            "records_timed": len(res.fresh_ms),
            "records_missing": res.missing_records,
            "freshness_max_ms": max(res.fresh_ms, default=None),
            "lookups_timed": len(res.lookup_ms),
            "lookup_status": {str(k): v for k, v in res.lookup_status.items()},
            "lookup_max_ms": max(res.lookup_ms, default=None),
        }
        self.log(f"{name}: {self.details[name]}")
        if res.missing_records:
            self.note(
                f"{name}: {res.missing_records} records sent after the warm-up came back too late to time"
            )
        if set(res.lookup_status) - {200}:
            self.note(f"{name}: lookup statuses {res.lookup_status}")
        return {"freshness_ms": fresh, "lookup_ms": lookup}

    def recovery(self) -> dict[str, Any]:
        self.velocity_proc.stop()
        port = free_port()
        cold = self.start(
            "velocity-cold",
            [FAUST, "-A", "app", "worker", "-l", "info"],
            harness.velocity_env(
                self.velocity_app, self.input, self.velocity_out, self.work / "velocity-cold", port
            ),
        )
        try:
            stats = harness.wait_until(
                lambda: (
                    (s := harness.http_json(f"http://127.0.0.1:{port}/stats?scope=worker"))
                    and s.get("startup_to_ready_s") is not None
                    and s
                ),
                1800,
                "the cold worker's /ready",
                cold,
            )
            rss = cold.rss_mb()
        finally:
            cold.stop()
        rec = stats.get("last_recovery") or {}
        self.details["recovery"] = {"last_recovery": rec, "users": stats.get("users"), "rss_mb": rss}
        self.log(
            f"recovery: {rec}, users {stats.get('users')}, ready after {stats['startup_to_ready_s']}s, "
            f"RSS {rss} MB"
        )
        if self.size.users != 100_000:
            self.note(
                f"recovery, time to ready and RSS are for {stats.get('users')} users (this size), "
                f"not 100,000: run `make bench`"
            )
        return {
            "recovery_records_s": rec.get("records_per_s"),
            "time_to_ready_s": stats["startup_to_ready_s"],
            "rss_mb_100k_users": rss,
        }

    def heavy(self) -> float | None:
        output = f"bench-out-heavy-{self.tag}"
        proc = self.start(
            "velocity-heavy",
            [FAUST, "-A", "app", "worker", "-l", "info"],
            harness.velocity_env(
                f"bench-heavy-{self.tag}", self.heavy_input, output, self.work / "heavy", free_port()
            ),
        )
        try:
            rate = self.measure("velocity_heavy_user", proc, output, self.heavy_count)
        finally:
            proc.stop()
        uniform = self.throughput["velocity"]
        return None if not rate or not uniform else rate / uniform

    def exactly_once(self) -> None:
        """Velocity's catch-up under PROCESSING_GUARANTEE=exactly_once, on the same stream."""
        output = f"bench-out-eos-{self.tag}"
        app_id = f"bench-eos-{self.tag}"
        env = harness.velocity_env(app_id, self.input, output, self.work / "eos", free_port())
        env["PROCESSING_GUARANTEE"] = "exactly_once"
        proc = self.start("velocity-exactly-once", [FAUST, "-A", "app", "worker", "-l", "info"], env)
        try:
            rate = self.measure("velocity_exactly_once", proc, output, len(self.stream))
        finally:
            proc.stop()
        uniform = self.throughput["velocity"]
        if rate and uniform:
            self.details["velocity_exactly_once"]["vs_at_least_once"] = rate / uniform
        self.note(
            "velocity_exactly_once: the output's end offsets include transaction markers, "
            "so its rate is slightly high"
        )

    def bindings(self) -> str:
        from bench import rocksdb_bindings

        n = 20_000 if self.size.users >= 10_000 else 2_000
        result = rocksdb_bindings.compare(n_users=n, n_ops=n * 3, restore_keys=min(100_000, n * 5))
        self.details["rocksdb_bindings"] = result
        self.log(f"rocksdb bindings: {result}")
        return str(result.get("faster", ""))

    # ------------------------------------------------------------------ all

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "throughput_tx_s": self.throughput,
            "heavy_user_ratio": None,
            "freshness_ms": {"rate_tx_s": self.rate, "p50": None, "p99": None},
            "lookup_ms": {"rps": self.rps, "p50": None, "p99": None},
            "recovery_records_s": None,
            "time_to_ready_s": None,
            "rss_mb_100k_users": None,
            "rocksdb_binding": "",
            "notes": self.notes,
        }
        self.prepare()
        steps: list[tuple[str, Any]] = [
            ("velocity", self.velocity),
            ("steady", lambda: out.update(self.steady())),
            ("recovery", lambda: out.update(self.recovery())),
            ("heavy", lambda: out.update(heavy_user_ratio=self.heavy())),
            ("exactly_once", self.exactly_once),
            ("faust_passthrough", lambda: self.faust_design("faust_passthrough", "faust_passthrough")),
            ("seed_faust_hopping", lambda: self.faust_design("seed_faust_hopping", "faust_hopping")),
            ("seed_redis", self.seed_redis),
            ("quix_streams", self.quix),
            ("aiokafka_raw_consume", self.raw),
            ("rocksdb_bindings", lambda: out.update(rocksdb_binding=self.bindings())),
        ]
        needs_velocity = {"steady", "recovery", "heavy", "exactly_once"}
        for name, step in steps:
            if (
                self.only
                and name not in self.only
                and not (name == "velocity" and needs_velocity & set(self.only))
            ):
                continue
            self.log(f"--- {name}")
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (one failed scenario must not lose the others' figures)
                self.note(f"{name}: failed: {type(exc).__name__}: {exc}".splitlines()[0])
        out["details"] = self.details
        return out


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    tp = result["throughput_tx_s"]
    base = tp.get("faust_passthrough")
    lines = [
        f"# Velocity benchmarks ({meta['size']})",
        "",
        f"{meta['when']} on {meta['machine']}; command: `{meta['command']}`; "
        f"{meta['users']:,} users, {meta['messages']:,} transactions.",
        "",
        "| design | tx/s | vs Faust pass-through |",
        "|---|---:|---:|",
    ]
    for name in DESIGNS:
        v = tp.get(name)
        ratio = f"{v / base:.2f}x" if v and base else "-"
        lines.append(f"| {name} | {'-' if v is None else f'{v:,.0f}'} | {ratio} |")

    def fmt(x: Any, unit: str = "") -> str:
        return "-" if x is None else (f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x}{unit}")

    def fmt_int(x: Any, unit: str = "") -> str:
        return "-" if x is None else f"{x:,.0f}{unit}"

    def fmt_ratio(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    f, lk = result["freshness_ms"], result["lookup_ms"]
    details = result.get("details", {})
    eos = details.get("velocity_exactly_once", {})
    half = details.get("steady_half_rate", {}).get("freshness_ms", {})
    half_lk = details.get("steady_half_rate", {}).get("lookup_ms", {})
    lines += [
        "",
        "| figure | value |",
        "|---|---:|",
        f"| freshness at {f['rate_tx_s']:,.0f} tx/s, p50 / p99 | "
        f"{fmt(f['p50'], ' ms')} / {fmt(f['p99'], ' ms')} |",
        f"| lookup at {lk['rps']:,.0f} req/s under ingest, p50 / p99 | "
        f"{fmt(lk['p50'], ' ms')} / {fmt(lk['p99'], ' ms')} |",
        f"| the same at {fmt_int(half.get('rate_tx_s'), ' tx/s')}: freshness p50 / p99 | "
        f"{fmt(half.get('p50'), ' ms')} / {fmt(half.get('p99'), ' ms')} |",
        f"| the same at {fmt_int(half.get('rate_tx_s'), ' tx/s')}: lookup p50 / p99 | "
        f"{fmt(half_lk.get('p50'), ' ms')} / {fmt(half_lk.get('p99'), ' ms')} |",
        f"| table recovery | {fmt_int(result['recovery_records_s'], ' records/s')} |",
        f"| process start to /ready (cold) | {fmt(result['time_to_ready_s'], ' s')} |",
        f"| worker RSS with the users in state | {fmt(result['rss_mb_100k_users'], ' MB')} |",
        f"| heavy-user ratio | {fmt_ratio(result['heavy_user_ratio'])} |",
        f"| Velocity exactly-once catch-up | {fmt_int(eos.get('tx_s'), ' tx/s')} "
        f"({fmt_ratio(eos.get('vs_at_least_once'))} of at-least-once) |",
        f"| faster RocksDB binding | {result['rocksdb_binding'] or '-'} |",
        "",
    ]
    if result["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = result["throughput_tx_s"]
    names = [n for n in DESIGNS if tp.get(n)]
    values = [tp[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh(
        names[::-1], values[::-1], color=["#2f6db5" if n == "velocity" else "#9aa5b1" for n in names[::-1]]
    )
    for bar, v in zip(bars, values[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}", va="center", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("transactions/s to catch up (log scale; one worker, one run)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="quick")
    ap.add_argument("--rate", type=float, default=2000.0, help="steady transactions/s (freshness)")
    ap.add_argument("--rps", type=float, default=200.0, help="lookups/s while ingesting")
    ap.add_argument("--only", nargs="*", default=[], help="scenario names to run (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = ap.parse_args()

    size = SIZES[args.size]
    work = Path(tempfile.mkdtemp(prefix="velocity-bench-"))
    run = Run(size, work, args.rate, args.rps, args.only)
    started = time.time()
    try:
        result = run.run()
    finally:
        run.stop_all()
    meta = {
        "size": args.size,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
        "command": "make bench" if args.size == "full" else f"make bench-{args.size}",
        "users": size.users,
        "messages": size.messages,
        "seconds": round(time.time() - started, 1),
    }
    result["meta"] = meta
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        chart(result, args.out / "throughput.png", f"Velocity vs alternatives ({args.size}, {meta['when']})")
    except Exception as exc:  # noqa: BLE001 (the figures matter more than the picture)
        run.note(f"chart: {type(exc).__name__}: {exc}")
    (args.out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "latest.md").write_text(markdown(result, meta))
    print((args.out / "latest.md").read_text())
    run.log(f"wrote {args.out}/latest.json, latest.md, throughput.png in {meta['seconds']}s; logs in {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
