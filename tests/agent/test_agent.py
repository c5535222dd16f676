"""The feature agent through ``agent.test_context()`` (memory store, no broker)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast
from unittest.mock import patch

import orjson
import pytest

from agents import features
from app.faust_ext import BatchHandler, Consumer
from app.main import app
from app.scoring import Scorer
from records.label import LABEL_KEY, Label, carried_label, is_prediction_key, prediction_key
from tables.expiry import stream_time_key
from tables.user_state import (
    owner_partition,
    stream_times,
    sweeper,
    user_state,
    windows,
)
from tests.agent.producer_fake import Sent, running_agent

NOW = time.time()


def tx(txid: str, user: str = "alice", amount: float = 10.0, ts: float = NOW - 600, **extra: Any) -> bytes:
    body = {"transaction_id": txid, "user_id": user, "amount": amount, "merchant_id": "m1", "timestamp": ts}
    body.update(extra)
    return orjson.dumps(body)


@pytest.fixture
async def agent() -> AsyncIterator[tuple[Any, Sent]]:
    sent = Sent()
    async with running_agent(sent) as wrapped:
        yield wrapped, sent


async def test_accepted_transaction_publishes_its_features(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    await wrapped.put(tx("t1", amount=10.0), key=b"alice", partition=0)
    await wrapped.put(tx("t2", amount=30.0, ts=NOW - 300), key=b"alice", partition=0)
    records = [v for _, v, _ in sent.by_topic["features"]]
    assert [r["transaction_id"] for r in records] == ["t1", "t2"]
    assert records[1]["tx_count_1h"] == 2
    assert records[1]["total_amount_24h"] == 40.0
    assert records[1]["seconds_since_last_tx"] == 300.0
    assert "dlq" not in sent.by_topic


async def test_every_feature_record_gets_a_prediction_after_it(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    with patch.object(features, "scorer", Scorer("count-v1", lambda f: min(1.0, f["tx_count_1h"] / 4))):
        await wrapped.put(tx("t1"), key=b"alice", partition=0)
        await wrapped.put(tx("t2", ts=NOW - 10), key=b"alice", partition=0)
        await wrapped.put(tx("t1"), key=b"alice", partition=0)  # a duplicate: its record again, scored again
    records = [v for _, v, _ in sent.by_topic["features"]]
    predictions = sent.by_topic["predictions"]
    assert [(k, p["transaction_id"], p["features_at"]) for k, p, _ in predictions] == [
        (b"alice", r["transaction_id"], r["computed_at"]) for r in records
    ]
    assert [p["score"] for _, p, _ in predictions] == [min(1.0, r["tx_count_1h"] / 4) for r in records]
    assert len(records) == 3 and records[1]["tx_count_1h"] == 2
    assert {p["model_version"] for _, p, _ in predictions} == {"count-v1"}
    assert all(p["scored_at"] >= p["features_at"] for _, p, _ in predictions)


async def test_a_failing_model_costs_the_prediction_not_the_record(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    failures = app.metrics.scoring_failures_total

    def broken(features: Any) -> float:
        raise RuntimeError("model server gone")

    for scorer in (Scorer("broken", broken), Scorer("out-of-range", lambda f: 1.5)):
        with patch.object(features, "scorer", scorer):
            await wrapped.put(tx(f"t-{scorer.version}"), key=b"alice", partition=0)
    assert [v["transaction_id"] for _, v, _ in sent.by_topic["features"]] == ["t-broken", "t-out-of-range"]
    assert "predictions" not in sent.by_topic and "dlq" not in sent.by_topic
    assert app.metrics.scoring_failures_total == failures + 2


async def test_invalid_message_becomes_a_dead_letter_and_the_stream_goes_on(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    await wrapped.put(b"{not json", key=b"k1", partition=0)
    await wrapped.put(tx("t1", amount=-1), key=b"alice", partition=0)
    await wrapped.put(tx("t2"), key=b"alice", partition=0)
    letters = [v for _, v, _ in sent.by_topic["dlq"]]
    assert [d["error_type"] for d in letters] == ["DecodeError", "ValidationError"]
    assert "amount" in letters[1]["error_message"]
    assert letters[0]["original_key"] == "k1" and letters[0]["raw_value"] == "{not json"
    assert [v["transaction_id"] for _, v, _ in sent.by_topic["features"]] == ["t2"]


async def test_unkeyed_message_is_forwarded_to_the_users_partition(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    await wrapped.put(tx("t1", user="bob"), key=None, partition=0)
    ((key, envelope, partition),) = sent.by_topic["rekey"]
    assert key == b"bob" and partition == 0
    assert envelope["txn"]["transaction_id"] == "t1"
    assert envelope["key"] is None and envelope["offset"] == 0
    assert "features" not in sent.by_topic


async def test_duplicate_is_republished_not_counted_and_late_goes_to_dlq(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    await wrapped.put(tx("t1", user="carol", ts=NOW - 7200), key=b"carol", partition=0)
    await wrapped.put(tx("t2", user="carol", ts=NOW - 10), key=b"carol", partition=0)
    await wrapped.put(tx("t2", user="carol", ts=NOW - 10, amount=999), key=b"carol", partition=0)
    await wrapped.put(tx("t1", user="carol", ts=NOW - 7200), key=b"carol", partition=0)  # dup, now too old
    await wrapped.put(tx("t3", user="carol", ts=NOW - 3 * 3600), key=b"carol", partition=0)  # late
    records = [v for _, v, _ in sent.by_topic["features"]]
    assert [r["transaction_id"] for r in records] == ["t1", "t2", "t2"]
    assert records[2]["tx_count_24h"] == 2 and records[2]["current_amount"] == 10.0
    assert [d["error_type"] for _, d, _ in sent.by_topic["dlq"]] == ["LateEvent", "LateEvent"]


async def test_unexpected_failure_is_a_processing_error_not_a_crash(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    with patch.object(windows, "save", boom):
        await wrapped.put(tx("t1", user="dave"), key=b"dave", partition=0)
    await wrapped.put(tx("t2", user="dave"), key=b"dave", partition=0)
    ((_, letter, _),) = sent.by_topic["dlq"]
    assert letter["error_type"] == "ProcessingError" and "disk on fire" in letter["error_message"]
    # The failed transaction left no trace in state: t2 is the user's first.
    assert [(v["transaction_id"], v["tx_count_24h"]) for _, v, _ in sent.by_topic["features"]] == [("t2", 1)]


async def test_state_changes_go_to_the_changelog_partition_of_the_input(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    await wrapped.put(tx("c1", user="carol"), key=b"carol", partition=0)
    await wrapped.put(tx("c1", user="carol"), key=b"carol", partition=0)  # a duplicate changes nothing
    changes = [c for c in sent.by_topic["changelog"] if c[0] != stream_time_key(0)]
    heads = [c for c in changes if not is_prediction_key(c[0])]
    ((key, value, partition),) = heads
    assert (key, partition) == (b"carol", 0)
    assert isinstance(value, bytes) and value
    # The logged prediction (SPEC 10 label join) is state of the same partition, written once:
    # the duplicate's record is scored again but not logged again.
    logged = [c for c in changes if is_prediction_key(c[0])]
    assert [(k, p) for k, _, p in logged] == [(prediction_key("c1"), 0)]
    assert [v["transaction_id"] for _, v, _ in sent.by_topic["features"]] == ["c1", "c1"]


class Record:
    """What the consumer hands the batch path: aiokafka ``ConsumerRecord`` fields it reads."""

    def __init__(self, offset: int, key: bytes | None, value: bytes) -> None:
        self.offset, self.key, self.value = offset, key, value
        self.timestamp = int(NOW * 1000)


def batches() -> BatchHandler:
    handler = app.batch_handler
    assert handler is not None
    return handler


def input_tp(partition: int = 0) -> Any:
    from faust.types import TP

    from app.main import settings

    return TP(settings.transactions_topic, partition)


async def test_a_batch_goes_in_order_and_its_last_offset_is_what_commits(agent: tuple[Any, Sent]) -> None:
    """FeatureBatches: one fetch of a partition, processed in order; the commit takes its last offset."""
    _, sent = agent
    tp = input_tp()
    batch = [
        Record(10, b"erin", tx("e1", user="erin", amount=5.0)),
        Record(11, b"k", b"{not json"),
        Record(13, b"erin", tx("e2", user="erin", amount=7.0, ts=NOW - 100)),  # offset 12: a marker
    ]
    await batches()({tp: batch}, app.consumer_generation_id)
    features_out = [v for _, v, _ in sent.by_topic["features"]]
    assert [(r["transaction_id"], r["tx_count_1h"], r["total_amount_24h"]) for r in features_out] == [
        ("e1", 1, 5.0),
        ("e2", 2, 12.0),
    ]
    heads = [(k, p) for k, _, p in sent.by_topic["changelog"] if not is_prediction_key(k)]
    assert heads == [(b"erin", 0), (b"erin", 0)]
    assert [d["original_offset"] for _, d, _ in sent.by_topic["dlq"]] == [11]
    assert app.processed_through[tp] == 13
    # Faust's commit takes processed + 1, with no per-message acks.
    assert cast(Consumer, app.consumer)._new_offset(tp) == 14


async def test_records_already_processed_in_this_generation_are_skipped(agent: tuple[Any, Sent]) -> None:
    """After Faust's late seek back, the same offsets come again: their outputs are already out."""
    _, sent = agent
    tp = input_tp()
    first = [
        Record(0, b"finn", tx("f1", user="finn")),
        Record(1, b"finn", tx("f2", user="finn", ts=NOW - 60)),
    ]
    await batches()({tp: first}, app.consumer_generation_id)
    await batches()(
        {tp: [*first, Record(2, b"finn", tx("f3", user="finn", ts=NOW - 30))]}, app.consumer_generation_id
    )
    assert [v["transaction_id"] for _, v, _ in sent.by_topic["features"]] == ["f1", "f2", "f3"]


