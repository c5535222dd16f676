"""Two workers of one app: partitions split, and either one answers for every user."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest

from app.client import VelocityClient
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

    # Batched: many users in one request, answered by both owners, in the order asked.
    asked = [*users[:30], "nobody-at-all", users[0], "ünï/?&"]
    query = "&".join("user_id=" + urllib.parse.quote(u, safe="") for u in asked)
    for worker in (a, b):
        status, _, body = worker.get(f"/features?{query}")
        assert status == 200, body
        assert [item["user_id"] for item in body["results"]] == asked
        for user, item in zip(asked, body["results"], strict=True):
            want_status, want = oracle.lookup(user)
            assert item["status"] == want_status, item
            if want is None:
                assert isinstance(item["error"], str) and "features" not in item
            else:
                assert_record_matches(item["features"], want)
        at = now - 300
        status, _, body = worker.get(f"/features?user_id={users[1]}&user_id={users[2]}&at={at!r}")
        assert status == 200
        for item in body["results"]:
            _, want = oracle.lookup(item["user_id"], at)
            assert want is not None
            assert_record_matches(item["features"], want)
    for bad in ("", "?user_id=u&at=abc", "?" + "&".join(["user_id=u"] * 501)):
        status, _, body = a.get("/features" + bad)
        assert status == 400 and isinstance(body["error"], str), (bad, body)

    # The client: the same answers, through either worker, with a batch of 50.
    async with VelocityClient([a.url, b.url]) as client:
        assert await client.features("nobody-at-all") is None
        one = await client.features(users[5])
        assert one is not None
        assert_record_matches(one, oracle.lookup(users[5])[1] or {})
        many = await client.features_many([*users, "nobody-at-all"][:50])
        assert many["nobody-at-all"] is None
        for user in users[:49]:
            got = many[user]
            assert got is not None
            assert_record_matches(got, oracle.lookup(user)[1] or {})
