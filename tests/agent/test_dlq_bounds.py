"""Dead letters, re-keying envelopes and log lines stay bounded, whatever the size of a message.

The producer here behaves as aiokafka's does at its boundary: a record whose estimated size is over
``producer_max_request_size`` (Faust's default 1,000,000 bytes) raises MessageSizeTooLargeError from
``send`` (aiokafka ``AIOKafkaProducer._serialize``). In a worker that error, raised while sending a
dead letter, would escape the batch and stop the worker with status 70 -- and again after each restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.types import TP

from agents import features
from app.main import app, dlq_topic, features_topic, monitoring_topic, predictions_topic, rekey_topic
from app.main import settings as app_settings
from tables.user_state import changelog_topic_name, windows

LIMIT = app.conf.producer_max_request_size  # 1,000,000 by default


class SizedSent:
    def __init__(self) -> None:
        self.by_topic: dict[str, list[tuple[bytes | None, Any, bytes | None]]] = {}
        self.names = {
            features_topic.get_topic_name(): "features",
            dlq_topic.get_topic_name(): "dlq",
            rekey_topic.get_topic_name(): "rekey",
            changelog_topic_name(): "changelog",
            predictions_topic.get_topic_name(): "predictions",
            monitoring_topic.get_topic_name(): "monitoring",
        }

    async def send(
        self, topic_name: str, key: bytes | None, value: bytes | None, partition: int | None, tid: str | None
    ) -> Any:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
        if size > LIMIT:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        name = self.names[topic_name]
        decoded = value if name == "changelog" else orjson.loads(value or b"")
        self.by_topic.setdefault(name, []).append((key, decoded, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.cancel()
        return fut

    async def send_many(
        self,
        topic_name: str,
        partition: int,
        records: list[tuple[bytes | None, bytes | None]],
        tid: str | None,
    ) -> None:
        for key, value in records:
            await self.send(topic_name, key, value, partition, tid)


@pytest.fixture
async def sent() -> AsyncIterator[SizedSent]:
    s = SizedSent()
    windows.clear_cache()
    app.processed_through.clear()
    with (
        patch.object(features, "send", s.send),
        patch.object(features, "send_many", s.send_many),
        patch.object(features, "copartitioned", lambda work, topic_name: True),
    ):
        async with features.compute_features.test_context():
            yield s
    app.processed_through.clear()


class Record:
    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.offset, self.key, self.value = offset, key, value
        self.timestamp = int(time.time() * 1000)


async def batch(topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    tp = TP(topic, 0)
    first = app.processed_through.get(tp, -1) + 1
    failed: list[BaseException] = []

    def stop_if_failed(task: Any) -> None:  # instead of os._exit(70)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            failed.append(exc)

    handler = app.batch_handler
    assert handler is not None
    with patch.object(features, "_stop_if_failed", stop_if_failed):
        await handler(
            {tp: [Record(first + i, k, v) for i, (k, v) in enumerate(messages)]}, app.consumer_generation_id
        )
    assert not failed, f"the batch failed: the worker would stop (exit 70): {failed[0]!r}"


def valid(user: str, size: int = 0) -> bytes:
    body = orjson.dumps(
        {
            "transaction_id": "t1",
            "user_id": user,
            "amount": 1.0,
            "merchant_id": "m",
            "timestamp": time.time() - 10,
        }
    )
    if size:
        body = body[:-1] + b',"pad":"' + b"x" * (size - len(body) - 9) + b'"}'
        assert len(body) == size
    return body


CASES = {
    # name: (key, value, expected error type)
    "200 KB of control characters (DecodeError; 1.2 MB once JSON-escaped)": (
        b"k",
        b"\x01" * 200_000,
        "DecodeError",
    ),
    "999,900 bytes, amount invalid (ValidationError)": (
        b"u-inv",
        valid("u-inv", 999_900).replace(b'"amount":1.0', b'"amount":-1.0'),
        "ValidationError",
    ),
    "2 MiB, over MAX_MESSAGE_BYTES (DecodeError)": (b"k", b" " * (2 * 1024 * 1024), "DecodeError"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_a_dead_letter_of_a_large_value_fits_the_producer(sent: SizedSent, name: str) -> None:
    key, value, error_type = CASES[name]
    await batch(app_settings.transactions_topic, [(key, value)])
    ((_dlq_key, letter, raw),) = sent.by_topic["dlq"]
    assert raw is not None and len(raw) <= LIMIT
    assert letter["error_type"] == error_type
    assert letter["raw_value_truncated"] is True
    assert letter["raw_value_bytes"] == len(value)
    assert value.decode("utf-8", "replace").startswith(letter["raw_value"].rstrip("\ufffd"))


async def test_a_valid_transaction_of_999_900_bytes_under_another_key_is_processed(sent: SizedSent) -> None:
    # Under MAX_MESSAGE_BYTES, but its re-keying envelope (raw value + transaction) is over 1,000,000 bytes.
    await batch(app_settings.transactions_topic, [(b"not-the-user", valid("big-rekey", 999_900))])
    hops = sent.by_topic.pop("rekey")
    await batch(app_settings.rekey_topic, [(k, raw) for k, _, raw in hops])
    assert [r["transaction_id"] for _, r, _ in sent.by_topic["features"]] == ["t1"]


async def test_a_huge_key_costs_one_bounded_dead_letter_or_record(
    sent: SizedSent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    key = b"k" * 999_000
    await batch(app_settings.transactions_topic, [(key, valid("huge-key-user")), (key, b"{not json")])
    hops = sent.by_topic.pop("rekey", [])
    if hops:
        await batch(app_settings.rekey_topic, [(k, raw) for k, _, raw in hops])
    assert len(sent.by_topic.get("features", [])) + len(sent.by_topic.get("dlq", [])) == 2
    for dlq_key, _letter, raw in sent.by_topic.get("dlq", []):
        assert raw is not None and len(raw) + len(dlq_key or b"") <= LIMIT
    for rec in caplog.records:
        if rec.levelno >= logging.INFO:
            assert len(rec.getMessage()) <= 2_000, f"{rec.levelname}: {len(rec.getMessage())} chars"
