"""Integration harness: real ``faust -A app worker`` subprocesses against the local Kafka.

Each test gets its own topics, app id (consumer group) and data directories,
so tests never see each other's messages or state. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", f"localhost:{os.environ.get('KAFKA_PORT', '9092')}")
FAUST = str(Path(sys.executable).with_name("faust"))
READY_TIMEOUT_S = 120.0


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``condition`` until truthy or fail after ``timeout_s`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            _dump_live_workers(what)
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


_LIVE: list[Worker] = []


def _dump_live_workers(what: str) -> None:
    """With VELOCITY_TEST_PYSPY=1 and py-spy installed: each live worker's stacks, into its log.

    For a wait that timed out: where each worker was stuck (a debugging aid, never a result).
    """
    spy = Path(sys.executable).with_name("py-spy")
    if not os.environ.get("VELOCITY_TEST_PYSPY") or not spy.exists():
        return
    for w in _LIVE:
        if w.proc is not None and w.alive():
            argv = [str(spy), "dump", "--pid", str(w.proc.pid), "--locals"]
            out = subprocess.run(argv, capture_output=True, timeout=60, check=False)
            with w.log_path.open("ab") as f:
                f.write(f"\n===== py-spy dump: timed out waiting for {what} =====\n".encode())
                f.write(out.stdout + out.stderr)
            # The stacks without locals also go to the test's report (all CI shows of a failure).
            brief = subprocess.run(argv[:-1], capture_output=True, timeout=60, check=False)
            sys.stderr.write(f"\n--- py-spy dump of worker on port {w.port} ({what}) ---\n")
            sys.stderr.write((brief.stdout + brief.stderr).decode("utf-8", "replace"))
            # mode's Worker answers SIGUSR1 with every thread's stack and every asyncio task's
            # (what a wedged coroutine waits for), on the worker's stderr: its log; its tasks
            # part goes to the report too, once the log stops growing (5 s at most).
            start = w.log_path.stat().st_size
            os.kill(w.proc.pid, signal.SIGUSR1)
            sizes = [start]
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and (
                len(sizes) < 3 or sizes[-1] != sizes[-3] or sizes[-1] == start
            ):
                time.sleep(0.25)
                sizes.append(w.log_path.stat().st_size)
            with w.log_path.open("rb") as f:
                f.seek(start)
                tasks = f.read().decode("utf-8", "replace").splitlines()
            first = next((i for i, line in enumerate(tasks) if line.startswith("Stack for <Task")), 0)
            tasks = tasks[first:]  # the service tree before it is long and says little
            sys.stderr.write(f"\n--- its asyncio tasks (SIGUSR1), {len(tasks)} lines ---\n")
            sys.stderr.write("\n".join(tasks[:600]) + "\n")


# Test traffic goes straight to the workers' addresses, never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body or raw text)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout_s) as r:
            status, head, body = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, head, body = e.code, dict(e.headers), e.read()
    try:
        return status, head, json.loads(body)
    except ValueError:
        return status, head, body.decode("utf-8", "replace")


@dataclass
class Topics:
    transactions: str
    features: str
    dlq: str
    partitions: int

    @property
    def predictions(self) -> str:
        """The test's own predictions topic (the worker creates it)."""
        return self.transactions.replace("tx-", "predictions-", 1)

    @property
    def labels(self) -> str:
        return self.transactions.replace("tx-", "labels-", 1)

    @property
    def feature_drift(self) -> str:
        return self.transactions.replace("tx-", "feature-drift-", 1)

    @property
    def pred_drift(self) -> str:
        return self.transactions.replace("tx-", "pred-drift-", 1)


