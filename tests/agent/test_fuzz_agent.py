"""Fuzzing the hot path: ``FeatureBatches`` over Hypothesis-generated batches (memory store, no broker).

Every generated batch goes through the consumer's entry point (``app.batch_handler``), and what it
sends to the re-keying topic comes back through it, as a worker's next fetch would bring it. Then:

* every message ends as exactly one feature record or exactly one dead letter (counted per message:
  dead letters by their original offset, feature records by their transaction), and never as a
  ``ProcessingError``: that would be an unexpected exception in the hot path;
* a dead letter keeps the message's key and bytes (SPEC 6), and its one-line message is bounded;
* nothing raises out of the batch, and no log line at INFO or above is longer than 2,000 characters
  (a megabyte value, a 4,000-digit amount: none of it is ever quoted whole);
* the state stays consistent: the feature records of ordinary users match the brute-force oracle of
  SPEC 4 (tests/oracle.py), and after the batch a valid transaction of each of them, and of a new
  user, is processed normally and matches it too.

The Kafka producer is the boundary (``send``/``send_many`` record what the agent hands over), as in
tests/agent/test_agent.py; nothing of the code under test is replaced.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from faust.types import TP
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from agents import features
from app.main import app
from app.main import settings as app_settings
from records.errors import ERROR_TYPES, RejectedMessage
from records.label import LABEL_KEY
from records.transaction import Transaction, parse_transaction
from tables.expiry import TICK_KEY
from tests.agent.producer_fake import Sent, running_agent
from tests.oracle import Oracle, assert_record_matches

NOW = time.time()
HOUR_S, DAY_S = 3600.0, 86400.0
MAX_ERROR_CHARS = 2_000
MAX_LOG_CHARS = 2_000
#: Users whose timestamps all fall here are never expired (USER_TTL_S is 7 days): the oracle applies.
ORDINARY_SINCE = NOW - 2 * DAY_S


@pytest.fixture
async def agent() -> AsyncIterator[Sent]:
    sent = Sent(keep_bytes=True)
    async with running_agent(sent):
        yield sent


class Record:
    """What the consumer hands the batch path: the aiokafka ``ConsumerRecord`` fields it reads."""

    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.offset, self.key, self.value = offset, key, value
        self.timestamp = int(time.time() * 1000)


async def through_the_batch_path(
    sent: Sent, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> int:
    """One fetch of partition 0 of ``topic``, as the consumer hands it over; its first offset.

    A batch that fails would stop a worker (``os._exit``): here its exception reaches the test instead.
    """
    tp = TP(topic, 0)
    first = app.processed_through.get(tp, -1) + 1
    records = [Record(first + i, key, value) for i, (key, value) in enumerate(messages)]
    handler = app.batch_handler
    assert handler is not None
    failed: list[BaseException] = []

    def stop_if_failed(task: asyncio.Future[Any]) -> None:  # instead of os._exit(70)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            failed.append(exc)

    with patch.object(features, "_stop_if_failed", stop_if_failed):
        await handler({tp: records}, app.consumer_generation_id)
    assert not failed
    assert app.processed_through[tp] == records[-1].offset
    return first


# --------------------------------------------------------------------------- generated messages

RUNS = itertools.count()

#: JSON text put in place of one field of a valid transaction.
EDGE_TOKENS = [
    "null",
    "true",
    "false",
    "-1",
    "-0.0",
    "0",
    "5e-324",
    "1e12",
    "999999999999.99",
    "1e308",
    "1e400",
    "NaN",
    "-Infinity",
    "1" + "0" * 5000,
    "9" * 4300,
    "-" + "9" * 4000,
    '"12.5"',
    '""',
    '"\\ud800"',
    '"' + "x" * 129 + '"',
    '"' + "\U0001f600" * 128 + '"',
    "[]",
    "{}",
    "[" * 5000 + "]" * 5000,
    "1.0",
    "1699999990",
]
FIELDS = ("transaction_id", "user_id", "amount", "merchant_id", "merchant_category", "timestamp", "is_online")
#: Offsets (seconds) from NOW of generated timestamps: around the windows' and the lateness' edges.
TS_OFFSETS = [-30 * HOUR_S, -25 * HOUR_S - 1, -DAY_S, -DAY_S - 0.5, -HOUR_S - 1, -HOUR_S, -600, -10, 0, 299.0]


@dataclass(frozen=True)
class Tx:
    """A transaction of one of the example's users, possibly with one field replaced by JSON text."""

    user: int
    tx: int
    amount: float
    ts_offset: float
    merchant: int
    key: str  # "user", "none", "other", "empty", "tick", "label", "long"
    replace: tuple[str, str] | None = None
    padding: int = 0  # bytes of an ignored extra field


