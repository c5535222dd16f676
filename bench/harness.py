"""What every benchmark needs: the generated stream, topics, processes, waiting.

Used by bench/run.py, the one entry point of every scenario. Everything talks
to the local Kafka (scripts/kafka.sh start) on ``localhost:$KAFKA_PORT``
(9092 unless set), and to Velocity's workers only over HTTP, Kafka and their
process (``faust -A app worker``), never by importing the worker's modules.
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.ports import free_port as free_port  # re-exported for the bench scripts

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYTHON = str(BIN / "python")
FAUST = str(BIN / "faust")
PARTITIONS = 8
VELOCITY_WORKER = [FAUST, "-A", "app", "worker", "-l", "info"]
Guarantee = Literal["at_least_once", "exactly_once"]


def bootstrap() -> str:
    return f"localhost:{os.environ.get('KAFKA_PORT', '9092')}"


def broker_tls_env_file() -> Path:
    """Where scripts/kafka.sh lists the client settings of the local broker's SASL_SSL listener."""
    port = os.environ.get("KAFKA_PORT", "9092")
    cache = Path(os.environ.get("VELOCITY_CACHE", Path.home() / ".cache" / "velocity"))
    return Path(os.environ.get("KAFKA_DATA_DIR") or cache / f"kafka-{port}") / "tls" / "env"


def broker_tls_env() -> dict[str, str] | None:
    """What scripts/kafka.sh wrote about the local broker's SASL_SSL listener (None: it has none).

    Also the integration tests' reader (tests/integration/test_secure_kafka.py).
    """
    env_file = broker_tls_env_file()
    if not env_file.is_file():
        return None
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def kafka_options() -> dict[str, Any]:
    """The bench's own clients connect as the workers do: ``bootstrap()`` and the environment's
    KAFKA_SECURITY_PROTOCOL/SASL/SSL settings (app/kafka_security.py)."""
    from app.kafka_security import aiokafka_options
    from app.settings import load_settings

    return {"bootstrap_servers": bootstrap(), **aiokafka_options(load_settings())}


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class StreamSpec:
    """What to generate: every user once, then Zipf-like traffic, optionally one heavy user."""

    users: int
    messages: int  # in all, including the one-per-user pass and the heavy user
    heavy_user_tx: int = 0  # transactions of one extra user, spread over the same 23 hours
    seed: int = 11
    span_s: float = 23 * 3600.0  # event times run over the last 23 h, ending a minute ago


