"""Two workers of one app: partitions split, and either one answers for every user."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest

from tests.integration.conftest import TopicReader, Topics, assignment, produce, wait_for
from tests.integration.streams import Stream, owner_partition
from tests.oracle import Oracle, assert_record_matches

pytestmark = pytest.mark.integration


async def test_two_workers_route_lookups_to_the_owner(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]
) -> None:
    features, _ = readers
    a = spawn()
    a.wait_ready()
    b = spawn()
    owners = wait_for(
        lambda: assignment([a, b], topics.partitions, every_worker_owns=True),
        120,
        "partitions split over two workers",
    )

    now = time.time()
    stream = Stream()
    users = [f"user-{i:03d}" for i in range(40)]
    for i, user in enumerate(users):
        for k in range(3):
            stream.add_tx(
                user,
                "direct",
                topics.partitions,
                f"{user}-{k}",
                now - 600 + 60 * k + i,
                10.0 * (k + 1),
                f"m{k % 2}",
            )
    await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    await features.until(lambda ms: len(ms) >= len(stream.messages), 120, "all feature records")

    oracle = Oracle()
    for m in stream.messages:
        assert m.txn is not None
        oracle.process(m.txn)
    owned_by = {w.port: 0 for w in (a, b)}
    for user in users:
        owned_by[owners[owner_partition(user, topics.partitions)].port] += 1
        _, want = oracle.lookup(user)
        assert want is not None
        for worker in (a, b):
            status, _, body = worker.get("/features/" + urllib.parse.quote(user))
            assert status == 200, (worker.url, user, body)
            assert_record_matches(body, want)
    assert all(owned_by.values()), f"both workers must own some users: {owned_by}"
    # Unknown users are a 404 from either worker, wherever the owner is.
    for worker in (a, b):
        assert worker.get("/features/nobody-at-all")[0] == 404
