"""Restarts: a worker restarted on its old APP_DATADIR replays only the changelog delta."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import BOOTSTRAP, Topics, Worker, assignment, produce, wait_for
from tests.integration.streams import Stream
from tests.oracle import Oracle, assert_record_matches

pytestmark = pytest.mark.integration


def batch(stream: Stream, partitions: int, users: int, per_user: int, start: float, tag: str) -> list[Any]:
    first = len(stream.messages)
    for k in range(per_user):
        for u in range(users):
            user = f"rs-user-{u:03d}"
            stream.add_tx(
                user,
                "direct",
                partitions,
                f"{user}-{tag}-{k}",
                start + k * 10 + u * 0.01,
                5.0 + k,
                f"m{k % 4}",
            )
    return stream.messages[first:]


def test_warm_restart_replays_only_the_delta(topics: Topics, spawn: Any) -> None:
    a = spawn()
    a.wait_ready()
    b = spawn()
    wait_for(lambda: assignment([a, b], topics.partitions), 120, "partitions split over two workers")

    stream = Stream()
    now = time.time()
    first = batch(stream, topics.partitions, users=100, per_user=10, start=now - 3000, tag="a")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in first], topics.transactions))
    wait_for(lambda: topic_records(topics.features) >= len(first), 120, "the first batch's records")

    a.stop()  # SIGTERM: clean shutdown, RocksDB closed with its offsets
    wait_for(lambda: assignment([b], topics.partitions), 120, "b owning every partition")
    second = batch(stream, topics.partitions, users=100, per_user=2, start=now - 1000, tag="b")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in second], topics.transactions))
    wait_for(lambda: topic_records(topics.features) >= len(first) + len(second), 120, "the second batch")

    again = spawn(APP_DATADIR=a.env["APP_DATADIR"])
    wait_for(lambda: assignment([again, b], topics.partitions), 120, "partitions split again")
    # startup_to_ready_s is set by the same timer tick that closes the restore episode.
    restored = wait_for(lambda: (s := again.stats())["startup_to_ready_s"] is not None and s, 60, "ready")[
        "last_recovery"
    ]
    replayed = 0 if restored is None else restored["records"]
    # A cold start reads every changelog record of the partitions it restores; a warm start only what
    # was written after the offsets its RocksDB had applied (b's writes while it was down, plus the
    # little its standby copies had not yet applied when it stopped).
    changelog = f"{a.env['APP_ID']}-user-state-changelog"
    full = changelog_records(changelog, again.ready_body()["partitions"])
    print(f"warm restart: replayed {replayed} changelog records of {full} (delta written: {len(second)})")
    assert replayed < full

    # Lookups from the warm worker, then a cold start of the whole app on a fresh directory.
    check(stream, [again, b])
    again.stop()
    b.stop()
    cold = spawn()
    wait_for(lambda: assignment([cold], topics.partitions), 120, "a cold worker owning every partition")
    cold_restored = wait_for(
        lambda: (s := cold.stats())["startup_to_ready_s"] is not None and s, 60, "ready"
    )["last_recovery"]
    cold_full = changelog_records(changelog, cold.ready_body()["partitions"])
    print(f"cold start: {cold_restored}; changelog of its partitions: {cold_full}")
    assert cold_restored is not None and cold_restored["records"] == cold_full

    check(stream, [cold])


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_cold_restart_restores_every_user(topics: Topics, spawn: Any, guarantee: str) -> None:
    """A worker on an empty APP_DATADIR restores every user from the changelog, the bulk of it in batches.

    Guards two extensions in app/faust_ext.py: ``Recovery._build_offsets`` (without it nothing is
    restored in bulk) and, under exactly_once, ``ConsumerThread._highwaters`` (without it Faust sees
    no changelog to restore before its first fetch, and the users are missing).
    """
    a = spawn(PROCESSING_GUARANTEE=guarantee)
    a.wait_ready()
    stream = Stream()
    # 8,000 transactions of 200 users: about 2,000 changelog records per partition, above
    # tables/restore.py's MIN_RECORDS, so each partition is restored in bulk.
    sent = batch(stream, topics.partitions, users=200, per_user=40, start=time.time() - 3000, tag="c")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in sent], topics.transactions))
    wait_for(
        lambda: (s := a.stats())["processed_total"] == len(sent) and s["lag_total"] == 0,
        180,
        "every transaction processed and committed",
    )
    a.stop()

    cold = spawn(PROCESSING_GUARANTEE=guarantee)
    wait_for(lambda: assignment([cold], topics.partitions), 120, "the cold worker owning every partition")
    restored = wait_for(lambda: (s := cold.stats())["startup_to_ready_s"] is not None and s, 60, "ready")[
        "last_recovery"
    ]
    print(f"cold restart ({guarantee}): {restored}")
    assert restored is not None
    assert restored["bulk_records"] > 0 and restored["bulk_records"] <= restored["records"]
    if guarantee == "at_least_once":  # under exactly_once, transaction markers take offsets too
        changelog = f"{a.env['APP_ID']}-user-state-changelog"
        assert restored["records"] == changelog_records(changelog, list(range(topics.partitions)))
    wait_for(lambda: cold.stats()["users"] == 200, 30, "200 users counted")
    check(stream, [cold])


def check(stream: Stream, workers: list[Worker]) -> None:
    oracle = Oracle()
    for m in stream.messages:
        assert m.txn is not None
        oracle.process(m.txn)
    for u in range(0, 100, 7):
        user = f"rs-user-{u:03d}"
        _, want = oracle.lookup(user)
        for worker in workers:
            status, _, body = worker.get("/features/" + urllib.parse.quote(user))
            assert status == 200, (worker.url, body)
            assert want is not None
            assert_record_matches(body, want)


def changelog_records(topic: str, partitions: list[int]) -> int:
    """Records in these changelog partitions (offsets start at 0; nothing is compacted this fast)."""
    return topic_records(topic, partitions)


def topic_records(topic: str, partitions: list[int] | None = None) -> int:
    async def ends() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
        await consumer.start()
        try:
            # Also lets the consumer's start-up tasks run before stop() (stopping at once can raise
            # CancelledError out of aiokafka's coordinator).
            await consumer._client.force_metadata_update()
            parts = (
                partitions if partitions is not None else sorted(consumer.partitions_for_topic(topic) or [])
            )
            offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return sum(offsets.values())
        finally:
            await consumer.stop()

    return asyncio.run(ends())
