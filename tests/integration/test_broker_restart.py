"""The broker is stopped and started again (same data directory) under traffic: nothing is lost."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import REPO, TopicReader, Worker, assignment, wait_for
from tests.integration.streams import replay
from tests.integration.test_failover import assert_single_pass, traffic
from tests.oracle import assert_record_matches
from tests.ports import free_port

pytestmark = pytest.mark.integration

PARTITIONS = 4


class Broker:
    """A broker of this test's own (scripts/kafka.sh on another port and data directory)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port(consecutive=2)  # kafka.sh's controller listens on KAFKA_PORT + 1
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_DATA_DIR": str(tmp / "kafka")}

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def run(self, action: str) -> None:
        subprocess.run([str(REPO / "scripts" / "kafka.sh"), action], env=self.env, check=True, timeout=180)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.run("start")
    try:
        yield b
    finally:
        b.run("stop")


def answered(worker: Worker, user: str) -> tuple[int, dict[str, str], Any] | None:
    """The worker's answer for the user, unless it is a 503 (rebalancing)."""
    answer = worker.get("/features/" + urllib.parse.quote(user))
    return None if answer[0] == 503 else answer


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_broker_restart_under_traffic_loses_nothing(broker: Broker, spawn: Any, guarantee: str) -> None:
    """Workers reconnect by themselves; under exactly_once a read_committed reader sees one pass."""
    tag = os.urandom(4).hex()
    names = {
        "TRANSACTIONS_TOPIC": f"br-tx-{tag}",
        "FEATURES_TOPIC": f"br-f-{tag}",
        "DLQ_TOPIC": f"br-d-{tag}",
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names.values()])
    await admin.close()
    env = {
        "BROKER_URL": f"kafka://{broker.bootstrap}",
        "TOPIC_PARTITIONS": str(PARTITIONS),
        "PROCESSING_GUARANTEE": guarantee,
        **names,
    }
    workers: list[Worker] = [spawn(**env), spawn(**env)]
    wait_for(lambda: assignment(workers, PARTITIONS), 180, "partitions over two workers")

    stream = traffic(PARTITIONS, seed=99)
    oracle, accepted = replay(stream)

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    half = len(stream.messages) // 2
    for m in stream.messages[:half]:
        await producer.send(names["TRANSACTIONS_TOPIC"], value=m.value, key=m.key, partition=m.partition)
    await producer.flush()
    await producer.stop()

    await asyncio.to_thread(broker.run, "stop")
    await asyncio.to_thread(broker.run, "start")

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    for m in stream.messages[half:]:
        await producer.send(names["TRANSACTIONS_TOPIC"], value=m.value, key=m.key, partition=m.partition)
    await producer.flush()
    await producer.stop()

    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    async with TopicReader(names["FEATURES_TOPIC"], isolation, bootstrap=broker.bootstrap) as features:
        await features.until(
            lambda ms: {v["transaction_id"] for _, v, _ in ms} >= accepted,
            240,
            "a feature record for every accepted transaction after the broker restart",
        )
        if guarantee == "exactly_once":
            assert_single_pass(await features.until_end(60), stream, accepted)
    assert all(w.alive() for w in workers), "workers reconnect by themselves"
    wait_for(lambda: assignment(workers, PARTITIONS), 180, "workers ready again")
    for user in sorted({m.user for m in stream.messages if m.user}):
        want_status, want = oracle.lookup(user)
        for w in workers:
            status, _, body = wait_for(
                functools.partial(answered, w, user),
                60,
                "an answer that is not 503",
            )
            assert status == want_status == 200, (w.url, user, body)
            assert want is not None
            assert_record_matches(body, want)