@dataclass(frozen=True)
class Raw:
    """A value given as is (garbage, arbitrary JSON, a tombstone)."""

    value: bytes | None
    key: bytes | None


@dataclass(frozen=True)
class Big:
    """A prebuilt large value, by name (a falsifying example stays short to print)."""

    name: str  # a key of BIG_VALUES
    key: bytes | None


_amounts = st.one_of(
    st.sampled_from([0.0, 0.01, 1.0, 12.5, 999999999999.99, 5e-324]),
    st.floats(min_value=0.0, max_value=1e6, allow_subnormal=False),
)
_ts_offsets = st.one_of(st.sampled_from(TS_OFFSETS), st.floats(min_value=-30 * HOUR_S, max_value=299.0))
_keys = st.sampled_from(["user", "user", "user", "user", "none", "other", "empty", "tick", "label", "long"])
_txs = st.builds(
    Tx,
    user=st.integers(0, 3),
    tx=st.integers(0, 6),  # few ids: duplicates happen
    amount=_amounts,
    ts_offset=_ts_offsets,
    merchant=st.integers(0, 3),
    key=_keys,
    replace=st.one_of(
        st.none(), st.none(), st.none(), st.tuples(st.sampled_from(FIELDS), st.sampled_from(EDGE_TOKENS))
    ),
    padding=st.sampled_from([0, 0, 0, 100_000]),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
_small_keys = st.none() | st.binary(max_size=30)
HUGE_VALUE = b'{"transaction_id":"huge","user_id":"huge","amount":1,"merchant_id":"m","timestamp":1}'
HUGE_VALUE += b" " * (app_settings.max_message_bytes + 1 - len(HUGE_VALUE))  # valid, but over the limit
BIG_VALUES = {
    "over MAX_MESSAGE_BYTES": HUGE_VALUE,
    "10,000 deep": b"[" * 10_000 + b"]" * 10_000,
    "a 4,300-digit amount": b'{"transaction_id":"t","user_id":"u","amount":'
    + b"9" * 4300
    + b',"merchant_id":"m"}',
}
_raws = st.one_of(
    st.builds(Raw, st.binary(max_size=200), _small_keys),
    st.builds(Raw, _json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()), _small_keys),
    st.builds(Raw, st.sampled_from([None, b"", b"null", b"{}", b"[]", b"\xef\xbb\xbf{}"]), _small_keys),
    st.builds(Big, st.sampled_from(sorted(BIG_VALUES)), _small_keys),
)
# Three transactions for one raw value (one_of would flatten the raw values' branches and favour them).
_messages = st.lists(st.integers(0, 3).flatmap(lambda n: _raws if n == 0 else _txs), min_size=4, max_size=40)


def user_id(run: int, user: int) -> str:
    return f"fz{run}-u{user}"


def materialize(message: Tx | Raw | Big, run: int) -> tuple[bytes | None, bytes | None]:
    """(key, value) of a generated message; each example has users of its own."""
    if isinstance(message, Raw):
        return message.key, message.value
    if isinstance(message, Big):
        return message.key, BIG_VALUES[message.name]
    uid = user_id(run, message.user)
    fields = {
        "transaction_id": json.dumps(f"t{message.tx}"),
        "user_id": json.dumps(uid),
        "amount": repr(message.amount),
        "merchant_id": json.dumps(f"m{message.merchant}"),
        "merchant_category": json.dumps("grocery"),
        "timestamp": repr(NOW + message.ts_offset),
        "is_online": "false",
    }
    if message.replace is not None:
        fields[message.replace[0]] = message.replace[1]
    if message.padding:
        fields["padding"] = json.dumps("p" * message.padding)
    value = ("{" + ",".join(f'"{name}":{text}' for name, text in fields.items()) + "}").encode()
    keys: dict[str, bytes | None] = {
        "user": uid.encode(),
        "none": None,
        "other": b"someone-else",
        "empty": b"",
        "tick": TICK_KEY,  # internal keys, on the input topic: ordinary keys there
        "label": LABEL_KEY,
        "long": b"k" * 100,
    }
    return keys[message.key], value


# --------------------------------------------------------------------------- the property