def generate(spec: StreamSpec, run_id: str) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs in production order, event times rising over ``span_s`` (2% out of order).

    Users first appear in a pass that touches every user once (so the state
    holds ``users`` users afterwards), then the simulator's Zipf-like
    traffic follows, with the heavy user's transactions spread evenly over it.
    """
    from app.simulator import TrafficConfig, TrafficModel

    model = TrafficModel(
        TrafficConfig(users=spec.users, heavy_users=0, fraud_burst_every=0, seed=spec.seed, run_id=run_id)
    )
    end = time.time() - 60.0
    start = end - spec.span_s
    regular = max(0, spec.messages - spec.heavy_user_tx)
    first_pass = min(spec.users, regular)
    out: list[dict[str, Any]] = []
    step = spec.span_s / max(1, regular)
    users = model.user_ids[: spec.users]
    for i, user in enumerate(users[:first_pass]):
        out.append(model._one(user, start + i * step))
    t = start + first_pass * step
    remaining = regular - first_pass
    while remaining > 0:
        batch = min(100, remaining)
        out.extend(model.take(batch, t))
        t += batch * step
        remaining -= batch
    if spec.heavy_user_tx:
        heavy: list[dict[str, Any]] = []
        hstep = spec.span_s / spec.heavy_user_tx
        for i in range(spec.heavy_user_tx):
            heavy.append(model._one("heavy-bench-user", start + i * hstep, ts_s=start + i * hstep))
        mixed: list[dict[str, Any]] = []
        every = max(1, len(out) // spec.heavy_user_tx)
        h = iter(heavy)
        for i, tx in enumerate(out):
            mixed.append(tx)
            if i % every == every - 1:
                nxt = next(h, None)
                if nxt is not None:
                    mixed.append(nxt)
        mixed.extend(h)
        out = mixed
    return [(tx["user_id"].encode(), orjson.dumps(tx)) for tx in out]


# --------------------------------------------------------------------------- Kafka


async def create_topics(names: Iterable[str], partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(**kafka_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def delete_topics_with(tag: str) -> int:
    """Delete every topic whose name holds ``tag`` (a run's own, internal ones included); how many.

    A full run leaves about 50 topics of 8 partitions behind; a broker that
    keeps thousands of partitions from earlier runs is slower for the next.
    """
    admin = AIOKafkaAdminClient(**kafka_options())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if tag in t]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


async def prefill(topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**kafka_options(), linger_ms=20, max_batch_size=262144)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _end_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    if not tps:
        return {}
    return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}


async def end_offsets(topic: str) -> dict[int, int]:
    """Partition -> end offset (empty if the topic does not exist yet)."""
    consumer = AIOKafkaConsumer(**kafka_options())
    await consumer.start()
    try:
        return await _end_offsets(consumer, topic)
    finally:
        await consumer.stop()


async def end_offsets_sum(topic: str) -> int:
    return sum((await end_offsets(topic)).values())


async def topics_named(prefix: str, suffix: str) -> list[str]:
    """The broker's topics whose names start with ``prefix`` and end with ``suffix``."""
    consumer = AIOKafkaConsumer(**kafka_options())
    await consumer.start()
    try:
        return sorted(t for t in await consumer.topics() if t.startswith(prefix) and t.endswith(suffix))
    finally:
        await consumer.stop()


async def changelog_records(app_id: str) -> int:
    """Records written to the changelogs of an app's tables (``<app id>-*-changelog``): their end offsets.

    Compaction may have removed some of them since; a full restore reads what is left.
    """
    total = 0
    for topic in await topics_named(f"{app_id}-", "-changelog"):
        total += await end_offsets_sum(topic)
    return total


async def longest_pause_s(topic: str, start_ms: int, end_ms: int, timeout: float) -> dict[str, Any]:
    """The longest gap between consecutive records of one partition, timestamps in [start, end].

    Reads the topic from the start up to its end offsets as they are now (so
    the read ends), within ``timeout`` seconds.
    """
    consumer = AIOKafkaConsumer(**kafka_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _end_offsets(consumer, topic)
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last: dict[int, int] = {}
        longest_ms, where, records = 0, -1, 0
        pending = {tp.partition for tp in tps}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s reading {topic}")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, batch_records in batch.items():
                for r in batch_records:
                    if not start_ms <= r.timestamp <= end_ms:
                        continue
                    records += 1
                    if tp.partition in last and r.timestamp - last[tp.partition] > longest_ms:
                        longest_ms, where = r.timestamp - last[tp.partition], tp.partition
                    last[tp.partition] = r.timestamp
            for tp in tps:
                if tp.partition in pending and await consumer.position(tp) >= ends[tp.partition]:
                    pending.discard(tp.partition)
    finally:
        await consumer.stop()
    return {"longest_pause_s": longest_ms / 1000.0, "partition": where, "records": records}


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A process we started (stopped by its PID, never by name)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)  # time.monotonic() at the start

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], log: Path) -> Proc:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
        popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return cls(name, popen, log)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def nice(self) -> int | None:
        """The process's nice value (``/proc/PID/stat``, field 19), None once it has gone."""
        try:
            stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        except OSError:
            return None
        return int(stat.rsplit(")", 1)[1].split()[16])

    def stop(self, timeout: float = 60.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_", "BENCH_"))}


def velocity_env(
    app_id: str,
    input_topic: str,
    output_topic: str,
    datadir: Path,
    port: int,
    guarantee: Guarantee = "at_least_once",
) -> dict[str, str]:
    """A worker's environment: the caller's (its tuning knobs pass through) plus the run's own."""
    env = base_env()
    env.update(
        BROKER_URL=f"kafka://{bootstrap()}",
        APP_ID=app_id,
        TRANSACTIONS_TOPIC=input_topic,
        FEATURES_TOPIC=output_topic,
        DLQ_TOPIC=f"{output_topic}-dlq",
        TOPIC_PARTITIONS=str(PARTITIONS),
        WEB_PORT=str(port),
        WEB_BIND="127.0.0.1",
        WEB_HOST="127.0.0.1",
        APP_DATADIR=str(datadir),
        PROCESSING_GUARANTEE=guarantee,
    )
    return env


def http_json(url: str, timeout: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.HTTPError):
        return None


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, proc: Proc | Iterable[Proc] | None = None
) -> Any:
    """Poll ``check`` until it returns something true; fail if a watched process exits or time runs out."""
    procs = [proc] if isinstance(proc, Proc) else list(proc or ())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(
                    f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.tail()}"
                )
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def worker_stats(port: int) -> dict[str, Any] | None:
    stats = http_json(f"http://127.0.0.1:{port}/stats?scope=worker")
    return stats if isinstance(stats, dict) else None


def wait_started(port: int, proc: Proc, timeout: float) -> dict[str, Any]:
    """Wait for a worker's first /ready; its /stats then, with ``startup_to_ready_s`` set."""

    def started() -> dict[str, Any] | None:
        stats = worker_stats(port)
        return stats if stats and stats.get("startup_to_ready_s") is not None else None

    result: dict[str, Any] = wait_until(started, timeout, f"{proc.name}'s /ready", proc)
    return result


def ready(port: int) -> bool:
    return http_status(f"http://127.0.0.1:{port}/ready") == 200


@dataclass
class Progress:
    """How an output topic filled: first record seen, and the end (or the deadline)."""

    expected: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    timed_out: bool = False

    @property
    def done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def first_output_s(self) -> float | None:
        """time.monotonic() of the first sample that saw output."""
        return next((t for t, n in self.samples if n > 0), None)

    def rate(self) -> float | None:
        """Records/s from the first sample with output to the last sample (start-up excluded)."""
        i = next((i for i, (_, n) in enumerate(self.samples) if n > 0), None)
        if i is None:
            return None
        first = self.samples[i]
        if self.done <= first[1]:
            # Everything arrived between two polls (a tiny stream): count it all from the
            # poll before, a lower bound.
            if i == 0:
                return None
            first = self.samples[i - 1]
        t_end = self.samples[-1][0]
        return (self.done - first[1]) / max(t_end - first[0], 1e-9)


async def watch_output(
    topic: str, expected: int, timeout: float, proc: Proc, poll_s: float = 0.5
) -> Progress:
    """Poll the output topic's end offsets until ``expected`` records, the deadline, or the process dies."""
    progress = Progress(expected)
    consumer = AIOKafkaConsumer(**kafka_options())
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        tps: list[TopicPartition] = []
        while True:
            if not tps:
                await consumer._client.force_metadata_update()
                tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            n = sum((await consumer.end_offsets(tps)).values()) if tps else 0
            progress.samples.append((time.monotonic(), n))
            if n >= expected:
                break
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                progress.timed_out = True
                break
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()
    return progress


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]
