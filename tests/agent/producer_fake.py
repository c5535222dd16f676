"""The Kafka producer as the agent tests see it: a recorder of what the hot path hands over.

``features.send`` and ``features.send_many`` are the boundary (nothing of the code under test is
replaced); :func:`running_agent` patches them for one ``compute_features.test_context()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import patch

import orjson
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from agents import features
from app.main import app, dlq_topic, features_topic, monitoring_topic, predictions_topic, rekey_topic
from tables.user_state import changelog_topic_name, windows


class Sent:
    """What the agent handed to the producer, per topic.

    ``by_topic[name]`` holds ``(key, decoded value, third)`` per record, where ``third`` is the
    partition, or with ``keep_bytes`` the value's bytes. Values are decoded as strict JSON (except
    the changelog's), so a record that is not fails the test. With ``max_request_size`` a record
    larger than that is refused as the producer refuses it.
    """

    def __init__(self, *, keep_bytes: bool = False, max_request_size: int | None = None) -> None:
        self.keep_bytes = keep_bytes
        self.max_request_size = max_request_size
        self.by_topic: dict[str, list[tuple[bytes | None, Any, Any]]] = {}
        self.names = {
            features_topic.get_topic_name(): "features",
            dlq_topic.get_topic_name(): "dlq",
            rekey_topic.get_topic_name(): "rekey",
            changelog_topic_name(): "changelog",
            predictions_topic.get_topic_name(): "predictions",
            monitoring_topic.get_topic_name(): "monitoring",
        }

    def values(self, name: str) -> list[Any]:
        return [decoded for _, decoded, _ in self.by_topic.get(name, [])]

    async def send(
        self, topic_name: str, key: bytes | None, value: bytes | None, partition: int | None, tid: str | None
    ) -> Any:
        if self.max_request_size is not None:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > self.max_request_size:
                raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        name = self.names[topic_name]
        decoded = value if name == "changelog" else orjson.loads(value or b"")
        self.by_topic.setdefault(name, []).append((key, decoded, value if self.keep_bytes else partition))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.cancel()  # never delivered: no persisted offset to record
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


@asynccontextmanager
async def running_agent(sent: Sent) -> AsyncIterator[Any]:
    """The feature agent's test context, its sends going to ``sent``; yields the wrapped agent."""
    windows.clear_cache()
    app.processed_through.clear()  # each test_context starts again at offset 0
    with (
        patch.object(features, "send", sent.send),
        patch.object(features, "send_many", sent.send_many),
        patch.object(features, "copartitioned", lambda work, topic_name: True),
    ):
        async with features.compute_features.test_context() as wrapped:
            yield wrapped
    app.processed_through.clear()  # nothing here was really consumed: leave nothing to commit
