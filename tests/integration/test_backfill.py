"""A backfill of a new version (SPEC 9): a worker with a new APP_ID and FEATURES_TOPIC replays the
retained history next to the running version, then follows live traffic; its records equal the
running version's, ``computed_at`` aside, and ``/stats`` shows it catching up."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import orjson
import pytest

from tests.integration.conftest import TopicReader, Topics, produce, produce_many, wait_for
from tests.integration.streams import D, Stream
from tests.integration.test_pipeline import build_stream
from tests.oracle import assert_record_matches

pytestmark = pytest.mark.integration

BULK = 30_000


def by_user(messages: list[tuple[bytes | None, dict[str, Any], int]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, value, _ in messages:
        out[value["user_id"]].append(value)
    return out


async def test_a_backfill_version_equals_the_live_one(topics: Topics, spawn: Any) -> None:
    live = spawn()
    live.wait_ready()
    history = build_stream(topics.partitions)  # every path, duplicates, late, invalid; ~10 days ago
    await produce([(m.key, m.value, m.partition) for m in history.messages], topics.transactions)
    # Volume, in the same days (no user of the first part expires meanwhile), so the backfill has a backlog.
    base = time.time() - 6 * D
    bulk = Stream()
    for i in range(BULK):
        user = f"bulk-{i % 500}"
        bulk.add_tx(user, "direct", topics.partitions, f"bulk-{i}", base + i * 2.0, 1.0 + i % 7, f"m{i % 5}")
    await produce_many([(m.key, m.value, m.partition) for m in bulk.messages], topics.transactions)
    wait_for(
        lambda: (
            (s := live.stats())["processed_total"] + s["duplicates_total"] >= BULK and s["lag_total"] == 0
        ),
        180,
        "the running version to process the history",
    )

    # The new version: its own group, output topics and state; the same input.
    new_features, new_dlq = f"features-v2-{uuid.uuid4().hex[:6]}", f"dlq-v2-{uuid.uuid4().hex[:6]}"
    backfill = spawn(
        APP_ID=f"velocity-v2-{uuid.uuid4().hex[:6]}",
        FEATURES_TOPIC=new_features,
        DLQ_TOPIC=new_dlq,
        FRESHNESS_WARN_S="1",
    )
    seen: list[dict[str, Any]] = []

    def caught_up() -> bool:
        try:
            stats = backfill.stats()
        except OSError:
            return False
        seen.append(stats["catch_up"])
        done = live.stats()
        return bool(
            stats["processed_total"] == done["processed_total"]
            and stats["duplicates_total"] == done["duplicates_total"]
            and stats["lag_total"] == 0
        )

    wait_for(caught_up, 240, "the backfill to catch up", interval_s=0.1)
    behind = [c for c in seen if c["catching_up"]]
    assert behind, f"/stats never showed the backfill catching up: {seen[:5]}"
    assert all(c["lag"] > 0 and c["behind_s"] > 1 for c in behind)
    assert not seen[-1]["catching_up"] and seen[-1]["eta_s"] == 0.0

    # Then both follow live traffic.
    now = time.time()
    tail = Stream()
    for i in range(300):  # one path per user: its messages reach the owner in the order they were sent
        user, path = (f"late-joiner-{i % 7}", "unkeyed") if i % 3 == 0 else (f"bulk-{i % 40}", "direct")
        tail.add_tx(user, path, topics.partitions, f"tail-{i}", now - 300 + i, 2.0, "m1")
    before = live.stats()["processed_total"]
    await produce([(m.key, m.value, m.partition) for m in tail.messages], topics.transactions)
    for worker in (live, backfill):  # every tail transaction is new: accepted by both
        wait_for(lambda w=worker: w.stats()["processed_total"] == before + 300, 120, "the tail")  # type: ignore[misc]

    async with TopicReader(topics.features) as old, TopicReader(new_features) as new:
        await old.until_end(60)
        got = await new.until_end(60)
    want = len(old.messages)
    assert len(got) == want
    old_by_user, new_by_user = by_user(old.messages), by_user(got)
    assert sorted(old_by_user) == sorted(new_by_user)
    for user, records in old_by_user.items():
        mine = new_by_user[user]
        assert [r["transaction_id"] for r in mine] == [r["transaction_id"] for r in records], user
        for actual, expected in zip(mine, records, strict=True):
            assert_record_matches(actual, expected)
    assert orjson.dumps(sorted(backfill.stats()["dead_letters"].items())) == orjson.dumps(
        sorted(live.stats()["dead_letters"].items())
    )
