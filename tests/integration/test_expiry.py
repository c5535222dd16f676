"""SPEC 4 "Expiry" on the real worker: stream time, the sweep, tombstones, restarts, rebalances."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.conftest import (
    BOOTSTRAP,
    TopicReader,
    Topics,
    Worker,
    assignment,
    produce,
    wait_for,
)
from tests.integration.streams import Stream, owner_partition
from tests.oracle import Oracle, assert_record_matches

pytestmark = pytest.mark.integration

TTL_S = 1000.0
IDLE = [f"idle-{i:03d}" for i in range(40)]
ACTIVE = [f"active-{i:03d}" for i in range(20)]
RETURNING = IDLE[:10]


def build(partitions: int) -> tuple[Stream, Stream, Stream]:
    """Three phases; the second moves every partition's stream time past the idle users' M + TTL."""
    base = time.time() - 20000
    assert {owner_partition(u, partitions) for u in ACTIVE} == set(range(partitions))
    first, second, third = Stream(), Stream(), Stream()
    for user in IDLE + ACTIVE:
        start = base if user in IDLE else base + 500  # M: base + 20 (idle), base + 520 (active)
        for k in range(3):
            first.add_tx(user, "direct", partitions, f"{user}-a{k}", start + k * 10, 5.0 + k, f"m{k}")
    for user in ACTIVE:  # stream time base + 1200 and on: the floor passes the idle users' M only
        second.add_tx(user, "direct", partitions, f"{user}-b", base + 1200 + ACTIVE.index(user), 9.0, "m9")
    for user in RETURNING + ACTIVE[:5]:
        third.add_tx(user, "direct", partitions, f"{user}-c", base + 1300, 3.0, "m1")
    return first, second, third


def oracle_of(partitions: int, *streams: Stream) -> tuple[Oracle, list[dict[str, Any]]]:
    oracle = Oracle(ttl_s=TTL_S, partition_of=lambda user: owner_partition(user, partitions))
    expected = []
    for stream in streams:
        for m in stream.messages:
            assert m.txn is not None
            verdict, record = oracle.process(m.txn)
            assert verdict == "accepted" and record is not None
            expected.append(record)
    return oracle, expected


async def changelog_last_values(topic: str) -> dict[bytes, bytes | None]:
    """Key -> its last value in the changelog (None: a tombstone)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert tps, f"no partitions for {topic}"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        last: dict[bytes, bytes | None] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    assert r.key is not None
                    last[r.key] = r.value
        return last
    finally:
        await consumer.stop()


