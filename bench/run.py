"""The benchmark suite: Velocity against the designs people would pick instead, in one run.

    make bench          # full: 100,000 users, 300,000 transactions (takes a while)
    make bench-quick    # the same scenarios on a smaller stream, under 5 minutes
    .venv/bin/python -m bench.run --only NAME [NAME ...] [options]   # some scenarios

Needs the local Kafka (scripts/kafka.sh start) and, for the Redis design,
``redis-server`` on the PATH. Writes ``bench/results/latest.json``,
``bench/results/latest.md`` and ``bench/results/throughput.png`` (or the
directory given by ``--out``). The workers are ``faust -A app worker``
subprocesses; the harness talks to them over HTTP and Kafka only.

Scenarios (``--only`` names), in order, one process at a time on the same machine:

1. Throughput (``velocity``, ``faust_passthrough``, ``seed_faust_hopping``,
   ``seed_redis``, ``quix_streams``, ``aiokafka_raw_consume``): the same
   pre-filled topic (every user once, then Zipf-like traffic) consumed from
   the start by each design in turn: Velocity (one worker, shipped settings,
   at-least-once), a Faust pass-through agent, the seed's Faust
   hopping-window design, the seed's Redis sorted-set design, Quix Streams
   sliding windows, and a raw aiokafka consumer. Rate = output records/s
   from the first output record to the last (start-up excluded); a design
   that does not finish within its time limit is reported at the rate it had.
2. ``steady``, freshness and lookups: the caught-up Velocity worker gets
   ``--rate`` transactions/s and ``--rps`` lookups/s (bench/steady.py).
3. ``recovery``: a cold Velocity worker (same app id, empty data dir)
   restores the table from the changelog (records restored of the
   changelog's, records/s, start to /ready, its RSS); then the first worker
   restarts on its old data dir (warm: records replayed, start to /ready).
4. ``heavy``: Velocity on the same stream with one user carrying 20,000
   transactions in 24 h mixed in; its rate over the uniform rate.
5. ``exactly_once``: Velocity's catch-up on the same stream with
   PROCESSING_GUARANTEE=exactly_once (in the details, and the Markdown).
   ``two_workers``: two workers of one app started together on the same
   stream (this machine has 2 cores); their rate over one worker's.
6. ``rocksdb_bindings``: rocksdict against python-rocksdb on the table's
   workload, in a venv of its own (bench/rocksdb_env.py); skipped, with the
   reason, when that venv cannot be built.

Only when named in ``--only``:

* ``catchup``: one Velocity worker's catch-up with
  PROCESSING_GUARANTEE=``--guarantee`` (a full run measures both guarantees
  as ``velocity`` and ``exactly_once``), with its start-up time, overall
  rate and dead letters.
* ``rolling_restart``: two Velocity workers under ``--rolling-rate`` tx/s
  of simulated traffic (``faust -A app simulate``), restarted one after the
  other on their data dirs, with dynamic and with static membership
  (CONSUMER_GROUP_INSTANCE_ID; ``--membership`` picks): the longest gap
  between consecutive feature records of one partition (the processing
  pause) and the group joins the workers logged.

``--users`` and ``--messages`` override the size's stream, e.g. recovery
for 100,000 users with one transaction each:
``--only recovery --users 100000 --messages 100000``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from bench import harness
from bench.harness import FAUST, PARTITIONS, PYTHON, VELOCITY_WORKER, Guarantee, Proc, StreamSpec, free_port

RESULTS = Path(__file__).resolve().parent / "results"
DESIGNS = [
    "velocity",
    "faust_passthrough",
    "seed_faust_hopping",
    "seed_redis",
    "quix_streams",
    "aiokafka_raw_consume",
]
# Every scenario, in the order a run takes them; the value is its --help line.
SCENARIOS = {
    "velocity": "Velocity's catch-up on the pre-filled stream (one worker, at-least-once)",
    "steady": "freshness and lookups of the caught-up worker at --rate tx/s and --rps req/s",
    "recovery": "cold and warm restart of that worker: records restored, records/s, seconds to /ready",
    "heavy": "catch-up with one heavy user mixed in, over the uniform rate",
    "exactly_once": "catch-up under PROCESSING_GUARANTEE=exactly_once",
    "scoring_off": "catch-up with SCORING=off (the velocity scenario scores every record)",
    "label_log_off": "catch-up with LABEL_WAIT_S=0: scoring, no prediction log for the label join",
    "sasl_ssl": "catch-up by a worker connected over TLS + SCRAM (the local broker's SASL_SSL listener)",
    "two_workers": "catch-up by two workers of one app (same stream), over one worker's",
    "catchup": "(only with --only) one worker's catch-up with PROCESSING_GUARANTEE=--guarantee",
    "faust_passthrough": "a Faust agent that decodes and forwards (the floor of Faust)",
    "rounds": "Velocity's catch-up and the Faust pass-through again, alternating: the ratio per round",
    "seed_faust_hopping": "the seed's Faust hopping-window design",
    "seed_redis": "the seed's Redis sorted-set design (needs redis-server)",
    "quix_streams": "Quix Streams sliding windows",
    "aiokafka_raw_consume": "a raw aiokafka consumer (the ceiling)",
    "rolling_restart": "(only with --only) two workers restarted in turn under traffic: the longest pause",
    "rocksdb_bindings": "rocksdict vs python-rocksdb, in a venv of its own (bench/rocksdb_env.py)",
}
# Run only when named in --only: catchup is what velocity + exactly_once measure in a full run;
# rolling_restart starts two more workers and restarts them (about a minute at any size), which
# would not fit bench-quick's 5 minutes.
ONLY_WITH_ONLY = {"catchup", "rolling_restart"}
NEEDS_VELOCITY = {
    "sasl_ssl",
    "steady",
    "recovery",
    "heavy",
    "exactly_once",
    "scoring_off",
    "label_log_off",
    "two_workers",
}
NEEDS_STREAM = set(SCENARIOS) - {"rolling_restart", "rocksdb_bindings"}
Membership = Literal["dynamic", "static"]

#: Records of the throwaway catch-up that warms the broker up before the first measured run.
WARMUP_RECORDS = 60_000
READY_TIMEOUT_S = 180.0  # a worker's start to /ready, nothing to restore
RESTORE_TIMEOUT_S = 1800.0  # the same with a whole table to restore (full size)


@dataclass(frozen=True)
class Size:
    users: int
    messages: int
    heavy_user_tx: int
    design_timeout_s: float
    steady_s: float
    warmup_s: float
    #: More pairs of Velocity's catch-up and the Faust pass-through, back to back (the rounds scenario).
    rounds: int = 1


SIZES = {
    "full": Size(
        users=100_000,
        messages=300_000,
        heavy_user_tx=20_000,
        design_timeout_s=300,
        steady_s=60,
        warmup_s=10,
        rounds=2,
    ),
    "quick": Size(
        users=10_000, messages=30_000, heavy_user_tx=20_000, design_timeout_s=35, steady_s=15, warmup_s=3
    ),
    # CI: only that the harness works end to end.
    "smoke": Size(users=300, messages=1_500, heavy_user_tx=500, design_timeout_s=120, steady_s=6, warmup_s=1),
}


@dataclass(frozen=True)
class Options:
    rate: float = 2000.0
    rps: float = 200.0
    only: tuple[str, ...] = ()
    guarantee: Guarantee = "at_least_once"
    rolling_rate: float = 200.0
    membership: tuple[Membership, ...] = ("dynamic", "static")
    # A diagnostic, never the default: Velocity's workers run under ``nice -n worker_nice`` (a
    # negative value needs root), standing in for a worker with a CPU of its own.
    worker_nice: int = 0


def selected(only: tuple[str, ...]) -> list[str]:
    """The scenarios to run, in order: all but the --only ones by default, with what they need."""
    wanted = set(only) if only else set(SCENARIOS) - ONLY_WITH_ONLY
    if wanted & NEEDS_VELOCITY:
        wanted.add("velocity")
    return [name for name in SCENARIOS if name in wanted]


class Run:
    def __init__(self, size: Size, work: Path, opts: Options) -> None:
        self.size = size
        self.work = work
        self.opts = opts
        self.rate = opts.rate
        self.rps = opts.rps
        self.scenarios = selected(opts.only)
        self.tag = uuid.uuid4().hex[:8]
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}
        self.throughput: dict[str, float | None] = dict.fromkeys(DESIGNS)
        self.procs: list[Proc] = []
        self.input = f"bench-in-{self.tag}"
        self.heavy_input = f"bench-heavy-{self.tag}"
        self.stream: list[tuple[bytes, bytes]] = []
        self.heavy_count = 0
        # The at-least-once worker of the "velocity" scenario, which steady and recovery go on with.
        self.velocity_app = f"bench-velocity-{self.tag}"
        self.velocity_out = f"bench-out-velocity-{self.tag}"
        self.velocity_port = 0  # picked when it starts
        self.velocity_proc: Proc | None = None

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def note(self, msg: str) -> None:
        self.log("note: " + msg)
        self.notes.append(msg)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        if self.opts.worker_nice and argv == VELOCITY_WORKER:
            argv = ["nice", "-n", str(self.opts.worker_nice), *argv]
        proc = Proc.start(name, argv, env, self.work / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop(timeout=30)

    # ------------------------------------------------------------------ stream

    def prepare(self) -> None:
        if not NEEDS_STREAM & set(self.scenarios):
            return
        s = self.size
        t0 = time.monotonic()
        self.stream = harness.generate(StreamSpec(s.users, s.messages), run_id=f"b{self.tag}")
        asyncio.run(harness.create_topics([self.input]))
        asyncio.run(harness.prefill(self.input, self.stream))
        if "heavy" in self.scenarios:
            heavy = harness.generate(
                StreamSpec(s.users, s.messages + s.heavy_user_tx, s.heavy_user_tx), run_id=f"h{self.tag}"
            )
            asyncio.run(harness.create_topics([self.heavy_input]))
            asyncio.run(harness.prefill(self.heavy_input, heavy))
            self.heavy_count = len(heavy)
        self.log(
            f"pre-filled {len(self.stream):,} transactions of {s.users:,} users "
            f"(+{self.heavy_count:,} with a heavy user) in {time.monotonic() - t0:.1f}s"
        )

    def warm_up(self) -> None:
        """A throwaway catch-up of the stream's first WARMUP_RECORDS before the first measured run.

        The first catch-up after the broker starts was the slowest of every
        full run of 2026-12-03 (8,086 tx/s, then 11,470-15,512 for the
        scenarios after it; three ``--only velocity`` runs right after a
        broker reset: 10,068, 11,538, 13,306): the broker is a JVM, and
        its code warms up on the first traffic. Its rate is in the details.
        """
        self.log("--- warm-up (not measured)")
        proc, _ = self.catchup_worker(
            "warmup",
            f"bench-warmup-{self.tag}",
            self.input,
            f"bench-out-warmup-{self.tag}",
            min(WARMUP_RECORDS, len(self.stream)),
            "at_least_once",
        )
        proc.stop()

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
        first = progress.first_output_s()
        last = progress.samples[-1][0] if progress.samples else None
        self.details[name] = {
            "records": progress.done,
            "expected": expected,
            "timed_out": progress.timed_out,
            "tx_s": rate,
            "start_to_first_output_s": None if first is None else first - proc.started,
            "overall_tx_s": None if last is None else progress.done / max(last - proc.started, 1e-9),
            "rss_mb": proc.rss_mb(),
            "nice": proc.nice(),
        }
        if progress.timed_out:
            self.note(
                f"{name}: {progress.done:,} of {expected:,} records within the time limit; "
                f"its rate is over that part"
            )
        self.log(f"{name}: {progress.done:,} records, {rate or 0:,.0f} tx/s")
        return rate

    def catchup_worker(
        self,
        name: str,
        app_id: str,
        input_topic: str,
        output: str,
        expected: int,
        guarantee: Guarantee,
        port: int | None = None,
        **extra_env: str,
    ) -> tuple[Proc, float | None]:
        """One Velocity worker (new app id, empty data dir) catching up on ``input_topic``; left running."""
        port = free_port() if port is None else port
        env = harness.velocity_env(app_id, input_topic, output, self.work / name, port, guarantee)
        env.update(extra_env)
        proc = self.start(name, VELOCITY_WORKER, env)
        return proc, self.measure(name, proc, output, expected)

    # ------------------------------------------------------------------ designs

    def velocity(self) -> None:
        self.velocity_port = free_port()
        self.velocity_proc, self.throughput["velocity"] = self.catchup_worker(
            "velocity",
            self.velocity_app,
            self.input,
            self.velocity_out,
            len(self.stream),
            "at_least_once",
            self.velocity_port,
        )

    def faust_design(self, name: str, module: str) -> None:
        self.throughput[name] = self.design_rate(name, module)

    def design_rate(self, name: str, module: str) -> float | None:
        """One run of a Faust design (``bench/designs/<module>.py``) on the stream: its rate."""
        from importlib import import_module

        mod = import_module(f"bench.designs.{module}")
        output = f"bench-out-{name}-{self.tag}"
        proc = self.start(name, mod.command(FAUST), self.bench_env(name, output))
        try:
            return self.measure(name, proc, output, len(self.stream))
        finally:
            proc.stop()

    def rounds(self) -> None:
        """Velocity's catch-up (at-least-once, then exactly-once) and the Faust pass-through, back to back.

        The designs' first runs are minutes apart (the Velocity scenarios run
        in between), and this machine's speed drifts that much: runs one
        after the other price Velocity against Faust, and exactly-once
        against at-least-once, at one moment. ``size.rounds`` rounds; each
        round's ratios are reported (Faust's with the first pair's, from the
        velocity and faust_passthrough scenarios); the medians are the
        figures to quote.
        """
        pairs: list[dict[str, Any]] = []
        first_v, first_f = self.throughput.get("velocity"), self.throughput.get("faust_passthrough")
        if first_v and first_f:
            pairs.append({"velocity": first_v, "faust_passthrough": first_f, "ratio": first_v / first_f})
        guarantees: list[dict[str, Any]] = []
        for i in range(1, self.size.rounds + 1):
            v = self.catchup_rate(f"round{i}_velocity", f"round{i}", "at_least_once")
            eos = self.catchup_rate(f"round{i}_exactly_once", f"round{i}-eos", "exactly_once")
            f = self.design_rate(f"round{i}_faust_passthrough", "faust_passthrough")
            pairs.append({"velocity": v, "faust_passthrough": f, "ratio": v / f if v and f else None})
            guarantees.append(
                {"at_least_once": v, "exactly_once": eos, "ratio": eos / v if v and eos else None}
            )
        ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
        rates = [p["velocity"] for p in pairs if p["velocity"]]
        eos_ratios = [g["ratio"] for g in guarantees if g["ratio"] is not None]
        self.details["rounds"] = {
            "pairs": pairs,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "velocity_median_tx_s": statistics.median(rates) if rates else None,
            "guarantees": guarantees,
            "exactly_once_median_ratio": statistics.median(eos_ratios) if eos_ratios else None,
        }
        self.log(f"rounds: {self.details['rounds']}")

    def catchup_rate(self, name: str, tag: str, guarantee: Guarantee) -> float | None:
        """One more catch-up of a fresh Velocity app on the input stream: its rate (the worker stopped)."""
        proc, rate = self.catchup_worker(
            name,
            f"bench-{tag}-{self.tag}",
            self.input,
            f"bench-out-{tag}-{self.tag}",
            len(self.stream),
            guarantee,
        )
        proc.stop()
        return rate

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
                work=self.work / name,
                floor_rps=max(1.0, self.rps / 4),
                worker_pid=None if self.velocity_proc is None else self.velocity_proc.popen.pid,
            )
        )
        q = harness.quantile
        floor_kafka, floor_http = res.delivery_floor_ms, res.http_floor_ms
        floor_machine = res.machine_floor_ms
        fresh = {"rate_tx_s": rate, "p50": q(res.fresh_ms, 0.5), "p99": q(res.fresh_ms, 0.99)}
        lookup = {"rps": self.rps, "p50": q(res.lookup_ms, 0.5), "p99": q(res.lookup_ms, 0.99)}
        self.details[name] = {
            "freshness_ms": fresh,
            "lookup_ms": lookup,
            # The floors, measured at the same time: Kafka's delivery to a plain consumer of the
            # input, GET /health on the same worker, and GET /health on an idle aiohttp server in
            # a process of its own (this machine's floor of any Python HTTP answer under this load).
            "delivery_floor_ms": {"p50": q(floor_kafka, 0.5), "p99": q(floor_kafka, 0.99)},
            "http_floor_ms": {"p50": q(floor_http, 0.5), "p99": q(floor_http, 0.99)},
            "machine_http_floor_ms": {"p50": q(floor_machine, 0.5), "p99": q(floor_machine, 0.99)},
            # The worker's main thread meanwhile: its CPU, and the time it could run but had no CPU.
            "worker_sched": res.worker_sched,
            "sent": res.sent,
            "records_timed": len(res.fresh_ms),
            "records_missing": res.missing_records,
            "freshness_max_ms": max(res.fresh_ms, default=None),
            "lookups_timed": len(res.lookup_ms),
            "lookup_status": {str(k): v for k, v in res.lookup_status.items()},
            "lookup_max_ms": max(res.lookup_ms, default=None),
            # GET /features?user_id=... with 50 users (5 a second), answered by their owners.
            "batch50_ms": {
                "p50": q(res.batch_ms, 0.5),
                "p99": q(res.batch_ms, 0.99),
                "timed": len(res.batch_ms),
            },
            "batch50_status": {str(k): v for k, v in res.batch_status.items()},
        }
        self.log(f"{name}: {self.details[name]}")
        if res.missing_records:
            self.note(
                f"{name}: {res.missing_records} records sent after the warm-up came back too late to time"
            )
        if set(res.lookup_status) - {"200"}:
            self.note(f"{name}: lookup statuses {res.lookup_status}")
        return {"freshness_ms": fresh, "lookup_ms": lookup}

    def recovery(self) -> dict[str, Any]:
        """Cold restart (empty data dir, the whole changelog), then warm (the first worker's data dir)."""
        assert self.velocity_proc is not None, "recovery goes on from the velocity scenario"
        self.velocity_proc.stop()
        changelog = asyncio.run(harness.changelog_records(self.velocity_app))
        cold = self._restart("velocity-cold", self.work / "velocity-cold", RESTORE_TIMEOUT_S)
        warm = self._restart("velocity-warm", self.work / "velocity", RESTORE_TIMEOUT_S)
        rec = cold["last_recovery"] or {}
        self.details["recovery"] = {
            "changelog_records": changelog,
            "last_recovery": rec,
            "users": cold["users"],
            "rss_mb": cold["rss_mb"],
            "startup_to_ready_s": cold["startup_to_ready_s"],
            "warm": warm,
        }
        self.log(
            f"recovery: cold restored {rec.get('records')} of {changelog} changelog records "
            f"({rec.get('records_per_s') or 0:,.0f} records/s), users {cold['users']}, "
            f"ready after {cold['startup_to_ready_s']:.1f}s, RSS {cold['rss_mb']} MB; "
            f"warm replayed {(warm['last_recovery'] or {}).get('records', 0)} records, "
            f"ready after {warm['startup_to_ready_s']:.1f}s"
        )
        if self.size.users != 100_000:
            self.note(
                f"recovery, time to ready and RSS are for {cold['users']} users (this size), "
                f"not 100,000: run `make bench`"
            )
        return {
            "recovery_records_s": rec.get("records_per_s"),
            "time_to_ready_s": cold["startup_to_ready_s"],
            "rss_mb_100k_users": cold["rss_mb"],
        }

    def _restart(self, name: str, datadir: Path, timeout: float) -> dict[str, Any]:
        """The velocity scenario's app on ``datadir`` until its first /ready: what it restored, how fast."""
        port = free_port()
        env = harness.velocity_env(self.velocity_app, self.input, self.velocity_out, datadir, port)
        proc = self.start(name, VELOCITY_WORKER, env)
        try:
            stats = harness.wait_started(port, proc, timeout)
            rss = proc.rss_mb()
        finally:
            proc.stop()
        return {
            "last_recovery": stats.get("last_recovery"),
            "users": stats.get("users"),
            "startup_to_ready_s": stats["startup_to_ready_s"],
            "rss_mb": rss,
        }

    def heavy(self) -> float | None:
        proc, rate = self.catchup_worker(
            "velocity_heavy_user",
            f"bench-heavy-{self.tag}",
            self.heavy_input,
            f"bench-out-heavy-{self.tag}",
            self.heavy_count,
            "at_least_once",
        )
        proc.stop()
        uniform = self.throughput["velocity"]
        return None if not rate or not uniform else rate / uniform

    def exactly_once(self) -> None:
        """Velocity's catch-up under PROCESSING_GUARANTEE=exactly_once, on the same stream."""
        proc, rate = self.catchup_worker(
            "velocity_exactly_once",
            f"bench-eos-{self.tag}",
            self.input,
            f"bench-out-eos-{self.tag}",
            len(self.stream),
            "exactly_once",
        )
        proc.stop()
        uniform = self.throughput["velocity"]
        if rate and uniform:
            self.details["velocity_exactly_once"]["vs_at_least_once"] = rate / uniform
        self.note(
            "velocity_exactly_once: the output's end offsets include transaction markers, "
            "so its rate is slightly high"
        )

    def scoring_off(self) -> None:
        """Velocity's catch-up with SCORING=off, on the same stream: what scoring costs the hot path."""
        proc, rate = self.catchup_worker(
            "velocity_scoring_off",
            f"bench-noscore-{self.tag}",
            self.input,
            f"bench-out-noscore-{self.tag}",
            len(self.stream),
            "at_least_once",
            SCORING="off",
        )
        proc.stop()
        scored = self.throughput["velocity"]
        if rate and scored:
            self.details["velocity_scoring_off"]["scoring_on_vs_off"] = scored / rate

    def label_log_off(self) -> None:
        """Velocity's catch-up with LABEL_WAIT_S=0 (scoring on, no prediction log): what the log costs."""
        proc, rate = self.catchup_worker(
            "velocity_label_log_off",
            f"bench-nolog-{self.tag}",
            self.input,
            f"bench-out-nolog-{self.tag}",
            len(self.stream),
            "at_least_once",
            LABEL_WAIT_S="0",
        )
        proc.stop()
        logged = self.throughput["velocity"]
        if rate and logged:
            self.details["velocity_label_log_off"]["label_log_on_vs_off"] = logged / rate

    def sasl_ssl(self) -> None:
        """The same catch-up by a worker connected over SASL_SSL (SCRAM-SHA-512): what TLS costs."""
        tls = harness.broker_tls_env()
        if tls is None:
            self.details["velocity_sasl_ssl"] = {
                "skipped": "the local broker has no SASL_SSL listener (make kafka)"
            }
            self.note(
                "sasl_ssl: skipped: the local broker has no SASL_SSL listener (start it with make kafka)"
            )
            return
        proc, rate = self.catchup_worker(
            "velocity_sasl_ssl",
            f"bench-tls-{self.tag}",
            self.input,
            f"bench-out-tls-{self.tag}",
            len(self.stream),
            "at_least_once",
            BROKER_URL=f"kafka://{tls['KAFKA_SASL_SSL_BOOTSTRAP']}",
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            KAFKA_SASL_USERNAME=tls["KAFKA_SASL_USERNAME"],
            KAFKA_SASL_PASSWORD_FILE=tls["KAFKA_SASL_PASSWORD_FILE"],
            KAFKA_SSL_CAFILE=tls["KAFKA_SSL_CAFILE"],
        )
        proc.stop()
        plain = self.throughput["velocity"]
        if rate and plain:
            self.details["velocity_sasl_ssl"]["sasl_ssl_vs_plaintext"] = rate / plain

    def two_workers(self) -> None:
        """Two workers of one new app id catch up on the same stream, started together."""
        app_id, output = f"bench-two-{self.tag}", f"bench-out-two-{self.tag}"
        procs = [
            self.start(
                f"two_workers-{n}",
                VELOCITY_WORKER,
                harness.velocity_env(
                    app_id, self.input, output, self.work / f"two_workers-{n}", free_port(), "at_least_once"
                ),
            )
            for n in (1, 2)
        ]
        try:
            rate = self.measure("two_workers", procs[0], output, len(self.stream))
        finally:
            for proc in procs:
                proc.stop()
        one = self.throughput["velocity"]
        if rate and one:
            self.details["two_workers"]["vs_one_worker"] = rate / one
        self.note("two_workers: both start together; the rate includes their first rebalance")

    def catchup(self) -> None:
        """One worker's catch-up with the chosen guarantee (the old bench/catchup.py)."""
        guarantee = self.opts.guarantee
        output = f"bench-out-catchup-{self.tag}"
        proc, _ = self.catchup_worker(
            "catchup", f"bench-catchup-{self.tag}", self.input, output, len(self.stream), guarantee
        )
        proc.stop()
        figures = self.details["catchup"]
        figures["guarantee"] = guarantee
        figures["dead_letters"] = asyncio.run(harness.end_offsets_sum(f"{output}-dlq"))
        self.log(f"catchup ({guarantee}): {figures}")
        if guarantee == "exactly_once":
            self.note(
                "catchup: the output's end offsets include transaction markers, so its rate is slightly high"
            )

    def rolling_restart(self) -> None:
        for membership in self.opts.membership:
            self.details.setdefault("rolling_restart", {})[membership] = self._rolling(membership)

    def _rolling(self, membership: Membership) -> dict[str, Any]:
        """Two workers under steady traffic; restart one, then the other; the longest processing pause."""
        tag = f"{membership}-{self.tag}"
        app_id, input_topic, output = f"bench-roll-{tag}", f"bench-roll-in-{tag}", f"bench-roll-out-{tag}"
        asyncio.run(harness.create_topics([input_topic, output]))
        ports = [free_port(), free_port()]

        def worker(i: int) -> Proc:
            env = harness.velocity_env(app_id, input_topic, output, self.work / f"roll-{tag}-w{i}", ports[i])
            if membership == "static":
                env["CONSUMER_GROUP_INSTANCE_ID"] = f"bench-{tag}-w{i}"
            return self.start(f"roll-{tag}-w{i}", VELOCITY_WORKER, env)

        def all_ready() -> bool:
            return all(harness.ready(port) for port in ports)

        def flowing(since: dict[int, int]) -> Callable[[], bool]:
            """True once every partition of the output has records past ``since`` (processing resumed)."""

            def check() -> bool:
                ends = asyncio.run(harness.end_offsets(output))
                return len(ends) == PARTITIONS and all(n > since.get(p, 0) for p, n in ends.items())

            return check

        workers = [worker(0), worker(1)]
        sim: Proc | None = None
        restarts: list[dict[str, float]] = []
        try:
            harness.wait_until(all_ready, READY_TIMEOUT_S, "both workers' /ready", workers)
            # Traffic with its own end: it stops by itself should this process die.
            argv = [FAUST, "-A", "app", "simulate", "--rate", str(self.opts.rolling_rate)]
            argv += ["--users", str(self.size.users), "--duration", "1800", "--progress-every", "600"]
            sim_dir = self.work / f"roll-{tag}-sim"
            sim_env = harness.velocity_env(app_id, input_topic, output, sim_dir, free_port())
            sim = self.start(f"roll-{tag}-traffic", argv, sim_env)
            harness.wait_until(flowing({}), READY_TIMEOUT_S, "records on every partition", [*workers, sim])
            start_ms = int(time.time() * 1000)
            for i in range(2):
                t0 = time.monotonic()
                workers[i].stop()
                stopped = time.monotonic()
                workers[i] = worker(i)  # the same data dir (and instance id): a warm restart
                harness.wait_until(all_ready, READY_TIMEOUT_S, f"/ready after restarting worker {i}", workers)
                ready = time.monotonic()
                since = asyncio.run(harness.end_offsets(output))
                what = f"records on every partition after restarting worker {i}"
                harness.wait_until(flowing(since), READY_TIMEOUT_S, what, [*workers, sim])
                restarts.append(
                    {
                        "stop_s": stopped - t0,
                        "start_to_ready_s": ready - stopped,
                        "ready_to_flowing_s": time.monotonic() - ready,
                    }
                )
            end_ms = int(time.time() * 1000)
        finally:
            if sim is not None:
                sim.stop()
            for w in workers:
                w.stop()
        pause = asyncio.run(harness.longest_pause_s(output, start_ms, end_ms, timeout=300))
        joins = sum(
            (self.work / f"roll-{tag}-w{i}.log").read_text(errors="replace").count("Joined group")
            for i in range(2)
        )
        figures = {**pause, "group_joins": joins, "rate_tx_s": self.opts.rolling_rate, "restarts": restarts}
        self.log(f"rolling restart ({membership} membership): {figures}")
        return figures

    def bindings(self) -> str:
        from bench import rocksdb_env

        n = 20_000 if self.size.users >= 10_000 else 2_000
        result = rocksdb_env.compare(n_users=n, n_ops=n * 3, restore_keys=min(100_000, n * 5))
        self.details["rocksdb_bindings"] = result
        self.log(f"rocksdb bindings: {result}")
        if "skipped" in result:
            self.note(f"rocksdb_bindings: skipped: {result['skipped']}")
        return str(result.get("faster") or "")

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
        self.log(f"scenarios: {' '.join(self.scenarios)}")
        if self.opts.worker_nice:
            self.note(
                f"Velocity's workers ran under nice -n {self.opts.worker_nice}, ahead of the broker and "
                "the load for a CPU: a diagnostic, not comparable with a default run"
            )
        self.prepare()
        if "velocity" in self.scenarios:
            self.warm_up()
        steps: dict[str, Callable[[], object]] = {
            "velocity": self.velocity,
            "steady": lambda: out.update(self.steady()),
            "recovery": lambda: out.update(self.recovery()),
            "heavy": lambda: out.update(heavy_user_ratio=self.heavy()),
            "exactly_once": self.exactly_once,
            "scoring_off": self.scoring_off,
            "label_log_off": self.label_log_off,
            "sasl_ssl": self.sasl_ssl,
            "two_workers": self.two_workers,
            "catchup": self.catchup,
            "faust_passthrough": lambda: self.faust_design("faust_passthrough", "faust_passthrough"),
            "rounds": self.rounds,
            "seed_faust_hopping": lambda: self.faust_design("seed_faust_hopping", "faust_hopping"),
            "seed_redis": self.seed_redis,
            "quix_streams": self.quix,
            "aiokafka_raw_consume": self.raw,
            "rolling_restart": self.rolling_restart,
            "rocksdb_bindings": lambda: out.update(rocksdb_binding=self.bindings()),
        }
        assert list(steps) == list(SCENARIOS)
        for name in self.scenarios:
            if name not in ("velocity", "steady", "recovery") and self.velocity_proc is not None:
                self.velocity_proc.stop()  # done with it: one process at a time
            self.log(f"--- {name}")
            try:
                steps[name]()
            except Exception as exc:  # noqa: BLE001 (one failed scenario must not lose the others' figures)
                self.note(f"{name}: failed: {type(exc).__name__}: {exc}".splitlines()[0])
        out["details"] = self.details
        return out


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """The tables of the README's *Performance* section; a partial run (--only) shows only its rows."""
    ran = set(meta["scenarios"])
    tp = result["throughput_tx_s"]
    base = tp.get("faust_passthrough")
    lines = [
        f"# Velocity benchmarks ({meta['size']})",
        "",
        f"{meta['when']} on {meta['machine']}; command: `{meta['command']}`; "
        f"{meta['users']:,} users, {meta['messages']:,} transactions.",
        "",
    ]
    if ran & set(DESIGNS):
        lines += ["| design | tx/s | vs Faust pass-through |", "|---|---:|---:|"]
        for name in DESIGNS:
            v = tp.get(name)
            ratio = f"{v / base:.2f}x" if v and base else "-"
            lines.append(f"| {name} | {'-' if v is None else f'{v:,.0f}'} | {ratio} |")
        lines.append("")

    def fmt(x: Any, unit: str = "") -> str:
        return "-" if x is None else (f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x}{unit}")

    def fmt_int(x: Any, unit: str = "") -> str:
        return "-" if x is None else f"{x:,.0f}{unit}"

    def fmt_ratio(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    def fmt_pct(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    f, lk = result["freshness_ms"], result["lookup_ms"]
    details = result.get("details", {})
    eos = details.get("velocity_exactly_once", {})
    noscore = details.get("velocity_scoring_off", {})
    nolog = details.get("velocity_label_log_off", {})
    tls = details.get("velocity_sasl_ssl", {})
    two = details.get("two_workers", {})
    warm = details.get("recovery", {}).get("warm") or {}
    replayed = (warm.get("last_recovery") or {}).get("records", 0) if warm else None
    rolling = details.get("rolling_restart", {})
    dynamic, static = rolling.get("dynamic", {}), rolling.get("static", {})
    rolling_rate = dynamic.get("rate_tx_s") or static.get("rate_tx_s")
    skipped = "skipped" in details.get("rocksdb_bindings", {})
    catchup = details.get("catchup", {})
    half = details.get("steady_half_rate", {}).get("freshness_ms", {})
    half_lk = details.get("steady_half_rate", {}).get("lookup_ms", {})
    floor_kafka = details.get("steady", {}).get("delivery_floor_ms", {})
    floor_http = details.get("steady", {}).get("http_floor_ms", {})
    floor_machine = details.get("steady", {}).get("machine_http_floor_ms", {})
    rounds = details.get("rounds", {})
    sched = details.get("steady", {}).get("worker_sched", {})
    sched_wait = sched.get("runq_wait_ms_per_100ms", {})
    batch50 = details.get("steady", {}).get("batch50_ms", {})
    rows = [  # (scenario, row)
        (
            "steady",
            f"| freshness at {f['rate_tx_s']:,.0f} tx/s, p50 / p99 | "
            f"{fmt(f['p50'], ' ms')} / {fmt(f['p99'], ' ms')} |",
        ),
        (
            "steady",
            f"| lookup at {lk['rps']:,.0f} req/s under ingest, p50 / p99 | "
            f"{fmt(lk['p50'], ' ms')} / {fmt(lk['p99'], ' ms')} |",
        ),
        (
            "steady",
            f"| batched lookup of 50 users (5 req/s) under ingest, p50 / p99 | "
            f"{fmt(batch50.get('p50'), ' ms')} / {fmt(batch50.get('p99'), ' ms')} |",
        ),
        (
            "steady",
            f"| floors at the same time: Kafka delivery to a plain consumer, p50 / p99 | "
            f"{fmt(floor_kafka.get('p50'), ' ms')} / {fmt(floor_kafka.get('p99'), ' ms')} |",
        ),
        (
            "steady",
            f"| floors at the same time: GET /health on the worker, p50 / p99 | "
            f"{fmt(floor_http.get('p50'), ' ms')} / {fmt(floor_http.get('p99'), ' ms')} |",
        ),
        (
            "steady",
            f"| floors at the same time: GET /health on an idle aiohttp server (own process), p50 / p99 | "
            f"{fmt(floor_machine.get('p50'), ' ms')} / {fmt(floor_machine.get('p99'), ' ms')} |",
        ),
        (
            "steady",
            "| the worker's main thread meanwhile: CPU used / time runnable but waiting for a CPU | "
            f"{fmt_ratio(sched.get('main_thread_cpu_cores'))} cores / "
            f"{fmt_pct(sched.get('main_thread_runq_wait_share'))} of the time |",
        ),
        (
            "steady",
            "| its wait for a CPU per 100 ms, p50 / p99 / worst (machine busy: cores) | "
            f"{fmt(sched_wait.get('p50'), ' ms')} / {fmt(sched_wait.get('p99'), ' ms')} / "
            f"{fmt(sched_wait.get('max'), ' ms')} "
            f"({fmt_ratio(sched.get('machine_busy_cores'))} of {_cpus()}) |",
        ),
        (
            "steady",
            f"| the same at {fmt_int(half.get('rate_tx_s'), ' tx/s')}: freshness p50 / p99 | "
            f"{fmt(half.get('p50'), ' ms')} / {fmt(half.get('p99'), ' ms')} |",
        ),
        (
            "steady",
            f"| the same at {fmt_int(half.get('rate_tx_s'), ' tx/s')}: lookup p50 / p99 | "
            f"{fmt(half_lk.get('p50'), ' ms')} / {fmt(half_lk.get('p99'), ' ms')} |",
        ),
        (
            "rounds",
            "| Velocity catch-up / Faust pass-through, pairs run back to back (first pair first) | "
            + ", ".join(
                f"{fmt_int(p['velocity'])} / {fmt_int(p['faust_passthrough'])} = {fmt_ratio(p['ratio'])}x"
                for p in rounds.get("pairs", [])
            )
            + f"; median {fmt_ratio(rounds.get('median_ratio'))}x |",
        ),
        (
            "rounds",
            "| Velocity catch-up exactly-once / at-least-once, run back to back | "
            + ", ".join(
                f"{fmt_int(g['exactly_once'])} / {fmt_int(g['at_least_once'])} = {fmt_ratio(g['ratio'])}"
                for g in rounds.get("guarantees", [])
            )
            + f"; median {fmt_ratio(rounds.get('exactly_once_median_ratio'))} |",
        ),
        ("recovery", f"| table recovery | {fmt_int(result['recovery_records_s'], ' records/s')} |"),
        ("recovery", f"| process start to /ready (cold) | {fmt(result['time_to_ready_s'], ' s')} |"),
        (
            "recovery",
            f"| process start to /ready (warm: old data dir) | {fmt(warm.get('startup_to_ready_s'), ' s')} "
            f"({fmt_int(replayed)} records replayed) |",
        ),
        ("recovery", f"| worker RSS with the users in state | {fmt(result['rss_mb_100k_users'], ' MB')} |"),
        ("heavy", f"| heavy-user ratio | {fmt_ratio(result['heavy_user_ratio'])} |"),
        (
            "exactly_once",
            f"| Velocity exactly-once catch-up | {fmt_int(eos.get('tx_s'), ' tx/s')} "
            f"({fmt_ratio(eos.get('vs_at_least_once'))} of at-least-once) |",
        ),
        (
            "scoring_off",
            f"| Velocity catch-up with SCORING=off | {fmt_int(noscore.get('tx_s'), ' tx/s')} "
            f"(scoring on runs at {fmt_ratio(noscore.get('scoring_on_vs_off'))} of it) |",
        ),
        (
            "label_log_off",
            "| Velocity catch-up with LABEL_WAIT_S=0 (no prediction log) | "
            f"{fmt_int(nolog.get('tx_s'), ' tx/s')} "
            f"(with the log: {fmt_ratio(nolog.get('label_log_on_vs_off'))} of it) |",
        ),
        (
            "sasl_ssl",
            "| Velocity catch-up over SASL_SSL (TLS + SCRAM-SHA-512) | "
            + (
                "skipped (no SASL_SSL listener) |"
                if "skipped" in tls
                else f"{fmt_int(tls.get('tx_s'), ' tx/s')} "
                f"({fmt_ratio(tls.get('sasl_ssl_vs_plaintext'))} of PLAINTEXT) |"
            ),
        ),
        (
            "two_workers",
            f"| two workers of one app on this machine, catch-up | {fmt_int(two.get('tx_s'), ' tx/s')} "
            f"({fmt_ratio(two.get('vs_one_worker'))} of one worker) |",
        ),
        (
            "catchup",
            f"| Velocity catch-up, {catchup.get('guarantee', '-')} | {fmt_int(catchup.get('tx_s'), ' tx/s')} "
            f"({fmt(catchup.get('start_to_first_output_s'), ' s')} from start to the first record) |",
        ),
        (
            "rolling_restart",
            f"| rolling restart of 2 workers at {fmt_int(rolling_rate)} "
            f"tx/s: longest pause, dynamic / static membership | "
            f"{fmt(dynamic.get('longest_pause_s'), ' s')} / {fmt(static.get('longest_pause_s'), ' s')} |",
        ),
        (
            "rocksdb_bindings",
            f"| faster RocksDB binding | {result['rocksdb_binding'] or ('skipped' if skipped else '-')} |",
        ),
    ]
    figures = [row for scenario, row in rows if scenario in ran]
    if figures:
        lines += ["| figure | value |", "|---|---:|", *figures, ""]
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
    ap.add_argument("--users", type=int, help="users in the pre-filled stream (default: the size's)")
    ap.add_argument(
        "--messages", type=int, help="transactions in the pre-filled stream (default: the size's)"
    )
    ap.add_argument("--rate", type=float, default=2000.0, help="steady transactions/s (freshness)")
    ap.add_argument("--rps", type=float, default=200.0, help="lookups/s while ingesting")
    ap.add_argument(
        "--only",
        nargs="+",
        default=[],
        choices=list(SCENARIOS),
        metavar="NAME",
        help="scenarios to run (default: all but catchup and rolling_restart): "
        + "; ".join(f"{name}: {what}" for name, what in SCENARIOS.items()),
    )
    ap.add_argument(
        "--guarantee",
        choices=get_args(Guarantee),
        default="at_least_once",
        help="PROCESSING_GUARANTEE of the catchup scenario",
    )
    ap.add_argument(
        "--rolling-rate", type=float, default=200.0, help="transactions/s during the rolling restart"
    )
    ap.add_argument(
        "--membership",
        nargs="+",
        choices=get_args(Membership),
        default=list(get_args(Membership)),
        help="group membership modes of the rolling restart",
    )
    ap.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        metavar="N",
        help="diagnostic: run Velocity's workers under nice -n N (e.g. -10, as root) to see what "
        "the figures are when the worker does not wait behind the broker and the load for a CPU",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, data) and the run's topics"
    )
    args = ap.parse_args()

    size = SIZES[args.size]
    size = dataclasses.replace(
        size,
        users=args.users if args.users is not None else size.users,
        messages=args.messages if args.messages is not None else size.messages,
    )
    opts = Options(
        rate=args.rate,
        rps=args.rps,
        only=tuple(args.only),
        guarantee=args.guarantee,
        rolling_rate=args.rolling_rate,
        membership=tuple(args.membership),
        worker_nice=args.worker_nice,
    )
    work = Path(tempfile.mkdtemp(prefix="velocity-bench-"))
    run = Run(size, work, opts)
    started = time.time()
    try:
        result = run.run()
    finally:
        run.stop_all()
    make_target: dict[tuple[str, ...], str] = {
        ("--size", "full"): "make bench",
        ("--size", "quick"): "make bench-quick",
    }
    meta = {
        "size": args.size,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
        "command": make_target.get(tuple(sys.argv[1:]), "python -m bench.run " + shlex.join(sys.argv[1:])),
        "scenarios": run.scenarios,
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
        try:
            deleted = asyncio.run(harness.delete_topics_with(run.tag))
            run.log(f"deleted the run's {deleted} topics (--keep keeps them)")
        except Exception as exc:  # noqa: BLE001 (the figures are written; this is housekeeping)
            run.log(f"could not delete the run's topics: {type(exc).__name__}: {exc}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
