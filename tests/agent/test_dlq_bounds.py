"""Dead letters, re-keying envelopes and log lines stay bounded, whatever the size of a message.

The producer here behaves as aiokafka's does at its boundary: a record whose estimated size is over
``producer_max_request_size`` (Faust's default 1,000,000 bytes) raises MessageSizeTooLargeError from
``send`` (aiokafka ``AIOKafkaProducer._serialize``). In a worker that error, raised while sending a
dead letter, would escape the batch and stop the worker with status 70 -- and again after each restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from faust.types import TP

from agents import features
from app.main import app
from app.main import settings as app_settings
from tests.agent.producer_fake import Sent, running_agent

LIMIT = app.conf.producer_max_request_size  # 1,000,000 by default


@pytest.fixture
async def sent() -> AsyncIterator[Sent]:
    s = Sent(keep_bytes=True, max_request_size=LIMIT)
    async with running_agent(s):
        yield s


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
async def test_a_dead_letter_of_a_large_value_fits_the_producer(sent: Sent, name: str) -> None:
    key, value, error_type = CASES[name]
    await batch(app_settings.transactions_topic, [(key, value)])
    ((_dlq_key, letter, raw),) = sent.by_topic["dlq"]
    assert raw is not None and len(raw) <= LIMIT
    assert letter["error_type"] == error_type
    assert letter["raw_value_truncated"] is True
    assert letter["raw_value_bytes"] == len(value)
    assert value.decode("utf-8", "replace").startswith(letter["raw_value"].rstrip("\ufffd"))


async def test_a_valid_transaction_of_999_900_bytes_under_another_key_is_processed(sent: Sent) -> None:
    # Under MAX_MESSAGE_BYTES, but its re-keying envelope (raw value + transaction) is over 1,000,000 bytes.
    await batch(app_settings.transactions_topic, [(b"not-the-user", valid("big-rekey", 999_900))])
    hops = sent.by_topic.pop("rekey")
    await batch(app_settings.rekey_topic, [(k, raw) for k, _, raw in hops])
    assert [r["transaction_id"] for _, r, _ in sent.by_topic["features"]] == ["t1"]


async def test_a_huge_key_costs_one_bounded_dead_letter_or_record(
    sent: Sent, caplog: pytest.LogCaptureFixture
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
