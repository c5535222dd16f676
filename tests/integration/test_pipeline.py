"""End to end: a real worker, the real broker, RocksDB; outputs checked against the oracle."""

from __future__ import annotations

import random
import time
import urllib.parse
from collections import Counter, defaultdict
from typing import Any

import faust
import pytest
from faust.types import Message

from records.schema import UserFeatures
from tests.integration.conftest import TopicReader, Topics, Worker, produce
from tests.integration.streams import D, H, Stream, crafted_user, invalid_messages, random_user
from tests.oracle import Oracle, assert_record_matches

pytestmark = pytest.mark.integration


def build_stream(partitions: int, seed: int = 11) -> Stream:
    now = time.time()
    rng = random.Random(seed)
    stream = Stream()
    base = now - 10 * D
    for path in ("direct", "unkeyed", "wrong-key", "wrong-partition"):
        crafted_user(stream, f"crafted-{path}", path, partitions, base)
    crafted_user(stream, "ünïcödé 用户/?&", "direct", partitions, base + 0.125)
    for i in range(12):
        path = ("direct", "direct", "unkeyed", "wrong-partition")[i % 4]
        random_user(stream, rng, f"rand-{i}", path, partitions, base + rng.uniform(0, H), n=25)
    invalid_messages(stream, partitions, now)
    return stream


def expected_outcomes(
    stream: Stream, topic: str, sent: list[Any]
) -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[int, int], str], Oracle]:
    oracle = Oracle(lateness_s=H)
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    letters: dict[tuple[int, int], str] = {}
    for msg, where in zip(stream.messages, sent, strict=True):
        if msg.invalid:
            letters[(where.partition, where.offset)] = msg.invalid
            continue
        assert msg.txn is not None and msg.user is not None
        verdict, record = oracle.process(msg.txn)
        if verdict == "late":
            letters[(where.partition, where.offset)] = "LateEvent"
        else:
            assert record is not None
            records[msg.user].append(record)
    return records, letters, oracle


def check_lookup(worker: Worker, user: str, oracle: Oracle, at: float | None) -> None:
    path = "/features/" + urllib.parse.quote(user, safe="")
    if at is not None:
        path += f"?at={at!r}"
    status, headers, body = worker.get(path)
    want_status, want = oracle.lookup(user, at)
    assert status == want_status, f"{path} on {worker.url}: {status} {body}, oracle says {want_status}"
    assert headers.get("Content-Type", "").startswith("application/json")
    if want is None:
        assert isinstance(body, dict) and isinstance(body.get("error"), str)
        return
    assert body["user_id"] == user and body["as_of"] == want["as_of"]
    assert_record_matches(body, want)


async def test_stream_matches_the_oracle_record_by_record(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]
) -> None:
    features, dlq = readers
    worker = spawn()
    worker.wait_ready()
    stream = build_stream(topics.partitions)
    sent = await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    want_records, want_letters, oracle = expected_outcomes(stream, topics.transactions, sent)
    total = sum(len(v) for v in want_records.values())

    got = await features.until(lambda ms: len(ms) >= total, 120, f"{total} feature records")
    letters = await dlq.until(
        lambda ms: len(ms) >= len(want_letters), 60, f"{len(want_letters)} dead letters"
    )

    # Every published record is a UserFeatures, as a downstream Faust app reads it.
    downstream = faust.App("velocity-downstream-test", autodiscover=False)
    schema = downstream.topic(topics.features, key_type=bytes, value_type=UserFeatures).schema
    for offset, ((key, value, partition), raw) in enumerate(zip(got, features.raw_values, strict=True)):
        message = Message(topics.features, partition, offset, 0.0, 0, [], key, raw, None)
        record = schema.loads_value(downstream, message)
        assert isinstance(record, UserFeatures) and record.asdict() == value

    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, value, _ in got:
        assert key == value["user_id"].encode(), "feature records are keyed by user_id"
        by_user[value["user_id"]].append(value)
    assert sorted(by_user) == sorted(want_records)
    for user, want in want_records.items():
        assert [r["transaction_id"] for r in by_user[user]] == [r["transaction_id"] for r in want], user
        for actual, expected in zip(by_user[user], want, strict=True):
            assert_record_matches(actual, expected)
            assert abs(actual["computed_at"] - time.time()) < 600

    got_letters = {(d["original_partition"], d["original_offset"]): d for _, d, _ in letters}
    assert len(got_letters) == len(letters), "one dead letter per rejected message"
    assert {k: d["error_type"] for k, d in got_letters.items()} == want_letters
    for (partition, offset), letter in got_letters.items():
        msg = stream.messages[[(s.partition, s.offset) for s in sent].index((partition, offset))]
        assert letter["original_topic"] == topics.transactions
        assert letter["original_key"] == (None if msg.key is None else msg.key.decode("utf-8", "replace"))
        assert letter["raw_value"] == msg.value.decode("utf-8", "replace")
        assert letter["error_message"] and "\n" not in letter["error_message"]
        assert letter["failed_at"].endswith("Z")
    assert Counter(want_letters.values())["LateEvent"] >= 5

    for user in stream.users:
        m = max(r["event_time"] for r in want_records[user])
        for at in (None, m, m - H, m - H - 0.5, m - H / 2 + 0.125, m + D, m - 1800.0):
            check_lookup(worker, user, oracle, at)
    # The latest record and the lookup without `at` agree (SPEC 7).
    status, _, body = worker.get("/features/crafted-direct")
    assert status == 200 and body["transaction_id"] == by_user["crafted-direct"][-1]["transaction_id"]


async def test_lookup_errors(topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]) -> None:
    features, _ = readers
    worker = spawn()
    worker.wait_ready()
    stream = Stream()
    now = time.time()
    stream.add_tx("erin", "direct", topics.partitions, "e1", now - 100, 5.0, "m1")
    await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    await features.until(lambda ms: len(ms) >= 1, 60, "erin's record")

    for bad in ("abc", "NaN", "Infinity", "", "true", "[1]", "1e999", "%22x%22"):
        for user in ("erin", "nobody"):
            status, _, body = worker.get(f"/features/{user}?at={bad}")
            assert status == 400 and "at" in body["error"], (bad, user, body)
    status, _, body = worker.get("/features/nobody")
    assert status == 404 and "nobody" in body["error"]
    status, _, body = worker.get(f"/features/erin?at={now - 100 - H - 1}")
    assert status == 400 and "ALLOWED_LATENESS_S" in body["error"]
    status, _, body = worker.get("/features/erin?at=1e0")
    assert status == 400
    status, _, body = worker.get(f"/features/erin?at={int(now)}")
    assert status == 200 and body["tx_count_1h"] == 1 and body["as_of"] == int(now)
    assert worker.get("/health")[0] == 200
    status, _, body = worker.get("/ready")
    assert status == 200 and body["partitions"] == list(range(topics.partitions))
