"""Fixes to faust-streaming behaviour we depend on, applied when the App is built.

Each is small, explained, and covered by an integration test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


async def _highwaters_from_the_broker(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
    # Faust (0.15.3), in a transaction, takes the "highwater" of a changelog
    # partition from consumer.last_stable_offset(), which is only known after a
    # fetch response for that partition: before one it is None, recovery sees
    # -1, and either skips restoring the partition (a stale standby becomes
    # the active state) or fails with ConsistencyError (faust-streaming#158).
    # end_offsets() asks the broker and honours the consumer's isolation level:
    # under read_committed it *is* the last stable offset.
    return await self._ensure_consumer().end_offsets(partitions)  # type: ignore[no-any-return]


def apply() -> None:
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters_from_the_broker
