"""The hot path: every inbound message ends as a feature record or a dead letter.

The worker's consumer hands each fetch of the input and re-keying topics to
:class:`FeatureBatches` (``Consumer._drain_messages`` in app/faust_ext.py;
ARCHITECTURE.md says which Faust layers that goes around and why). Per
message, nothing may escape (a message is never retried):

1. ``transactions``: strict JSON + SPEC 3 validation, else ``DecodeError`` /
   ``ValidationError`` to the DLQ. A message whose key is not its ``user_id``,
   or that sits on another partition than the one owning the user (a producer
   with another partitioner), is forwarded to the internal re-keying topic,
   on the user's partition, with its original coordinates.
2. The user's window decides (SPEC 4): accepted -> one state write (rarely
   two) and a feature record; duplicate -> the record again; late ->
   ``LateEvent`` to the DLQ.
3. Anything unexpected -> ``ProcessingError`` to the DLQ, logged with the
   coordinates; the stream goes on.

Per partition and batch: the state writes go to RocksDB in one write batch,
the changelog and feature records to the producer as whole Kafka batches,
and the last offset processed to ``app.processed_through``, which the next
offset commit commits (in the partition's transaction, under exactly_once).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from faust.exceptions import ProducerSendError
from faust.types import TP

from app.faust_ext import kafka_producer
from app.main import (
    app,
    dlq_topic,
    features_topic,
    inbound_topic,
    label_join,
    monitoring_topic,
    predictions_topic,
    rekey_topic,
    scorer,
    settings,
)
from app.scoring import prediction_value
from records.errors import ErrorType, LateEvent, ProcessingError, RejectedMessage
from records.label import (
    LABEL_KEY,
    LoggedPrediction,
    joined_label,
    logged_event_time,
    open_carried_label,
    prediction_key,
)
from records.schema import MAX_DLQ_KEY_BYTES, MAX_DLQ_RAW_BYTES, DeadLetter, UserFeatures
from records.transaction import Transaction, parse_transaction
from tables import restore as _bulk_restore  # noqa: F401  (connects the bulk changelog restore)
from tables.expiry import TICK_KEY, head_latest_ts
from tables.monitoring import observer as drift_observer
from tables.user_state import (
    PartitionWriter,
    changelog_topic_name,
    on_changelog_delivered,
    owner_partition,
    stream_times,
    sweeper,
    user_counts,
    windows,
)
from tables.window import UserWindow, head_key

log = logging.getLogger(__name__)

features_topic_name: str = features_topic.get_topic_name()
rekey_topic_name: str = settings.rekey_topic
predictions_topic_name: str = predictions_topic.get_topic_name()

#: Whether every prediction is logged for the label join (SPEC 10; LABEL_WAIT_S=0 turns it off).
LOG_PREDICTIONS = label_join(settings)
#: Key of a joined label on the monitoring topic (partials carry the worker's name).
MONITORING_LABEL_KEY = b"label"

#: The hot path lets other tasks run at least this often (seconds of work).
YIELD_EVERY_S = 0.002
#: Work a partition's batch spends deleting users the sweep found expired, at most (seconds).
EXPIRE_BUDGET_S = 0.001


@dataclass(slots=True)  # immutable by convention; not frozen: see Transaction
class Origin:
    """Where a message first entered the system (kept across the re-keying hop)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_s: float | None
    raw_value: bytes | None
    raw_size: int | None = None  # the original value's size when raw_value was cut (the re-keying hop)