@dataclass
class Worker:
    """One ``faust -A app worker`` subprocess."""

    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [FAUST, "-A", "app", "worker", "-l", "info"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.append(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        return http_get(self.url + path, headers)

    def stats(self) -> dict[str, Any]:
        """This worker's own ``/stats`` (``scope=worker``)."""
        status, _, body = self.get("/stats?scope=worker")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def ready_body(self) -> dict[str, Any] | None:
        if not self.alive():
            raise AssertionError(f"worker exited ({self.proc and self.proc.returncode}); log:\n{self.tail()}")
        try:
            status, _, body = self.get("/ready")
        except OSError:
            return None
        return body if status == 200 else None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        return wait_for(self.ready_body, timeout_s, f"worker on port {self.port} to be ready")  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@pytest.fixture(scope="session")
def kafka() -> str:
    """The local broker must be up (``scripts/kafka.sh start``; ``.ci/run`` starts it)."""
    host, port = BOOTSTRAP.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {BOOTSTRAP} ({exc}); run scripts/kafka.sh start")
    return BOOTSTRAP


@pytest.fixture
def topics(kafka: str) -> Topics:
    tag = uuid.uuid4().hex[:10]
    t = Topics(f"tx-{tag}", f"features-{tag}", f"dlq-{tag}", partitions=4)
    asyncio.run(create_topics([t.transactions, t.features, t.dlq, t.predictions], t.partitions))
    return t


async def create_topics(names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


@pytest.fixture
def spawn(
    kafka: str, topics: Topics, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Worker]]:
    """``spawn(**env_overrides)`` starts a worker of this test's app; all are stopped after."""
    app_id = f"velocity-it-{uuid.uuid4().hex[:8]}"
    workers: list[Worker] = []

    def _spawn(**overrides: str) -> Worker:
        n = len(workers)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_"))}
        env.update(
            BROKER_URL=f"kafka://{kafka}",
            APP_ID=app_id,
            APP_STORE="rocksdb://",
            APP_DATADIR=str(tmp_path / f"worker-{n}"),
            WEB_PORT=str(port),
            WEB_BIND="127.0.0.1",
            WEB_HOST="127.0.0.1",
            TOPIC_PARTITIONS=str(topics.partitions),
            TRANSACTIONS_TOPIC=topics.transactions,
            FEATURES_TOPIC=topics.features,
            DLQ_TOPIC=topics.dlq,
            PREDICTIONS_TOPIC=topics.predictions,
            LABELS_TOPIC=topics.labels,
            FEATURE_DRIFT_TOPIC=topics.feature_drift,
            PRED_DRIFT_TOPIC=topics.pred_drift,
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        worker = Worker(env, tmp_path / f"worker-{n}.log", int(env["WEB_PORT"]))
        workers.append(worker)
        return worker.start()

    yield _spawn
    for w in workers:
        w.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for w in workers:
            sys.stderr.write(f"\n--- log of worker on port {w.port} ---\n{w.tail()}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int


async def produce(messages: list[tuple[bytes | None, bytes, int | None]], topic: str) -> list[Sent]:
    """Send ``(key, value, partition)`` in order; returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        out = []
        for key, value, partition in messages:
            meta = await producer.send_and_wait(topic, value=value, key=key, partition=partition)
            out.append(Sent(meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def produce_many(messages: list[tuple[bytes | None, bytes, int | None]], topic: str) -> None:
    """Send ``(key, value, partition)`` in order, batched (for volume; where each landed is not kept)."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=20)
    await producer.start()
    try:
        for key, value, partition in messages:
            await producer.send(topic, value=value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning, keeping every message (key, value as JSON)."""

    def __init__(
        self, topic: str, isolation_level: str = "read_uncommitted", bootstrap: str = BOOTSTRAP
    ) -> None:
        self.topic = topic
        self.isolation_level = isolation_level
        self.bootstrap = bootstrap
        self.messages: list[tuple[bytes | None, dict[str, Any], int]] = []
        self.raw_values: list[bytes] = []  # the same messages' values as received
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            isolation_level=self.isolation_level,
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def until(
        self,
        condition: Callable[[list[tuple[bytes | None, dict[str, Any], int]]], bool],
        timeout_s: float,
        what: str,
    ) -> list[tuple[bytes | None, dict[str, Any], int]]:
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while not condition(self.messages):
            if time.monotonic() > deadline:
                _dump_live_workers(what)
                raise AssertionError(
                    f"timed out after {timeout_s:.0f}s waiting for {what} on {self.topic} "
                    f"(have {len(self.messages)} messages)"
                )
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    self.messages.append((r.key, json.loads(r.value), r.partition))
                    self.raw_values.append(r.value)
        return self.messages

    async def until_end(self, timeout_s: float) -> list[tuple[bytes | None, dict[str, Any], int]]:
        """Read up to the topic's end as of now (for read_committed: its last stable offsets)."""
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p) for p in self._consumer.partitions_for_topic(self.topic) or ()]
        assert tps, f"no partitions known for {self.topic}"
        ends = await self._consumer.end_offsets(tps)

        deadline = time.monotonic() + timeout_s
        while True:
            positions = {tp: await self._consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                return self.messages
            if time.monotonic() > deadline:
                _dump_live_workers(f"{self.topic} to its end")
                raise AssertionError(f"timed out reading {self.topic} to {ends} (at {positions})")
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    self.messages.append((r.key, json.loads(r.value), r.partition))
                    self.raw_values.append(r.value)


@pytest.fixture
async def readers(topics: Topics) -> AsyncIterator[tuple[TopicReader, TopicReader]]:
    async with TopicReader(topics.features) as features, TopicReader(topics.dlq) as dlq:
        yield features, dlq


W = TypeVar("W", bound=Worker)


def assignment(workers: list[W], partitions: int, every_worker_owns: bool = False) -> dict[int, W] | None:
    """partition -> its one owner, once every partition has exactly one (and, if asked, every worker some)."""
    owners: dict[int, W] = {}
    for w in workers:
        body = w.ready_body()
        if body is None or (every_worker_owns and not body["partitions"]):
            return None
        for p in body["partitions"]:
            if p in owners:
                return None  # still settling
            owners[p] = w
    return owners if sorted(owners) == list(range(partitions)) else None


async def send_paced(
    messages: list[Any], topic: str, rate_per_s: float, sent: list[int], bootstrap: str = BOOTSTRAP
) -> None:
    """Send ``messages`` (with key, value, partition) at a steady rate; ``sent[0]`` counts them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for i, m in enumerate(messages):
            await producer.send(topic, value=m.value, key=m.key, partition=m.partition)
            sent[0] = i + 1
            delay = started + (i + 1) / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()