async def test_a_batch_of_an_older_generation_is_not_processed(agent: tuple[Any, Sent]) -> None:
    _, sent = agent
    tp = input_tp()
    await batches()({tp: [Record(0, b"gus", tx("g1", user="gus"))]}, app.consumer_generation_id - 1)
    assert sent.by_topic == {} and tp not in app.processed_through


async def test_a_long_batch_lets_other_tasks_run(agent: tuple[Any, Sent]) -> None:
    """Bounded work per event-loop turn: lookups and timers run while a backlog drains."""
    _, sent = agent
    tp = input_tp()
    batch = [Record(k, b"hal", tx(f"h{k}", user="hal", ts=NOW - 3000 + k)) for k in range(200)]
    ticks: list[int] = []

    async def other_task() -> None:
        while True:
            ticks.append(len(sent.by_topic.get("changelog", [])) + len(windows._cache))
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_task())
    try:
        with patch.object(features, "YIELD_EVERY_S", 0.0):
            await batches()({tp: batch}, app.consumer_generation_id)
    finally:
        task.cancel()
    assert len(ticks) >= 100  # it ran between the records, not only before and after the batch
    assert len(sent.by_topic["features"]) == 200


class _Ticks:
    """A clock for the hot path's turn budget: one tick per reading (the rest of ``time`` as is)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_the_turn_budget_is_the_batchs_not_each_partitions(agent: tuple[Any, Sent]) -> None:
    """A batch over many partitions yields as often as one over a single partition."""
    _, sent = agent
    # Eight partitions of the input (the agent tests' topics have one: records on the others are
    # forwarded to their users' partition, work like any other).
    batch = {
        input_tp(p): [Record(k, b"tb", tx(f"tb-{p}-{k}", user="tb", ts=NOW - 300 + k)) for k in range(2)]
        for p in range(8)
    }
    per_turn: list[int] = []

    def processed() -> int:  # records of the batch processed so far
        return sum(app.processed_through.get(tp, -1) + 1 for tp in batch)

    async def other_task() -> None:
        seen = 0
        while True:
            if (now := processed()) > seen:
                per_turn.append(now - seen)
                seen = now
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_task())
    try:
        # A turn reads the clock about once a record: with a budget of 2 ticks it ends after about
        # 3 records, whichever partition they are in.
        with patch.object(features, "YIELD_EVERY_S", 2.0), patch.object(features, "time", _Ticks()):
            await batches()(batch, app.consumer_generation_id)
        while sum(per_turn) < processed():
            await asyncio.sleep(0)
    finally:
        task.cancel()
    assert sum(per_turn) == 16
    assert len(sent.by_topic.get("features", [])) + len(sent.by_topic.get("rekey", [])) == 16
    assert max(per_turn) <= 4, per_turn  # a budget per partition: every record in one turn


async def test_a_batch_cancelled_half_way_still_finishes_before_the_cancel_goes_on(
    agent: tuple[Any, Sent],
) -> None:
    """Faust cancels the fetcher at shutdown, then commits: the batch and its outputs must be whole."""
    _, sent = agent
    tp = input_tp()
    batch = [Record(k, b"ivy", tx(f"i{k}", user="ivy", ts=NOW - 3000 + k)) for k in range(100)]
    with patch.object(features, "YIELD_EVERY_S", 0.0):
        fetch = asyncio.ensure_future(batches()({tp: batch}, app.consumer_generation_id))
        while not sent.by_topic.get("features") and not windows._cache.get("ivy"):
            await asyncio.sleep(0)
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
    assert len(sent.by_topic["features"]) == 100
    assert app.processed_through[tp] == 99


@pytest.fixture
def ttl_100s() -> Iterator[None]:
    """USER_TTL_S=100, from an empty stream time (earlier tests moved partition 0's)."""
    user_state.data.pop(stream_time_key(0), None)
    stream_times.clear()
    with patch.object(stream_times, "ttl_s", 100.0):
        yield
    stream_times.clear()
    sweeper.on_rebalance()


async def test_an_inactive_user_is_forgotten_and_starts_anew(agent: tuple[Any, Sent], ttl_100s: None) -> None:
    wrapped, sent = agent
    t0 = NOW - 280
    await wrapped.put(tx("e1", user="ttl-erin", ts=t0), key=b"ttl-erin", partition=0)
    await wrapped.put(tx("e2", user="ttl-erin", ts=t0 + 30), key=b"ttl-erin", partition=0)
    await wrapped.put(
        tx("f1", user="ttl-fred", ts=t0 + 130), key=b"ttl-fred", partition=0
    )  # erin's M == floor
    await wrapped.put(tx("e3", user="ttl-erin", ts=t0 + 131), key=b"ttl-erin", partition=0)
    await wrapped.put(tx("f2", user="ttl-fred", ts=t0 + 262), key=b"ttl-fred", partition=0)  # erin: 131 < 162
    before = app.metrics.users_expired_total
    await wrapped.put(tx("e4", user="ttl-erin", ts=t0 + 263), key=b"ttl-erin", partition=0)
    assert app.metrics.users_expired_total == before + 1
    erin = {v["transaction_id"]: v for _, v, _ in sent.by_topic["features"] if v["user_id"] == "ttl-erin"}
    assert erin["e3"]["tx_count_24h"] == 3 and erin["e3"]["seconds_since_last_tx"] == 101.0
    assert erin["e4"]["tx_count_24h"] == 1 and erin["e4"]["seconds_since_last_tx"] is None
    # The changelog deletes the old state before it writes the new one; the stream time goes along.
    erin_changes = [v for k, v, _ in sent.by_topic["changelog"] if k == b"ttl-erin"]
    assert erin_changes[-2] is None and erin_changes[-1] is not None
    times = [orjson.loads(v) for k, v, _ in sent.by_topic["changelog"] if k == stream_time_key(0)]
    assert times == [t0, t0 + 30, t0 + 130, t0 + 131, t0 + 262, t0 + 263]


async def test_a_user_the_sweep_found_is_deleted_by_the_next_batch(
    agent: tuple[Any, Sent], ttl_100s: None
) -> None:
    wrapped, sent = agent
    t0 = NOW - 280
    with patch.object(windows, "chunk_rows", 2):  # two sealed chunks and a tail
        for i in range(5):
            await wrapped.put(tx(f"g{i}", user="ttl-gina", ts=t0 + i), key=b"ttl-gina", partition=0)
    await wrapped.put(tx("h1", user="ttl-hal", ts=t0 + 50), key=b"ttl-hal", partition=0)
    await wrapped.put(tx("h2", user="ttl-hal", ts=t0 + 200), key=b"ttl-hal", partition=0)
    sweeper.queued[0] = OrderedDict.fromkeys(["ttl-gina", "ttl-hal", "nobody"])  # what a pass would find
    sent.by_topic.pop("changelog")
    await wrapped.put(tx("h3", user="ttl-hal", ts=t0 + 201), key=b"ttl-hal", partition=0)
    deleted = sorted(k for k, v, _ in sent.by_topic["changelog"] if v is None and k is not None)
    assert deleted == [b"ttl-gina", b"ttl-gina\xff0", b"ttl-gina\xff1"]  # the head and both chunks
    assert user_state.data.get(b"ttl-gina") is None and user_state.data.get(b"ttl-hal") is not None
    assert sweeper.queued[0] == {}


def carried(txid: str, label: int, probe: bool = False) -> bytes:
    return carried_label(Label(txid, label, NOW), probe=probe)


def home(user_key: bytes) -> int:
    from app.main import settings

    return owner_partition(user_key, settings.topic_partitions)


async def carry(partition: int, *values: bytes) -> None:
    """Labels as the re-keying topic's batch brings them (agents/monitoring.py sends them there)."""
    from faust.types import TP

    from app.main import settings

    tp = TP(settings.rekey_topic, partition)
    first = app.processed_through.get(tp, -1) + 1
    records = [Record(first + i, LABEL_KEY, v) for i, v in enumerate(values)]
    await batches()({tp: records}, app.consumer_generation_id)


async def test_a_label_joins_its_logged_prediction_once(agent: tuple[Any, Sent]) -> None:
    """SPEC 10: the label meets the prediction logged in its user's partition, which it then deletes."""
    wrapped, sent = agent
    with patch.object(features, "scorer", Scorer("count-v1", lambda f: min(1.0, f["tx_count_1h"] / 4))):
        await wrapped.put(tx("j1", user="judy"), key=b"judy", partition=home(b"judy"))
        await wrapped.put(tx("j2", user="judy", ts=NOW - 10), key=b"judy", partition=home(b"judy"))
    ((_, prediction, _), (_, second, _)) = sent.by_topic["predictions"]
    unmatched = app.metrics.labels["unmatched"]
    await carry(home(b"judy"), carried("j2", 1), carried("j2", 1), carried("nope", 0))  # again; unknown
    ((key, joined, partition),) = sent.by_topic["monitoring"]
    assert (key, partition) == (b"label", 0)  # the monitoring topic has one partition
    assert (joined["transaction_id"], joined["label"], joined["model_version"]) == ("j2", 1, "count-v1")
    assert (joined["score"], joined["scored_at"]) == (second["score"], second["scored_at"])
    assert second["score"] == 0.5 and prediction["score"] == 0.25
    tombstones = [(k, p) for k, v, p in sent.by_topic["changelog"] if v is None]
    assert tombstones == [(prediction_key("j2"), home(b"judy"))]
    assert app.metrics.labels["unmatched"] == unmatched + 2
    assert "dlq" not in sent.by_topic


async def test_a_probe_that_finds_nothing_is_not_counted(agent: tuple[Any, Sent]) -> None:
    _, sent = agent
    before = dict(app.metrics.labels)
    await carry(1, carried("elsewhere", 1, probe=True))
    assert app.metrics.labels == before
    assert "monitoring" not in sent.by_topic and "dlq" not in sent.by_topic


async def test_without_a_model_nothing_is_logged(agent: tuple[Any, Sent]) -> None:
    wrapped, sent = agent
    with patch.object(features, "scorer", None):
        await wrapped.put(tx("n1", user="nick"), key=b"nick", partition=home(b"nick"))
    assert sent.by_topic["features"]
    assert not [k for k, _, _ in sent.by_topic.get("changelog", []) if is_prediction_key(k)]
