"""The feature agent: every inbound message ends as a feature record or a dead letter.

Per message, inside the agent (Faust acks a message whose agent raised and
never retries it, so nothing may escape):

1. ``transactions``: strict JSON + SPEC 3 validation, else ``DecodeError`` /
   ``ValidationError`` to the DLQ. A message whose key is not its ``user_id``,
   or that sits on another partition than the one owning the user (a producer
   with another partitioner), is forwarded to the internal re-keying topic,
   on the user's partition, with its original coordinates.
2. The user's window decides (SPEC 4): accepted -> one table write (rarely
   two) and a feature record; duplicate -> the record again; late ->
   ``LateEvent`` to the DLQ.
3. Anything unexpected -> ``ProcessingError`` to the DLQ, logged with the
   coordinates; the stream goes on.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiokafka.partitioner import murmur2
from faust import current_event

from app.faust_ext import is_fencing
from app.main import app, dlq_topic, features_topic, inbound_topic, rekey_topic, settings
from records.errors import ErrorType, LateEvent, ProcessingError, RejectedMessage
from records.schema import DeadLetter, UserFeatures
from records.transaction import Transaction, parse_transaction
from tables import restore as _bulk_restore  # noqa: F401  (connects the bulk changelog restore)
from tables.user_state import changelog_topic_name, on_changelog_delivered, user_counts, windows

log = logging.getLogger(__name__)

#: The agent lets other tasks run at least this often (seconds of work).
YIELD_EVERY_S = 0.005


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message first entered the system (kept across the re-keying hop)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_s: float | None
    raw_value: bytes | None


def owner_partition(user_key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives the key, as Faust routes."""
    return int(murmur2(user_key) & 0x7FFFFFFF) % partitions


async def send_dead_letter(origin: Origin, error_type: ErrorType, error_message: str) -> None:
    log.warning(
        "dead letter %s from %s[%s]@%s key=%r: %s",
        error_type,
        origin.topic,
        origin.partition,
        origin.offset,
        origin.key,
        error_message,
    )
    letter = DeadLetter.for_message(
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        key=origin.key,
        error_type=error_type,
        error_message=error_message,
        failed_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        raw_value=origin.raw_value,
    )
    await publish(dlq_topic, origin.key, letter.encode())
    app.metrics.on_dead_letter(error_type)


def _transactional_id() -> str | None:
    """Under exactly_once, the transaction of the partition being processed.

    Faust's transaction manager would pick the id from the *destination*
    topic's partition and topic group, so a record for another topic
    (features, dead letters, changelog, the re-keying hop) would land in a
    transaction that is not committed with the input offsets.
    """
    if settings.processing_guarantee != "exactly_once":
        return None
    event = current_event()
    if event is None:
        return None
    source = event.message.tp
    return f"{app.conf.id}-{app.assignor.group_for_topic(source.topic)}-{source.partition}"


async def send(
    topic_name: str, key: bytes | None, value: bytes | None, partition: int | None
) -> asyncio.Future[Any]:
    """Hand one message to the producer; return its delivery future once the producer holds it.

    Straight through Faust's producer, not Faust's topic API (per-message
    machinery we do not use). Delivery is awaited by the offset commit:
    Faust flushes the producer before committing offsets, and a transaction
    commit flushes it too. A message the producer gives up on stops the
    worker before its offset can be committed; a restart processes it again
    and the duplicate rule makes that safe.

    Under exactly_once, a fenced transaction is not a failure but a migrated
    partition (``ExtendedApp.task_migrated``): what the worker still does in
    its name is dropped here, and its messages are processed again by the
    partition's next owner, from the committed offsets.
    """
    tid = _transactional_id()
    if tid is not None and tid in app.fenced_transactional_ids:
        return _dropped()
    try:
        fut = cast(
            "asyncio.Future[Any]",
            await app.producer.send(topic_name, key, value, partition, None, None, transactional_id=tid),
        )
    except Exception as exc:
        if tid is None or not is_fencing(exc):
            raise
        await app.task_migrated(tid, exc)
        return _dropped()
    fut.add_done_callback(functools.partial(_check_delivered, tid))
    return fut


def _dropped() -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.cancel()
    return fut


def _check_delivered(tid: str | None, fut: Any) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is None:
        return
    if tid is not None and is_fencing(exc):
        task = asyncio.ensure_future(app.task_migrated(tid, exc))
        _background.add(task)
        task.add_done_callback(_background.discard)
        return
    log.critical("producer gave up on a message (%r); stopping before its offset is committed", exc)
    logging.shutdown()
    os._exit(70)


_background: set[asyncio.Future[None]] = set()