class Sender(Protocol):
    """What outputs need of the work they belong to: its transaction (None: no transaction)."""

    @property
    def tid(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class TransactionOf:
    """The outputs of a message outside the batch path (its input partition's transaction)."""

    tid: str | None


async def send_dead_letter(work: Sender, origin: Origin, error_type: ErrorType, error_message: str) -> None:
    error_message = cut(error_message, MAX_REASON_CHARS)
    log.warning(
        "dead letter %s from %s[%s]@%s key=%s: %s",
        error_type,
        origin.topic,
        origin.partition,
        origin.offset,
        key_preview(origin.key),
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
        raw_size=origin.raw_size,
    )
    key = None if origin.key is None else origin.key[:MAX_DLQ_KEY_BYTES]  # SPEC 6: the original key (cut)
    await publish(work, dlq_topic, key, letter.encode())
    app.metrics.on_dead_letter(error_type)


#: A dead letter's reason, and any logged one, is cut at this many characters.
MAX_REASON_CHARS = 500


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def key_preview(key: bytes | None) -> str:
    """A key for a log line: at most 100 bytes of it, and its length when longer."""
    if key is None or len(key) <= 100:
        return repr(key)
    return f"{key[:100]!r}... ({len(key)} bytes)"


def transactional_id(tp: TP) -> str | None:
    """Under exactly_once, the transaction that the records of input partition ``tp`` belong to.

    Faust's transaction manager would pick the id from the *destination*
    topic's partition and topic group, so a record for another topic
    (features, dead letters, changelog, the re-keying hop) would land in a
    transaction that is not committed with the input offsets.
    """
    if settings.processing_guarantee != "exactly_once":
        return None
    return f"{app.conf.id}-{app.assignor.group_for_topic(tp.topic)}-{tp.partition}"


async def send(
    topic_name: str, key: bytes | None, value: bytes | None, partition: int | None, tid: str | None
) -> asyncio.Future[Any]:
    """Hand one message to the producer; return its delivery future once the producer holds it.

    Straight to the aiokafka producer behind Faust's (its transaction's,
    under exactly_once): Faust's ``Producer.send`` adds a signal and a lock
    per message that we do not use. Delivery is awaited by the offset
    commit: Faust flushes the producer before committing offsets, and our
    transaction commit flushes the transaction's producer first
    (``faust_ext.Producer.commit_transactions``). A message the producer gives up on
    stops the worker before its offset can be committed; a restart processes
    it again and the duplicate rule makes that safe.

    Under exactly_once, a fenced transaction is not a failure but a migrated
    partition (``ExtendedApp.task_migrated``): what the worker still does in
    its name is dropped here, and its messages are processed again by the
    partition's next owner, from the committed offsets.
    """
    if tid is not None and tid in app.fenced_transactional_ids:
        return _dropped()
    try:
        producer = kafka_producer(app, tid)
        if producer is None:
            raise ProducerSendError(f"No transaction producer found for : {tid}")
        fut: asyncio.Future[Any] = await producer.send(topic_name, value, key=key, partition=partition)
    except Exception as exc:
        if tid is None or not app.transaction_lost(tid, exc):
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
    if tid is not None and app.transaction_lost(tid, exc):
        task = asyncio.ensure_future(app.task_migrated(tid, exc))
        _background.add(task)
        task.add_done_callback(_background.discard)
        return
    log.critical("producer gave up on a message (%r); stopping before its offset is committed", exc)
    logging.shutdown()
    os._exit(70)


_background: set[asyncio.Future[None]] = set()


async def publish(
    work: Sender, topic: Any, key: bytes | None, value: bytes, partition: int | None = None
) -> None:
    """Send one output message (features, dead letter, re-keying hop)."""
    await send(topic.get_topic_name(), key, value, partition, work.tid)


async def send_many(
    topic_name: str, partition: int, records: list[tuple[bytes | None, bytes | None]], tid: str | None
) -> None:
    """Hand records for one partition to the producer as whole batches, in order.

    aiokafka's ``create_batch``/``send_batch``: the records are framed into
    one closed batch (or a few, of ``PRODUCER_MAX_BATCH_SIZE``) that the
    producer sends at once, without its per-message path (partitioner,
    accumulator, one delivery future per record). Delivery, fencing and
    failure are handled as for :func:`send`; a delivered changelog batch
    records the offset of its last record.
    """
    if not records or (tid is not None and tid in app.fenced_transactional_ids):
        return
    producer = kafka_producer(app, tid)
    if producer is None:
        if tid is None:
            raise ProducerSendError("the producer is not running")
        await app.task_migrated(tid, ProducerSendError(f"No transaction producer found for : {tid}"))
        return
    pending = iter(records)
    while True:
        builder = producer.create_batch()
        count = 0
        for key, value in pending:
            if builder.append(key=key, value=value, timestamp=None) is None:
                pending = itertools.chain([(key, value)], pending)  # starts the next batch
                break
            count += 1
        if count == 0:
            return
        builder.close()  # complete: the producer sends it now instead of waiting for more
        try:
            fut: asyncio.Future[Any] = await producer.send_batch(builder, topic_name, partition=partition)
        except Exception as exc:
            if tid is None or not app.transaction_lost(tid, exc):
                raise
            await app.task_migrated(tid, exc)
            return
        fut.add_done_callback(functools.partial(_check_delivered, tid))
        if topic_name == changelog_topic_name():
            fut.add_done_callback(functools.partial(_changelog_batch_delivered, count))


def _changelog_batch_delivered(count: int, fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is None:
        on_changelog_delivered(fut.result(), count)


class Outbox:
    """The features and changelog records of one partition's batch, sent together at its end."""

    __slots__ = ("_records", "tid")

    def __init__(self, tid: str | None) -> None:
        self.tid = tid
        self._records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}

    def add(self, topic_name: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        records = self._records.get((topic_name, partition))
        if records is None:
            records = self._records[(topic_name, partition)] = []
        records.append((key, value))

    async def flush(self) -> None:
        records, self._records = self._records, {}
        for (topic_name, partition), batch in records.items():
            await send_many(topic_name, partition, batch, self.tid)


_copartitioned: dict[str, bool] = {}


def copartitioned(work: PartitionWork, topic_name: str) -> bool:
    """Whether ``topic_name`` has the input's partitions (a user's records then go to its partition)."""
    known_answer = _copartitioned.get(topic_name)
    if known_answer is None:
        producer = kafka_producer(app, work.tid)
        known = None if producer is None else producer.client.cluster.partitions_for_topic(topic_name)
        if known is None:
            return False  # not known yet: send one by one (the producer fetches the metadata)
        known_answer = _copartitioned[topic_name] = len(known) == settings.topic_partitions
    return known_answer


def _envelope(origin: Origin, txn: Transaction) -> bytes:
    """The re-keying hop's record: the transaction and where it came from.

    Its original bytes ride along for a dead letter later (a late event), cut as a dead letter
    would keep them (with their size), so that the envelope of a large value still fits in a
    Kafka message; the key is a valid user's (checked), so small.
    """
    raw = origin.raw_value
    return orjson.dumps(
        {
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": origin.offset,
            "key": None
            if origin.key is None
            else base64.b64encode(origin.key[:MAX_DLQ_KEY_BYTES]).decode("ascii"),
            "timestamp_s": origin.timestamp_s,
            "raw_value": None if raw is None else raw[:MAX_DLQ_RAW_BYTES].decode("utf-8", "replace"),
            "raw_size": None if raw is None else len(raw) if origin.raw_size is None else origin.raw_size,
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
        raw_size=env.get("raw_size"),
    )
    return origin, Transaction.from_dict(env["txn"])


class PartitionWork:
    """Where the outputs and state writes of one input partition's records go, for one batch."""

    __slots__ = ("changelog", "outbox", "partition", "state", "tid")

    def __init__(self, tp: TP) -> None:
        self.changelog = changelog_topic_name()
        self.partition = tp.partition
        self.tid = transactional_id(tp)
        self.state: PartitionWriter = windows.writer(tp.partition)
        self.outbox = Outbox(self.tid)

    def flush_state(self) -> None:
        """Write the state batch, with the partition's stream time if it moved."""
        write = stream_times.take_write(self.partition)
        if write is not None:
            self.state.put(*write)
            self.outbox.add(changelog_topic_name(), self.partition, *write)
        self.state.flush()

    async def finish(self) -> None:
        """Write the state batch, then hand the outputs to the producer."""
        self.flush_state()
        await self.outbox.flush()

    def forget_user(self, user_id: str, chunk_numbers: list[int]) -> None:
        """Expiry: delete the user's head and chunks, here and (tombstones) in the changelog."""
        changelog = changelog_topic_name()
        for key, value in windows.delete(user_id, chunk_numbers, self.state):
            self.outbox.add(changelog, self.partition, key, value)
        user_counts.on_user_removed(self.partition)
        app.metrics.on_user_expired()

    def expire_queued(self, budget_s: float = EXPIRE_BUDGET_S) -> None:
        """Delete users the sweep found expired, each checked again against the stored state."""
        if not sweeper.has_queued(self.partition):
            return
        get = self.state.get
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            user_id = sweeper.pop(self.partition)
            if user_id is None:
                break
            head = get(head_key(user_id))
            if head is None or not stream_times.is_expired(self.partition, head_latest_ts(head), get):
                continue  # gone already, or active again since the sweep saw it
            self.forget_user(user_id, UserWindow.chunk_numbers(head))
        changelog = changelog_topic_name()
        while time.monotonic() < deadline:
            key = sweeper.pop_prediction(self.partition)
            if key is None:
                return
            entry = get(key)
            floor = stream_times.prediction_floor(self.partition, get, settings.label_wait_s)
            stamped = None if entry is None else logged_event_time(entry)
            if stamped is None or floor is None or stamped >= floor:
                continue  # joined (deleted) since the sweep saw it
            self.state.put(key, None)
            self.outbox.add(changelog, self.partition, key, None)
            app.metrics.on_prediction_expired()


async def handle_message(
    work: PartitionWork,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_s: float | None,
) -> None:
    """Process one inbound message; never raises for bad data."""
    origin = Origin(topic, partition, offset, key, timestamp_s, value)
    try:
        if topic == rekey_topic_name:
            if key == TICK_KEY:
                return  # its batch deleted the partition's expired users (tables/expiry.py)
            if key == LABEL_KEY:
                await join_label(work, origin, value)
                return
            origin, txn = _open_envelope(value or b"")
        else:
            try:
                txn = parse_transaction(
                    value, time.time(), settings.max_clock_skew_s, settings.max_message_bytes
                )
            except RejectedMessage as exc:
                await send_dead_letter(work, origin, exc.error_type, exc.message)
                return
            user_key = txn.user_id.encode("utf-8")
            expected = owner_partition(user_key, settings.topic_partitions)
            if key != user_key or partition != expected:
                await publish(work, rekey_topic, user_key, _envelope(origin, txn), partition=expected)
                return
        await process_transaction(work, origin, txn)
    except Exception as exc:
        log.exception("processing failed for %s[%s]@%s key=%s", topic, partition, offset, key_preview(key))
        await send_dead_letter(work, origin, ProcessingError.error_type, f"{type(exc).__name__}: {exc}")


async def process_transaction(work: PartitionWork, origin: Origin, txn: Transaction) -> None:
    """``txn`` of a user owned by the partition being processed."""
    window = windows.load(txn.user_id, work.state)
    if window is not None and stream_times.is_expired(work.partition, window.latest_ts_s, work.state.get):
        work.forget_user(txn.user_id, list(window.chunks))  # SPEC 4, Expiry: it starts anew
        window = None
    is_new_user = window is None
    if window is None:
        window = windows.new(txn.user_id)
    try:
        outcome = window.apply(txn, computed_at_s=time.time())
        changes = windows.save(window, outcome.writes, work.state) if outcome.writes else []
    except Exception:
        # The window may be half-updated: write what earlier messages changed, and reload it.
        work.state.flush()
        windows.forget(txn.user_id)
        raise
    if changes:
        changelog = work.changelog
        for key, value in changes:
            work.outbox.add(changelog, work.partition, key, value)
    if outcome.verdict == "late":
        await send_dead_letter(work, origin, LateEvent.error_type, outcome.reason)
        return
    assert outcome.features is not None
    metrics = app.metrics
    if outcome.verdict == "accepted":
        metrics.on_processed()
        if stream_times.tracking:
            stream_times.advance(work.partition, txn.timestamp, work.state.get)
            sweeper.note_latest(work.partition, txn.timestamp)
        if is_new_user:
            user_counts.on_new_user(work.partition)
    else:
        metrics.on_duplicate()
    values = outcome.features
    metrics.on_feature(values["computed_at"], origin.timestamp_s)
    user_key = txn.user_id.encode("utf-8")
    encoded = UserFeatures.encode_values(values)
    if copartitioned(work, features_topic_name):
        work.outbox.add(features_topic_name, work.partition, user_key, encoded)
    else:
        await publish(work, features_topic, user_key, encoded)
    accepted = outcome.verdict == "accepted"
    score = None if scorer is None else await publish_prediction(work, outcome.features, user_key, accepted)
    if accepted:  # a duplicate's record is one drift has seen already
        drift_observer.observe(outcome.features, score, None if scorer is None else scorer.version)


async def publish_prediction(
    work: PartitionWork, features: dict[str, Any], user_key: bytes, log_it: bool = True
) -> float | None:
    """SPEC 10: the record's fraud score, in the same batch (and transaction) as the record itself.

    With the label join on, the prediction of an accepted transaction is also
    logged in the partition's store and changelog (records/label.py), in the
    same write batch; a duplicate's is not (its transaction may be labelled
    already: a second entry would wait for a second label).
    """
    assert scorer is not None
    try:
        score = float(scorer.score(features))
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score {score!r} is not in [0, 1]")
    except Exception as exc:  # noqa: BLE001 - any model error: counted and logged, the record stands
        # The feature record stands; the model's failure is counted and logged, never a dead letter.
        app.metrics.on_scoring_failed()
        log.warning("model %s failed on transaction %r: %r", scorer.version, features["transaction_id"], exc)
        return None
    scored_at = time.time()
    value = orjson.dumps(prediction_value(features, score, scorer.version, scored_at))
    if copartitioned(work, predictions_topic_name):
        work.outbox.add(predictions_topic_name, work.partition, user_key, value)
    else:
        await publish(work, predictions_topic, user_key, value)
    app.metrics.on_prediction()
    transaction_id = features["transaction_id"]
    if LOG_PREDICTIONS and log_it and transaction_id is not None:
        event_time = features["event_time"]
        key = prediction_key(transaction_id)
        entry = LoggedPrediction.entry(score, scorer.version, event_time, scored_at)
        work.state.put(key, entry)
        work.outbox.add(work.changelog, work.partition, key, entry)
        sweeper.note_prediction(work.partition, event_time)
    return score


async def join_label(work: PartitionWork, origin: Origin, value: bytes | None) -> None:
    """A label carried to this partition: joined with its logged prediction, which it then deletes.

    A keyed label comes to its user's partition only; a probe (an unkeyed
    label) to every partition, so only the one holding the prediction counts it.
    """
    metrics = app.metrics
    label, probe = open_carried_label(value)
    key = prediction_key(label.transaction_id)
    raw = work.state.get(key)
    if raw is None:
        if not probe:
            metrics.on_label("unmatched")
            log.info(
                "label for %r: no logged prediction here (unknown, expired or labelled already)",
                label.transaction_id,
            )
        return
    prediction = LoggedPrediction.decode(raw)
    work.state.put(key, None)
    work.outbox.add(changelog_topic_name(), work.partition, key, None)
    joined = joined_label(label, prediction, label.transaction_id)
    await publish(work, monitoring_topic, MONITORING_LABEL_KEY, orjson.dumps(joined), partition=0)
    metrics.on_label("joined")


class FeatureBatches:
    """The hot path: every fetched batch of the input topics, as ``Consumer._drain_messages`` hands it over.

    One batch is processed under ``app.message_boundary`` (so an offset
    commit falls between batches, never between a message's outputs and its
    offset), partition by partition, record by record, without Faust's
    per-message machinery: its state writes go to one RocksDB write batch
    per partition, its outputs straight to the producer, and the last offset
    processed to ``app.processed_through`` (what the next commit commits).
    Every ``YIELD_EVERY_S`` of work it writes the state batch and lets other
    tasks run (lookups, timers, the next fetch); a rebalance meanwhile ends
    the batch there: the rest is processed again by the partition's owner.
    """

    def __init__(self) -> None:
        self.topics = frozenset({settings.transactions_topic, settings.rekey_topic})
        #: When the running event-loop turn began: one budget across the batch's partitions (with
        #: one per partition, a turn ran on into the next partitions; diagnostic build at 2,000
        #: tx/s: its turns over 4 ms, 49 a second, had a median of 6.4 ms, budget 2 ms).
        self.turn_started = 0.0

    async def __call__(self, batches: Mapping[TP, list[Any]], generation: int) -> None:
        """Process one fetch to its end, even when the fetcher is cancelled meanwhile.

        Faust cancels the fetcher (which runs this) when the worker stops,
        then closes the tables and commits. A batch left half-way would leave
        outputs in the producer (in the open transaction, under exactly_once)
        for messages whose offsets that commit would not cover: they would be
        processed and published again after the restart. So the batch runs in
        a task of its own and finishes first (bounded: one fetch), then the
        cancellation goes on. A producer failure that is not fencing stops
        the worker before any offset of the batch is committed.
        """
        task = asyncio.ensure_future(self._process(batches, generation))
        _background.add(task)
        task.add_done_callback(_background.discard)
        task.add_done_callback(_stop_if_failed)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            while not task.done():  # bounded: one fetch; Faust's fetcher stop waits and re-cancels
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([task])
            raise

    async def _process(self, batches: Mapping[TP, list[Any]], generation: int) -> None:
        async with app.message_boundary:
            self.turn_started = time.monotonic()
            for tp, records in batches.items():
                if time.monotonic() - self.turn_started > YIELD_EVERY_S:
                    await asyncio.sleep(0)  # the last partition's state is written, its outputs sent
                    self.turn_started = time.monotonic()
                if not app.generation_is_current(generation):
                    return
                await self.process_partition(tp, records, generation)

    async def process_partition(self, tp: TP, records: list[Any], generation: int) -> None:
        work = PartitionWork(tp)
        tid = work.tid
        fenced = app.fenced_transactional_ids
        processed_through = app.processed_through
        done = processed_through.get(tp, -1)
        topic, partition = tp.topic, tp.partition
        ticked = False
        try:
            if stream_times.tracking:
                sweeper.note_batch(partition)
            for record in records:
                offset = record.offset
                if offset <= done:
                    continue  # processed already in this generation (a seek back after recovery)
                if tid is not None and tid in fenced:
                    break  # migrated: the rest is processed again by the partition's owner
                ticked = ticked or record.key == TICK_KEY
                ts = record.timestamp  # ms
                timestamp_s = ts / 1000.0 if ts and ts > 0 else None
                await handle_message(work, topic, partition, offset, record.key, record.value, timestamp_s)
                processed_through[tp] = offset
                if time.monotonic() - self.turn_started > YIELD_EVERY_S:
                    work.flush_state()
                    await asyncio.sleep(0)
                    self.turn_started = time.monotonic()
                    if not app.generation_is_current(generation):
                        break
            if (
                stream_times.tracking
                and app.generation_is_current(generation)
                and not (tid and tid in fenced)
            ):
                work.expire_queued()
        finally:
            work.flush_state()
        await work.outbox.flush()
        if ticked and sweeper.has_queued(partition):
            await sweeper.tick(partition)  # no traffic here: the next tick carries the next deletions


def _stop_if_failed(task: asyncio.Future[Any]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        log.critical("the batch failed (%r); stopping before its offsets are committed", exc, exc_info=exc)
        logging.shutdown()
        os._exit(70)


app.batch_handler = FeatureBatches()


@app.agent(inbound_topic, name="velocity-features")
async def compute_features(stream: Any) -> None:
    """Subscribes the worker to the input topics; their records reach :class:`FeatureBatches`.

    ``Consumer._drain_messages`` (app/faust_ext.py) hands this agent's
    topics to the batch path, so in a worker its stream stays empty. It
    processes what Faust itself delivers to it (``test_context()`` in the
    agent tests) the same way, one message at a time.
    """
    async for event in stream.events():
        message = event.message
        async with app.message_boundary:
            if app.is_stale(message):
                continue
            work = PartitionWork(message.tp)
            await handle_message(
                work,
                message.topic,
                message.partition,
                message.offset,
                message.key,
                message.value,
                message.timestamp,
            )
            if stream_times.tracking:
                sweeper.note_batch(message.partition)
                work.expire_queued()
            await work.finish()
            app.processed(message)
            event.ack()