async def produce_fast(stream: Stream, topic: str) -> None:
    """In order per partition, without a round trip per message (as ``produce`` does)."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=20)
    await producer.start()
    try:
        sends = [
            await producer.send(topic, m.value, key=m.key, partition=m.partition) for m in stream.messages
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def lookup(worker: Worker, user: str) -> tuple[int, Any]:
    status, _, body = worker.get("/features/" + urllib.parse.quote(user))
    return status, body


def check_lookups(workers: list[Worker], oracle: Oracle) -> None:
    for user in IDLE + ACTIVE:
        want_status, want = oracle.lookup(user)
        for worker in workers:
            status, body = lookup(worker, user)
            assert status == want_status, (user, worker.url, body)
            if want is not None:
                assert_record_matches(body, want)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_inactive_users_are_forgotten_deleted_and_stay_forgotten(
    topics: Topics, spawn: Any, guarantee: str
) -> None:
    """Idle users: 404 at once, deleted by the sweep (their partitions get no more traffic: the
    ticks carry the deletions), tombstones in the changelog; some come back as new users while a
    second worker joins; a cold start restores only the users that are not forgotten."""
    env = {"USER_TTL_S": str(TTL_S), "EXPIRY_SWEEP_INTERVAL_S": "1", "PROCESSING_GUARANTEE": guarantee}
    a = spawn(**env)
    a.wait_ready()
    first, second, third = build(topics.partitions)
    changelog = f"{a.env['APP_ID']}-user-state-changelog"

    async def run(msgs: Stream) -> None:
        await produce([(m.key, m.value, m.partition) for m in msgs.messages], topics.transactions)

    asyncio.run(run(first))
    asyncio.run(run(second))
    oracle, _ = oracle_of(topics.partitions, first, second)
    assert oracle.expired == []  # nobody came back yet: the sweep, not a transaction, must forget them

    # Lookups answer 404 as soon as the stream time has passed (whether or not the sweep has run) ...
    wait_for(
        lambda: a.stats()["processed_total"] == len(first.messages) + len(second.messages), 120, "all in"
    )
    check_lookups([a], oracle)
    # ... and the sweep deletes them: the users count falls, the changelog holds tombstones.
    wait_for(
        lambda: (s := a.stats())["users_expired_total"] == len(IDLE) and s["users"] == len(ACTIVE),
        60,
        "the sweep deleting every idle user",
    )
    last = asyncio.run(changelog_last_values(changelog))
    for user in IDLE:
        assert last[user.encode()] is None, user
    for user in ACTIVE:
        assert last[user.encode()] is not None, user

    # A second worker joins (a rebalance while sweeps run every second), then some idle users return.
    b = spawn(**env)
    wait_for(lambda: assignment([a, b], topics.partitions, every_worker_owns=True), 120, "a and b sharing")
    asyncio.run(run(third))
    oracle, expected = oracle_of(topics.partitions, first, second, third)
    assert sorted(oracle.expired) == sorted(RETURNING)  # the oracle forgets at the return

    async def features() -> list[Any]:
        async with TopicReader(topics.features) as reader:
            return await reader.until(lambda got: len(got) >= len(expected), 120, "every record")

    got = asyncio.run(features())
    by_txid = {value["transaction_id"]: value for _, value, _ in got}
    assert len(by_txid) == len(expected)
    for want in expected:
        assert_record_matches(by_txid[want["transaction_id"]], want)
    for user in RETURNING:  # they started anew
        record = by_txid[f"{user}-c"]
        assert record["seconds_since_last_tx"] is None and record["tx_count_24h"] == 1
    check_lookups([a, b], oracle)
    wait_for(
        lambda: sum(w.stats()["users"] for w in (a, b)) == len(ACTIVE) + len(RETURNING), 60, "user counts"
    )

    # A cold start of the whole app on new data directories: restored from the changelog,
    # the forgotten users stay forgotten and nobody else is.
    a.stop()
    b.stop()
    cold = spawn(**env)
    wait_for(lambda: assignment([cold], topics.partitions), 120, "the cold worker owning every partition")
    check_lookups([cold], oracle)
    wait_for(lambda: cold.stats()["users"] == len(ACTIVE) + len(RETURNING), 60, "users after the restore")
    assert cold.stats()["users_expired_total"] == 0  # nothing left to expire: the tombstones did it
    # Bounded RocksDB memory (ROCKSDB_WRITE_BUFFER_MB, default 4): RocksDB's own record of its options.
    options = [p for p in Path(cold.env["APP_DATADIR"]).rglob("OPTIONS-*") if "user-state" in str(p)]
    assert options
    for path in options:
        text = path.read_text()
        assert "  write_buffer_size=4194304\n" in text and "  max_write_buffer_number=2\n" in text, path


def test_a_worker_killed_in_the_middle_of_a_sweep_forgets_every_idle_user_after_its_restart(
    topics: Topics, spawn: Any
) -> None:
    """SIGKILL while the sweep's deletions are under way; the restarted worker (same data dir) finishes."""
    env = {"USER_TTL_S": str(TTL_S), "EXPIRY_SWEEP_INTERVAL_S": "1"}
    a = spawn(**env)
    a.wait_ready()
    base = time.time() - 20000
    idle = [f"bulk-idle-{i:05d}" for i in range(30000)]
    fill, tail = Stream(), Stream()
    for i, user in enumerate(idle):
        fill.add_tx(user, "direct", topics.partitions, f"{user}-a", base + i * 0.001, 4.0, "m1")
    for user in ACTIVE:
        fill.add_tx(user, "direct", topics.partitions, f"{user}-a", base + 500, 4.0, "m1")
        tail.add_tx(
            user, "direct", topics.partitions, f"{user}-b", base + 1200 + ACTIVE.index(user), 9.0, "m2"
        )
    asyncio.run(produce_fast(fill, topics.transactions))
    wait_for(lambda: a.stats()["processed_total"] == len(fill.messages), 120, "the fill processed")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in tail.messages], topics.transactions))

    expired_at_kill = wait_for(lambda: a.stats()["users_expired_total"], 60, "the sweep's first deletions")
    a.stop(signal.SIGKILL)
    assert expired_at_kill < len(idle), "the kill came after the sweep had finished: not mid-sweep"

    again = spawn(APP_DATADIR=a.env["APP_DATADIR"], **env)
    wait_for(
        lambda: assignment([again], topics.partitions), 120, "the restarted worker owning every partition"
    )
    wait_for(lambda: again.stats()["users"] == len(ACTIVE), 120, "every idle user deleted after the restart")
    oracle, _ = oracle_of(topics.partitions, fill, tail)
    for user in idle[::997] + ACTIVE:
        want_status, want = oracle.lookup(user)
        status, body = lookup(again, user)
        assert status == want_status, (user, body)
        if want is not None:
            assert_record_matches(body, want)
    last = asyncio.run(changelog_last_values(f"{a.env['APP_ID']}-user-state-changelog"))
    assert all(last[user.encode()] is None for user in idle)
