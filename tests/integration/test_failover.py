"""Scale out and survive: workers join, are killed or stopped under traffic, and nothing is lost.

With traffic flowing, one of three workers is killed (SIGKILL) or stopped
(SIGTERM). The survivors take its partitions and restore its state from the
changelog. Afterwards every accepted transaction has a feature record, and
every user's lookup equals the brute-force oracle exactly: no transaction lost,
none counted twice (SPEC 4's duplicate rule makes the replays safe).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import urllib.parse
from collections import Counter
from typing import Any

import pytest

from tests.integration.conftest import (
    TopicReader,
    Topics,
    Worker,
    assignment,
    send_paced,
    wait_for,
)
from tests.integration.streams import Stream, replay
from tests.oracle import Oracle, assert_record_matches

pytestmark = pytest.mark.integration

USERS = 60
MESSAGES = 2400
RATE_PER_S = 200.0


def traffic(partitions: int, seed: int) -> Stream:
    """Per user: increasing timestamps with some out-of-order, ties and duplicates, all within lateness."""
    rng = random.Random(seed)
    now = time.time()
    stream = Stream()
    last: dict[str, float] = {}
    ids: dict[str, list[str]] = {}
    for k in range(MESSAGES):
        user = f"fo-user-{rng.randrange(USERS):03d}"
        ts = last.get(user, now - 1800) + rng.choice([0.0, 0.5, 3.0, 10.0])
        last[user] = ts
        if ids.get(user) and rng.random() < 0.05:
            txid = rng.choice(ids[user])  # an at-least-once producer's retry
        else:
            txid = f"{user}-{k}"
            ids.setdefault(user, []).append(txid)
        jitter = -rng.choice([0.0, 0.0, 0.0, 5.0, 60.0])
        stream.add_tx(
            user,
            "direct",
            partitions,
            txid,
            ts + jitter,
            round(rng.uniform(1, 500), 2),
            f"m{rng.randrange(9)}",
        )
    return stream


def check_lookups(workers: list[Worker], oracle: Oracle, users: list[str]) -> None:
    for user in users:
        want_status, want = oracle.lookup(user)
        for w in workers:
            status, headers, body = w.get("/features/" + urllib.parse.quote(user))
            if status == 503:  # allowed while ownership moves, never a wrong value
                assert "Retry-After" in headers
                continue
            assert status == want_status == 200, (w.url, user, body)
            assert want is not None
            assert_record_matches(body, want)


async def scale_and_fail(
    topics: Topics, spawn: Any, features: TopicReader, sig: signal.Signals, **env: str
) -> tuple[Stream, set[str], list[Worker]]:
    workers = [spawn(**env)]
    workers[0].wait_ready()
    for _ in range(2):  # scale out 1 -> 2 -> 3
        workers.append(spawn(**env))
        wait_for(
            lambda: assignment(workers, topics.partitions),
            180,
            f"partitions spread over {len(workers)} workers",
        )

    stream = traffic(topics.partitions, seed=sig.value)
    oracle, accepted = replay(stream)

    sent = [0]
    sender = asyncio.create_task(send_paced(stream.messages, topics.transactions, RATE_PER_S, sent))
    while sent[0] < MESSAGES // 3:
        await asyncio.sleep(0.05)
    victim = workers[1]
    victim.stop(sig)
    survivors = [w for w in workers if w is not victim]
    await sender

    await features.until(
        lambda ms: {v["transaction_id"] for _, v, _ in ms} >= accepted,
        240,
        "a feature record for every accepted transaction",
    )
    wait_for(lambda: assignment(survivors, topics.partitions), 180, "survivors owning every partition")
    users = sorted({m.user for m in stream.messages if m.user})
    check_lookups(survivors, oracle, users)
    return stream, accepted, survivors


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_worker_dies_under_traffic_and_nothing_is_lost_or_doubled(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader], sig: signal.Signals
) -> None:
    features, dlq = readers
    assert topics.partitions >= 3
    _, accepted, _ = await scale_and_fail(topics, spawn, features, sig)
    assert {v["transaction_id"] for _, v, _ in features.messages} >= accepted
    # The stream holds no late or invalid message, and replays are within lateness: no dead letter.
    letters = await dlq.until(lambda ms: True, 5, "a read of the dead-letter topic")
    assert letters == []


def single_pass_records(stream: Stream) -> dict[str, list[dict[str, Any]]]:
    """Per user, in order, the records one pass over the stream publishes (accepted and re-published)."""
    oracle = Oracle()
    records: dict[str, list[dict[str, Any]]] = {}
    for m in stream.messages:
        if m.txn is None:
            continue
        _, record = oracle.process(m.txn)
        if record is not None:
            records.setdefault(m.txn["user_id"], []).append(record)
    return records


async def test_exactly_once_a_killed_worker_leaves_no_duplicate_record(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]
) -> None:
    """SIGKILL one of three under traffic with PROCESSING_GUARANTEE=exactly_once.

    A read_committed consumer must see exactly what one pass over the stream
    publishes, record for record and in each user's order: the killed
    worker's open transactions are aborted and its partitions' messages are
    processed again from the committed offsets, on state restored up to them.
    """
    _, dlq = readers
    async with TopicReader(topics.features, isolation_level="read_committed") as committed:
        stream, accepted, _ = await scale_and_fail(
            topics, spawn, committed, signal.SIGKILL, PROCESSING_GUARANTEE="exactly_once"
        )
        want = single_pass_records(stream)
        total = sum(len(v) for v in want.values())
        await committed.until(lambda ms: len(ms) >= total, 120, f"{total} committed feature records")
        # A duplicate would be beyond that count: read on to the topic's committed end.
        messages = await committed.until_end(60)
    assert_single_pass(messages, stream, accepted)
    letters = await dlq.until(lambda ms: True, 5, "a read of the dead-letter topic")
    assert letters == []


def assert_single_pass(
    messages: list[tuple[bytes | None, dict[str, Any], int]], stream: Stream, accepted: set[str]
) -> None:
    """The committed records are exactly those of one pass over the stream, per user and in order."""
    want = single_pass_records(stream)
    got: dict[str, list[dict[str, Any]]] = {}
    for _, value, _ in messages:
        got.setdefault(value["user_id"], []).append(value)
    total = sum(len(v) for v in want.values())
    surplus = {
        user: dict(
            Counter(r["transaction_id"] for r in got.get(user, []))
            - Counter(r["transaction_id"] for r in records)
        )
        for user, records in want.items()
    }
    missing = {
        user: dict(
            Counter(r["transaction_id"] for r in records)
            - Counter(r["transaction_id"] for r in got.get(user, []))
        )
        for user, records in want.items()
    }
    surplus = {u: s for u, s in surplus.items() if s}
    missing = {u: m for u, m in missing.items() if m}
    assert sum(len(v) for v in got.values()) == total, (
        f"a read_committed reader saw duplicates or losses: surplus {surplus}, missing {missing}"
    )
    for user, records in want.items():
        ids = [r["transaction_id"] for r in got.get(user, [])]
        assert ids == [r["transaction_id"] for r in records], user
        for actual, expected in zip(got[user], records, strict=True):
            assert_record_matches(actual, expected)
    assert {r["transaction_id"] for rs in got.values() for r in rs} == accepted
