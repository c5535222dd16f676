"""Fixes to faust-streaming behaviour we depend on, applied when the App is built.

Each is small, explained, and covered by an integration test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from faust.stores import rocksdb as faust_rocksdb
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

#: Held by the agent while it processes one message and acks it, and by every
#: offset commit. See :func:`_commit_between_messages`.
message_boundary = asyncio.Lock()

#: Called after every offset commit that committed something.
after_commit: list[Callable[[], None]] = []

#: Awaited before Faust reads where to start restoring active changelog
#: partitions: ``hook(tps, highwaters)`` may bring the local store forward.
before_active_restore: list[Callable[[set[Any], Mapping[Any, int]], Any]] = []


async def _highwaters_from_the_broker(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
    # Faust (0.15.3), in a transaction, takes the "highwater" of a changelog
    # partition from consumer.last_stable_offset(), which is only known after a
    # fetch response for that partition: before one it is None, recovery sees
    # -1, and either skips restoring the partition (a stale standby becomes
    # the active state) or fails with ConsistencyError (faust-streaming#158).
    # end_offsets() asks the broker and honours the consumer's isolation level:
    # under read_committed it *is* the last stable offset.
    return await self._ensure_consumer().end_offsets(partitions)  # type: ignore[no-any-return]


_faust_force_commit = faust_consumer.Consumer.force_commit


async def _commit_between_messages(self: Any, *args: Any, **kwargs: Any) -> bool:
    # Faust commits (a timer, or wait_empty at a rebalance) the offsets of the
    # messages acked so far together with everything already sent, and an
    # agent's message is acked only when the agent asks for the next one. A
    # commit that falls between a message's sends and its ack puts the
    # message's output and state changes in one transaction and its offset in
    # the next: killed in between, the new owner processes the message again
    # on top of state that already holds it, and its record appears twice to
    # a read_committed consumer. The agent holds this lock from a message's
    # first read to its explicit ack, so a commit sees whole messages only.
    async with message_boundary:
        did_commit: bool = await _faust_force_commit(self, *args, **kwargs)
        if did_commit:
            for callback in after_commit:
                callback()
        return did_commit


_faust_build_offsets = faust_recovery.Recovery._build_offsets


async def _build_offsets_after_bulk_restore(
    self: Any, consumer: Any, tps: set[Any], destination: Any, title: str
) -> None:
    # Faust restores a changelog one event at a time through a queue (a few
    # thousand records/s); tables/restore.py reads the bulk of it with a
    # plain consumer and writes RocksDB batches first, then Faust starts
    # from the persisted offset it leaves and reads only what remains.
    if title == "active" and tps:
        for hook in before_active_restore:
            await hook(set(tps), dict(self.active_highwaters))
        for tp in tps:  # re-read what the hook persisted, as Recovery.add_active does
            table = self.tp_to_table.get(tp)
            persisted = table.persisted_offset(tp) if table is not None else None
            if persisted is not None and (destination[tp] is None or persisted > destination[tp]):
                destination[tp] = persisted
    await _faust_build_offsets(self, consumer, tps, destination, title)


def apply() -> None:
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters_from_the_broker
    faust_consumer.Consumer.force_commit = _commit_between_messages  # type: ignore[method-assign]
    faust_recovery.Recovery._build_offsets = _build_offsets_after_bulk_restore  # type: ignore[method-assign]
    # With python-rocksdb importable (the benchmark extra installs
    # faust-streaming-rocksdb to compare bindings), Faust narrows the error it
    # treats as "partition still locked by the previous owner, retry" to
    # rocksdb.errors.RocksIOError, which rocksdict never raises: a table
    # partition opened during a rebalance would then fail instead of waiting.
    if faust_rocksdb.USE_ROCKSDICT:
        faust_rocksdb.ERRORS_ROCKS_IO_ERROR = Exception