async def publish(topic: Any, key: bytes | None, value: bytes, partition: int | None = None) -> None:
    """Send one output message (features, dead letter, re-keying hop)."""
    await send(topic.get_topic_name(), key, value, partition)


async def send_changelog(changes: list[tuple[bytes, bytes | None]]) -> None:
    """The current message's state changes, to the table's changelog partition (= input partition)."""
    event = current_event()
    assert event is not None
    partition = event.message.partition
    for key, value in changes:
        fut = await send(changelog_topic_name(), key, value, partition)
        fut.add_done_callback(_persisted)


def _persisted(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is None:
        on_changelog_delivered(fut.result())


def _envelope(origin: Origin, txn: Transaction) -> bytes:
    return orjson.dumps(
        {
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": origin.offset,
            "key": None if origin.key is None else base64.b64encode(origin.key).decode("ascii"),
            "timestamp_s": origin.timestamp_s,
            "raw_value": None if origin.raw_value is None else origin.raw_value.decode("utf-8", "replace"),
            "txn": txn.to_dict(),
        }
    )


def _open_envelope(value: bytes) -> tuple[Origin, Transaction]:
    env: dict[str, Any] = orjson.loads(value)
    raw = env["raw_value"]
    origin = Origin(
        topic=env["topic"],
        partition=int(env["partition"]),
        offset=int(env["offset"]),
        key=None if env["key"] is None else base64.b64decode(env["key"]),
        timestamp_s=env["timestamp_s"],
        raw_value=None if raw is None else raw.encode("utf-8"),
    )
    return origin, Transaction.from_dict(env["txn"])


async def handle_message(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, timestamp_s: float | None
) -> None:
    """Process one inbound message; never raises for bad data."""
    origin = Origin(topic, partition, offset, key, timestamp_s, value)
    try:
        if topic == settings.rekey_topic:
            origin, txn = _open_envelope(value or b"")
        else:
            try:
                txn = parse_transaction(value, time.time(), settings.max_clock_skew_s)
            except RejectedMessage as exc:
                await send_dead_letter(origin, exc.error_type, exc.message)
                return
            user_key = txn.user_id.encode("utf-8")
            expected = owner_partition(user_key, settings.topic_partitions)
            if key != user_key or partition != expected:
                await publish(rekey_topic, user_key, _envelope(origin, txn), partition=expected)
                return
        await process_transaction(origin, txn, partition)
    except Exception as exc:
        log.exception("processing failed for %s[%s]@%s key=%r", topic, partition, offset, key)
        await send_dead_letter(origin, ProcessingError.error_type, f"{type(exc).__name__}: {exc}")


async def process_transaction(origin: Origin, txn: Transaction, partition: int) -> None:
    """``txn`` of the user owned by ``partition`` (of the message being processed)."""
    window = windows.load(txn.user_id)
    is_new_user = window is None
    if window is None:
        window = windows.new(txn.user_id)
    try:
        outcome = window.apply(txn, computed_at_s=time.time())
        changes = windows.save(window, outcome.writes, partition) if outcome.writes else []
    except Exception:
        windows.forget(txn.user_id)  # the cached window may be half-updated: reload it
        raise
    if changes:
        await send_changelog(changes)
    if outcome.verdict == "late":
        await send_dead_letter(origin, LateEvent.error_type, outcome.reason)
        return
    assert outcome.features is not None
    metrics = app.metrics
    if outcome.verdict == "accepted":
        metrics.on_processed()
        if is_new_user:
            user_counts.on_new_user(partition)
    else:
        metrics.on_duplicate()
    features = UserFeatures.from_values(outcome.features)
    metrics.on_feature(features.computed_at, origin.timestamp_s)
    await publish(features_topic, txn.user_id.encode("utf-8"), features.encode())


@app.agent(inbound_topic, name="velocity-features")
async def compute_features(stream: Any) -> None:
    # Nothing in a message's processing has to wait when the stream buffer is
    # full and the producer has room, so without a deliberate yield the agent
    # would work through a whole fetched batch (thousands of messages, over a
    # second) before a lookup, a timer or the consumer's next batch got the
    # event loop.
    yielded_at = time.monotonic()
    async for event in stream.events():
        message = event.message
        # A message is processed and acked under the lock every offset commit
        # takes, so a commit never splits a message (app/faust_ext.py).
        async with app.message_boundary:
            if app.is_stale(message):
                # Fetched before a rebalance (processed again by the partition's next owner)
                # or again after a seek back (processed already, in this transaction).
                continue
            await handle_message(
                message.topic,
                message.partition,
                message.offset,
                message.key,
                message.value,
                message.timestamp,
            )
            app.processed(message)
            event.ack()
        if time.monotonic() - yielded_at > YIELD_EVERY_S:
            await asyncio.sleep(0)
            yielded_at = time.monotonic()