@dataclass
class Expected:
    """What the oracle says of each message, in the order the worker processes them."""

    oracle: Oracle = field(default_factory=Oracle)
    records: list[dict[str, Any]] = field(default_factory=list)  # feature records of ordinary users
    late: set[int] = field(default_factory=set)  # offsets of ordinary users' late events


def parsed(value: bytes | None) -> Transaction | RejectedMessage:
    try:
        return parse_transaction(
            value, time.time(), app_settings.max_clock_skew_s, app_settings.max_message_bytes
        )
    except RejectedMessage as exc:
        return exc


def assert_dead_letter(letter: dict[str, Any], key: bytes | None, value: bytes | None) -> None:
    assert letter["original_topic"] == app_settings.transactions_topic
    assert letter["original_partition"] == 0
    # A dead letter keeps the first 64 KiB of the value and 1 KiB of the key (records/schema.py), and says so.
    assert letter["original_key"] == (None if key is None else key[:1024].decode("utf-8", "replace"))
    raw = value or b""
    assert letter["raw_value"] == raw[: 64 * 1024].decode("utf-8", "replace")
    assert (letter["raw_value_bytes"], letter["raw_value_truncated"]) == (len(raw), len(raw) > 64 * 1024)
    assert letter["error_type"] in ERROR_TYPES
    assert letter["error_type"] != "ProcessingError", letter["error_message"]
    message = letter["error_message"]
    assert isinstance(message, str) and 0 < len(message) <= MAX_ERROR_CHARS
    assert "\n" not in message


def named(error_message: str) -> list[str]:
    """The fields a rejection names (``"<field>: ..."`` parts joined by ``"; "``)."""
    return [part.split(":", 1)[0] for part in error_message.split("; ")]


def assert_log_lines_bounded(caplog: pytest.LogCaptureFixture) -> None:
    for rec in caplog.records:
        if rec.levelno >= logging.INFO:
            line = rec.getMessage()
            assert len(line) <= MAX_LOG_CHARS, f"{rec.levelname} {rec.name}: {len(line)} chars: {line[:200]}"


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


#: Every case the brief names, always run first: a None key, an empty value, a tombstone, a value over
#: MAX_MESSAGE_BYTES, deep nesting, a 4,300-digit amount, internal keys on the input topic, duplicates
#: and late events, re-keyed transactions, a mutated field, a 100 KB extra field.
EVERY_KIND = [
    Tx(0, 0, 12.5, -600, 0, "user"),
    Raw(b"", None),
    Raw(None, b"tombstone-key"),
    Raw(None, None),
    *(Big(name, None) for name in sorted(BIG_VALUES)),
    Tx(0, 1, 30.0, -300, 1, "none"),  # re-keyed
    Tx(1, 0, 1.0, -10, 0, "tick"),
    Tx(1, 1, 2.0, -5, 0, "label", padding=100_000),
    Tx(0, 0, 99.0, -600, 0, "user"),  # a duplicate: its first record again
    Tx(0, 2, 5.0, -4 * HOUR_S, 0, "user"),  # late
    Tx(2, 0, 5.0, -10, 0, "other", replace=("amount", "true")),
    Tx(2, 1, 5.0, -10, 0, "long", replace=("timestamp", "9" * 4300)),
    Raw(b"\xff\xfe{}", b"\xff"),
]


