"""Exactly-once across kills, restarts, joins: a read_committed reader sees one pass over the stream.

Under ``PROCESSING_GUARANTEE=exactly_once`` each scenario runs traffic with
out-of-order events, duplicates, late events, invalid and unkeyed messages at
a steady rate while workers are killed (SIGKILL, so the kill lands inside an
open transaction), restarted on their old ``APP_DATADIR``, or added. A
``read_committed`` consumer of the features topic must then see exactly the
records one pass over the stream publishes, per user and in order, and the
dead-letter topic exactly one letter per rejected message; every lookup
equals the oracle, and no worker exits on its own.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.integration.conftest import TopicReader, Topics, Worker, assignment, send_paced, wait_for
from tests.integration.streams import Stream, replay
from tests.integration.test_failover import assert_single_pass, check_lookups
from tests.oracle import Oracle

pytestmark = pytest.mark.integration

# A killed worker's partitions wait for its session to expire before they move; 10 s keeps the
# tests short (the default is 60 s) without changing what happens.
EOS = {"PROCESSING_GUARANTEE": "exactly_once", "BROKER_SESSION_TIMEOUT_S": "10"}
USERS = 40
UNKEYED_USERS = 4  # every message of these users comes without a key (through the re-keying hop)
MESSAGES = 3000
RATE_PER_S = 200.0
LATENESS_S = 3600.0


def eos_traffic(partitions: int, seed: int) -> tuple[Stream, Counter[str]]:
    """The stream, and the dead letters one pass over it produces, by error type."""
    rng = random.Random(seed)
    now = time.time()
    stream = Stream()
    last: dict[str, float] = {}
    ids: dict[str, list[str]] = {}
    invalid = Counter[str]()
    for k in range(MESSAGES):
        roll = rng.random()
        if roll < 0.02:
            stream.add_invalid(b"k-bad", b"{not json", k % partitions, "DecodeError")
            invalid["DecodeError"] += 1
            continue
        if roll < 0.04:
            body = (
                b'{"transaction_id": "x", "user_id": "u", "amount": -1, "merchant_id": "m", "timestamp": 1}'
            )
            stream.add_invalid(b"eos-bad", body, k % partitions, "ValidationError")
            invalid["ValidationError"] += 1
            continue
        u = rng.randrange(USERS)
        user = f"eos-user-{u:03d}"
        path = "unkeyed" if u < UNKEYED_USERS else "direct"
        ts = last.get(user, now - 7200) + rng.choice([0.0, 0.5, 3.0, 10.0])
        last[user] = ts
        if roll < 0.06:
            ts -= LATENESS_S + 60  # late: older than M - L
        elif ids.get(user) and roll < 0.10:
            stream.add_tx(user, path, partitions, rng.choice(ids[user]), ts, 9.0, "m0")  # a retry
            continue
        else:
            ts -= rng.choice([0.0, 0.0, 5.0, 60.0])  # out of order, within lateness
        txid = f"{user}-{k}"
        ids.setdefault(user, []).append(txid)
        stream.add_tx(user, path, partitions, txid, ts, round(rng.uniform(1, 500), 2), f"m{rng.randrange(9)}")
    late = Counter[str]()
    oracle = Oracle()
    for m in stream.messages:
        if m.txn is not None and oracle.process(m.txn)[0] == "late":
            late["LateEvent"] += 1
    assert late["LateEvent"] > 0
    return stream, invalid + late


class Scenario:
    """Traffic, a read_committed reader of features and dead letters, and the final checks."""

    def __init__(self, topics: Topics, seed: int) -> None:
        self.topics = topics
        self.stream, self.letters = eos_traffic(topics.partitions, seed)
        self.oracle, self.accepted = replay(self.stream)
        self.sent = [0]
        self.sender: asyncio.Task[None] | None = None

    def start_traffic(self) -> None:
        self.sender = asyncio.create_task(
            send_paced(self.stream.messages, self.topics.transactions, RATE_PER_S, self.sent)
        )

    async def until(self, condition: Any, timeout_s: float, what: str) -> Any:
        """Like wait_for, without stopping the traffic task while it waits."""
        deadline = time.monotonic() + timeout_s
        while not (result := condition()):
            assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
            await asyncio.sleep(0.2)
        return result

    async def until_sent(self, share: float) -> None:
        deadline = time.monotonic() + 120
        while self.sent[0] < MESSAGES * share:
            assert time.monotonic() < deadline, "traffic did not flow"
            await asyncio.sleep(0.05)

    async def check(
        self, workers: list[Worker], features: TopicReader, dlq: TopicReader, predictions: TopicReader
    ) -> None:
        assert self.sender is not None
        await self.sender
        want = sum(1 for m in self.stream.messages if m.txn is not None) - self.letters["LateEvent"]
        await features.until(lambda ms: len(ms) >= want, 240, f"{want} committed feature records")
        total_letters = sum(self.letters.values())
        await dlq.until(lambda ms: len(ms) >= total_letters, 120, f"{total_letters} committed dead letters")
        # A duplicate would be beyond those counts: read on to the topics' committed ends.
        records = await features.until_end(60)
        assert_single_pass(records, self.stream, self.accepted)
        # SPEC 10: one committed prediction per committed record, in the same transactions.
        scored = await predictions.until_end(60)
        assert Counter((p["transaction_id"], p["features_at"]) for _, p, _ in scored) == Counter(
            (r["transaction_id"], r["computed_at"]) for _, r, _ in records
        )
        letters = await dlq.until_end(60)
        coordinates = [(d["original_partition"], d["original_offset"]) for _, d, _ in letters]
        assert len(coordinates) == len(set(coordinates)), "a dead letter appears twice"
        assert Counter(d["error_type"] for _, d, _ in letters) == self.letters
        wait_for(lambda: assignment(workers, self.topics.partitions), 180, "every partition owned")
        users = sorted({m.user for m in self.stream.messages if m.user})
        check_lookups(workers, self.oracle, users)
        for w in workers:
            assert w.alive(), f"worker on port {w.port} exited:\n{w.tail()}"
            assert "producer gave up" not in w.tail(400)


def two_owners(topics: Topics, spawn: Any, env: dict[str, str]) -> tuple[Worker, Worker]:
    """Two workers of the app, each owning some partitions."""
    a = spawn(**env)
    a.wait_ready()
    b = spawn(**env)
    wait_for(lambda: assignment([a, b], topics.partitions, every_worker_owns=True), 180, "two owners")
    return a, b


async def run(topics: Topics, seed: int, body: Any) -> None:
    scenario = Scenario(topics, seed)
    async with (
        TopicReader(topics.features, isolation_level="read_committed") as features,
        TopicReader(topics.dlq, isolation_level="read_committed") as dlq,
        TopicReader(topics.predictions, isolation_level="read_committed") as predictions,
    ):
        workers = await body(scenario)
        await scenario.check(workers, features, dlq, predictions)


async def test_one_worker_killed_and_restarted_on_its_data_dir(topics: Topics, spawn: Any) -> None:
    async def body(s: Scenario) -> list[Worker]:
        worker = spawn(**EOS)
        worker.wait_ready()
        s.start_traffic()
        await s.until_sent(1 / 3)
        worker.stop(signal.SIGKILL)
        again = spawn(APP_DATADIR=worker.env["APP_DATADIR"], **EOS)
        return [again]

    await run(topics, 101, body)


async def test_one_of_two_killed_and_restarted_on_its_data_dir(topics: Topics, spawn: Any) -> None:
    async def body(s: Scenario) -> list[Worker]:
        a, b = two_owners(topics, spawn, EOS)
        s.start_traffic()
        await s.until_sent(1 / 3)
        b.stop(signal.SIGKILL)
        await s.until_sent(1 / 2)
        again = spawn(APP_DATADIR=b.env["APP_DATADIR"], **EOS)
        return [a, again]

    await run(topics, 202, body)


async def test_a_third_worker_joins_under_traffic(topics: Topics, spawn: Any) -> None:
    async def body(s: Scenario) -> list[Worker]:
        a, b = two_owners(topics, spawn, EOS)
        s.start_traffic()
        await s.until_sent(1 / 3)
        c = spawn(**EOS)
        return [a, b, c]

    await run(topics, 303, body)


async def test_a_paused_worker_is_fenced_rejoins_and_does_not_exit(topics: Topics, spawn: Any) -> None:
    """A zombie: one of two stops (SIGSTOP) past its session timeout, the other takes its partitions
    and fences its transactions; resumed (SIGCONT), its sends and commits fail as fenced. It must
    treat that as migrated partitions (drop their uncommitted work, rejoin), not exit."""
    env = {**EOS, "BROKER_SESSION_TIMEOUT_S": "8"}  # paused longer than this: its partitions move

    async def body(s: Scenario) -> list[Worker]:
        a, b = two_owners(topics, spawn, env)
        s.start_traffic()
        await s.until_sent(1 / 4)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        try:
            await s.until(lambda: assignment([b], topics.partitions), 120, "b owning every partition")
            await s.until_sent(1 / 2)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        return [a, b]

    await run(topics, 404, body)