@FUZZ
@given(messages=_messages)
@example(messages=EVERY_KIND)
async def test_every_message_ends_as_one_record_or_one_dead_letter(
    agent: Sent, caplog: pytest.LogCaptureFixture, messages: list[Tx | Raw | Big]
) -> None:
    sent = agent
    sent.by_topic.clear()
    caplog.clear()
    caplog.set_level(logging.INFO)
    run = next(RUNS)
    batch = [materialize(m, run) for m in messages]

    first = await through_the_batch_path(sent, app_settings.transactions_topic, batch)
    hops = sent.by_topic.pop("rekey", [])
    if hops:
        await through_the_batch_path(sent, app_settings.rekey_topic, [(k, raw) for k, _, raw in hops])
    assert "rekey" not in sent.by_topic, "a re-keyed message is re-keyed again"

    # Per message: at most one dead letter, by offset; the others must each have made one record.
    letters: dict[int, dict[str, Any]] = {}
    for letter in sent.values("dlq"):
        offset = letter["original_offset"]
        assert first <= offset < first + len(batch), letter
        assert offset not in letters, f"two dead letters for offset {offset}"
        letters[offset] = letter
    outcomes = [parsed(value) for _, value in batch]
    expected_ids: list[tuple[str, str]] = []
    for i, ((key, value), outcome) in enumerate(zip(batch, outcomes, strict=True)):
        letter = letters.get(first + i)
        if letter is not None:
            assert_dead_letter(letter, key, value)
            if isinstance(outcome, RejectedMessage):
                assert letter["error_type"] == outcome.error_type
                assert named(letter["error_message"]) == named(outcome.message)  # the clock moved on
            else:
                assert letter["error_type"] == "LateEvent"
        else:
            assert isinstance(outcome, Transaction), f"message {i}: no dead letter, yet {outcome!r}"
            expected_ids.append((outcome.user_id, outcome.transaction_id))
    records = sent.values("features")
    assert len(records) + len(letters) == len(batch)
    assert Counter((r["user_id"], r["transaction_id"]) for r in records) == Counter(expected_ids)
    for key, record, _ in sent.by_topic.get("features", []):
        assert key == record["user_id"].encode()

    # The values: the oracle, for users whose timestamps stay where nothing expires.
    ordinary = ordinary_users(batch, outcomes)
    expected = replay_in_worker_order(batch, outcomes, first, ordinary)
    ordinary_records = [r for r in records if r["user_id"] in ordinary]
    assert len(ordinary_records) == len(expected.records)
    for got, want in zip(ordinary_records, expected.records, strict=True):
        assert_record_matches(got, want)
    late = {
        offset
        for offset, letter in letters.items()
        if letter["error_type"] == "LateEvent"
        and getattr(outcomes[offset - first], "user_id", None) in ordinary
    }
    assert late == expected.late
    assert_log_lines_bounded(caplog)
    event(f"feature records: {min(len(records), 5)}+")
    event(f"re-keyed: {min(len(hops), 3)}+")
    event(f"compared with the oracle: {min(len(ordinary_records), 5)}+")
    for letter in letters.values():
        event(f"dead letter {letter['error_type']}")
    event(f"log records: {min(len(caplog.records), 5)}+")

    # Afterwards: one more transaction of each ordinary user, and a new user's, processed normally.
    sent.by_topic.clear()
    after: list[tuple[bytes | None, bytes | None]] = []
    newcomer = user_id(run, 99)
    for uid in [*sorted(ordinary), newcomer]:
        txn = Transaction(f"after-{run}", uid, 7.25, "m-after", "travel", time.time() - 1, True)
        after.append((uid.encode(), orjson.dumps(txn.to_dict())))
        verdict, record = expected.oracle.process(txn.to_dict())
        assert verdict == "accepted" and record is not None
        expected.records.append(record)
    await through_the_batch_path(sent, app_settings.transactions_topic, after)
    assert "dlq" not in sent.by_topic and "rekey" not in sent.by_topic
    after_records = sent.values("features")
    assert len(after_records) == len(after)
    for got, want in zip(after_records, expected.records[-len(after) :], strict=True):
        assert_record_matches(got, want)
    assert after_records[-1]["tx_count_24h"] == 1 and after_records[-1]["seconds_since_last_tx"] is None


def ordinary_users(batch: list[tuple[bytes | None, bytes | None]], outcomes: list[Any]) -> set[str]:
    """Users of the example whose valid transactions are all recent (the others may expire)."""
    users: dict[str, bool] = {}
    for outcome in outcomes:
        if isinstance(outcome, Transaction):
            recent = ORDINARY_SINCE <= outcome.timestamp
            users[outcome.user_id] = users.get(outcome.user_id, True) and recent
    return {uid for uid, recent in users.items() if recent and uid.startswith("fz")}


def replay_in_worker_order(
    batch: list[tuple[bytes | None, bytes | None]], outcomes: list[Any], first: int, ordinary: set[str]
) -> Expected:
    """The oracle's records, in the worker's order: the partition's own messages, then re-keyed ones."""
    expected = Expected()
    own: list[tuple[int, Transaction]] = []
    rekeyed: list[tuple[int, Transaction]] = []
    for i, ((key, _), outcome) in enumerate(zip(batch, outcomes, strict=True)):
        if isinstance(outcome, Transaction) and outcome.user_id in ordinary:
            (own if key == outcome.user_id.encode() else rekeyed).append((first + i, outcome))
    for offset, txn in own + rekeyed:
        verdict, record = expected.oracle.process(txn.to_dict())
        if verdict == "late":
            expected.late.add(offset)
        else:
            assert record is not None
            expected.records.append(record)
    return expected
