"""Velocity's extensions of faust-streaming, and the only module that touches Faust's private API.

Faust is extended through its own seams, never by assignment to its classes:

* :class:`ExtendedApp` (a ``faust.App`` subclass) builds its transport from
  :class:`Transport`, so every consumer is a :class:`Consumer` whose thread
  is a :class:`ConsumerThread`; it sets the ``TableManager`` class setting to
  :class:`TableManager`, whose recovery is a :class:`Recovery`. It adds two
  signals and one lock that the higher layers use (see each).
* Each override below names the Faust behaviour it changes and the test that
  fails without it.
* The overrides reach into private methods of one Faust release:
  :func:`check_faust_version` refuses any other (``ExtendedApp`` calls it).
* Reads of Faust's private attributes (the consumer's committed offsets, the
  RocksDB store's per-partition databases) are the typed functions at the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import cached_property
from typing import Any, Protocol, TypeVar, cast

import faust
from aiokafka import errors as kafka_errors
from faust.exceptions import ProducerSendError
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.transport.consumer import TransactionManager as FaustTransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Signal
from mode.threads import MethodQueue

from records.errors import VelocityError

log = logging.getLogger(__name__)

#: The faust-streaming release these extensions were written for and tested with.
FAUST_VERSION = "0.15.3"

#: Producer errors that mean "this transactional id now belongs to another producer" (or the
#: broker aborted its transaction): the partition has migrated, as Kafka Streams calls it.
_FENCING_ERRORS = (
    kafka_errors.ProducerFenced,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.InvalidProducerIdMapping,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.ProducerClosed,
)


class FaustVersionError(VelocityError):
    """The installed faust-streaming is not the release the extensions were written for."""


def check_faust_version(installed: str = faust.__version__) -> None:
    if installed != FAUST_VERSION:
        raise FaustVersionError(
            f"app/faust_ext.py overrides private parts of faust-streaming {FAUST_VERSION}, "
            f"but {installed} is installed: re-check each override against its source, "
            "then update FAUST_VERSION"
        )


class BatchHandler(Protocol):
    """Processes the records of ``topics``, one fetch at a time (see ``Consumer._drain_messages``).

    ``batches`` maps each partition to its fetched aiokafka ``ConsumerRecord`` s, in offset
    order; the handler records what it processed in ``app.processed_through``.
    """

    topics: frozenset[str]

    async def __call__(self, batches: Mapping[TP, list[Any]], generation: int) -> None: ...


def tune_worker_consumer(consumer: Any, app: ExtendedApp) -> Any:
    """The aiokafka consumer Faust built, before it starts, with the app's fetch wait."""
    consumer._fetch_max_wait_ms = app.consumer_fetch_max_wait_ms
    return consumer


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    #: Calls into the consumer's thread served at once (mode's default: 2). See :meth:`method_queue`.
    METHOD_QUEUE_WORKERS = 8

    @property
    def method_queue(self) -> MethodQueue:
        """The queue of calls into the consumer's thread, with ``METHOD_QUEUE_WORKERS`` workers.

        Every call the worker makes to its Kafka consumer (the next fetch,
        each offset commit, the end offsets of the lag timer, positions)
        runs in this thread through mode's MethodQueue, whose two workers
        serve two calls at a time. A fetch waits there for records (up to
        its timeout, 1 s); a commit and a lag refresh each take a broker
        round trip. With two of them in flight the next fetch queued behind
        them, and under steady traffic (bench steady, 2,000 tx/s) that
        tipped the worker into a state it did not leave: ~3,500 records
        fetched every 1.5-2 s, freshness p50 about 1 s and p99 about 2 s,
        in 14 of 17 full-size runs on 2026-12-03, with the worker using
        half a core. With
        eight workers a fetch never waits for another call (README,
        *Performance*).

        Test: ``tests/agent/test_faust_ext.py`` (``..._do_not_wait_for_each_other``).
        """
        if self._method_queue is None:
            self._method_queue = MethodQueue(
                num_workers=self.METHOD_QUEUE_WORKERS, loop=self.thread_loop, beacon=self.beacon
            )
        return self._method_queue

    def _create_worker_consumer(self, transport: Any) -> Any:
        """Faust's worker consumer with ``CONSUMER_FETCH_MAX_WAIT_MS`` as its fetch wait.

        Faust (0.15.3) hard-codes ``fetch_max_wait_ms=1500``: how long the
        broker may hold a fetch that finds too little data. While tracing the
        stalls :meth:`method_queue` is about, next fetches were seen to come
        back only after most of that wait with records arriving all the while;
        100 ms (Kafka's Java consumer defaults to 500) bounds what such a
        fetch can cost; an idle worker asks the broker ten times a second.

        Test: ``tests/agent/test_faust_ext.py::test_the_worker_consumer_takes_the_fetch_wait_setting``.
        """
        return tune_worker_consumer(super()._create_worker_consumer(transport), cast(ExtendedApp, self.app))

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets from the broker, also inside a transaction.

        Faust takes the "highwater" of a partition, in a transaction, from
        ``last_stable_offset()``, which is only known after a fetch response
        for that partition: before one it is None, recovery sees -1, and either
        skips restoring the partition (a stale standby becomes the active
        state) or fails with ``ConsistencyError`` (faust-streaming#158).
        ``end_offsets()`` asks the broker and honours the consumer's isolation
        level: under read_committed it *is* the last stable offset.

        Test: ``tests/integration/test_restart.py::test_cold_restart_restores_every_user[exactly_once]``.
        """
        return cast(Mapping[TP, int], await self._ensure_consumer().end_offsets(partitions))


class Consumer(faust_aiokafka.Consumer):
    _thread: ConsumerThread

    #: True from the start of a revocation to the next assignment: the agent
    #: processes nothing in between (see on_partitions_revoked).
    revoking = False

    @cached_property
    def _commit_serial(self) -> asyncio.Lock:
        return asyncio.Lock()

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Hand each fetched batch of the batch topics to ``app.batch_handler``, whole.

        Faust (0.15.3) delivers every fetched record on its own: a
        ``wait_first`` of the conductor's callback and the flow-control event
        (several tasks created and cancelled per message), the conductor's
        lock and decoding, the stream's sensors, ack bookkeeping under an
        RLock: 130-200 µs per message before any work. The records of the
        topics the batch handler names (Velocity's input and re-keying
        topics) go to it as one mapping per fetch instead; every other topic
        (table changelogs while recovering, standbys) still takes Faust's
        path, record by record. What Faust does per message and the batch
        path keeps: skipping records fetched before a rebalance (flow
        suspended or generation changed), the read offset, and the offsets
        to commit (through ``app.processed_through``, see ``_new_offset``).

        Test: every integration test (the batch path is the only path for the input topics).
        """
        app = cast(ExtendedApp, self.app)
        handler = app.batch_handler
        if handler is None:
            await super()._drain_messages(fetcher)
            return
        batch_topics = handler.topics
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        # First offset refused per partition before its generation's seek (see generation_is_current).
        refetch: dict[TP, int] = {}
        refetch_generation = -1
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                generation = app.consumer_generation_id
                batches: dict[TP, list[Any]] = {}
                for tp, tp_records in records.items():
                    if not tp_records or not (
                        active is None or tp in active or tp in self._buffered_partitions
                    ):
                        continue
                    if tp.topic in batch_topics:
                        last = read_offset[tp]
                        if last is not None and tp_records[0].offset < last:  # as Faust: offset >= read
                            tp_records = [r for r in tp_records if r.offset >= last]
                            if not tp_records:
                                continue
                        batches[tp] = tp_records
                        continue
                    for record in tp_records:  # Faust's own path, one record at a time
                        if not self.flow_active or app.consumer_generation_id != generation:
                            break
                        last = read_offset[tp]
                        if last is None or record.offset >= last:
                            await self.wait_first(
                                callback(self._to_message(tp, record)), self.suspend_flow.wait()
                            )
                            read_offset[tp] = record.offset
                if not (batches and self.flow_active and app.consumer_generation_id == generation):
                    continue
                if refetch_generation != generation:
                    refetch.clear()  # a new generation seeks its partitions again itself
                    refetch_generation = generation
                if app.seeked_generation != generation:
                    # Faust resumed the input partitions before this generation's seek to the
                    # committed offsets: not processed now, fetched again after the seek.
                    if not refetch:
                        log.info(
                            "generation %s: input records fetched before the seek to the committed "
                            "offsets are not processed",
                            generation,
                        )
                    for tp, tp_records in batches.items():
                        refetch[tp] = min(refetch.get(tp, tp_records[0].offset), tp_records[0].offset)
                    continue
                if refetch:
                    # Refused records may have been fetched after the seek: go back to where it
                    # left each partition, or to the first refused record if that is earlier
                    # (what this fetch holds of those partitions is dropped too).
                    assigned = self.assignment()
                    for tp, first in refetch.items():
                        batches.pop(tp, None)
                        if tp in assigned:
                            committed = read_offset[tp]
                            await self.seek(tp, first if committed is None else min(first, committed))
                    log.info(
                        "generation %s: records of %s fetched before the seek to the committed "
                        "offsets were not processed; fetching them again",
                        generation,
                        sorted(f"{tp.topic}[{tp.partition}]" for tp in refetch),
                    )
                    refetch.clear()
                    if not batches:
                        continue
                for tp, tp_records in batches.items():
                    read_offset[tp] = tp_records[-1].offset
                await handler(batches, generation)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def perform_seek(self) -> None:
        """Seek the input partitions to their committed offsets; the generation may process from here."""
        app = cast(ExtendedApp, self.app)
        generation = app.consumer_generation_id
        try:
            await super().perform_seek()
        finally:  # a failed seek leaves Faust's positions, which Faust processes from too
            app.seeked_generation = generation

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        """Faust's acked partitions, and those the batch handler processed records of."""
        app = cast(ExtendedApp, self.app)
        seen = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        for tp in list(app.processed_through):
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        """For the batch topics, the offset after the last record processed (no per-message acks)."""
        app = cast(ExtendedApp, self.app)
        handler = app.batch_handler
        if handler is not None and tp.topic in handler.topics:
            done = app.processed_through.get(tp)
            return None if done is None else done + 1
        offset: int | None = super()._new_offset(tp)
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record the offsets *between* two delivered messages as a gap, not the second message too.

        Faust (0.15.3) is called with ``(last read + 1, offset of the message
        just delivered)`` and adds ``offset_to`` itself to the gap, so that
        message is acked twice. Its commit logic stops at the duplicate, so on
        a topic with a transaction marker after every few records (the
        re-keying topic, which our transactional producers write) the committed
        offset crawled one transaction per commit behind the processed one:
        under exactly_once the outputs of processed messages were committed
        while their offsets were not, and a restart processed them again
        (duplicate records for a read_committed reader).

        Test: ``tests/agent/test_faust_ext.py::test_a_gap_does_not_ack_the_message_after_it`` and
        ``tests/integration/test_exactly_once.py``.
        """
        await super()._add_gap(tp, offset_from, offset_to - 1)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit what the agent has finished before Faust forgets it.

        Faust (0.15.3) drops the acked-but-uncommitted offsets of revoked
        partitions first and commits afterwards: under exactly_once the
        records of those messages stayed in a transaction that nothing
        committed or aborted, and either timed out (fencing the producer) or
        was committed later together with the messages processed again.
        Kafka Streams commits its tasks before it lets them go; so do we,
        between two messages. From here to the next assignment the agent
        processes nothing (``revoking``; the App sets ``stream_wait_empty``
        off, so Faust does not wait for the messages the agent skips): they
        are processed again, from the committed offsets, by whoever owns
        their partition next.

        Test: ``tests/integration/test_exactly_once.py::test_a_third_worker_joins_under_traffic``.
        """
        app = cast(ExtendedApp, self.app)
        async with app.message_boundary:
            self.revoking = True
            if await super().force_commit():
                await app.on_offsets_committed.send()
            app.processed_through.clear()
            producer = app.producer
            if isinstance(producer, Producer):
                await producer.drop_all_transaction_producers()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Forget acks of messages skipped since the revocation, then let Faust assign.

        Everything processed before the revocation was committed then; an ack
        recorded since is of a message the agent skipped (Faust's stream acks
        an event when the agent asks for the next one), and committing it
        would skip the message.
        """
        self._acked.clear()
        self._acked_index.clear()
        self._gap.clear()
        self.revoking = False
        await super().on_partitions_assigned(assigned, generation_id)

    async def force_commit(self, *args: Any, **kwargs: Any) -> bool:
        """Commit only between messages, then send ``app.on_offsets_committed``.

        Faust commits (a timer, or ``wait_empty`` at a rebalance) the offsets of
        the messages acked so far together with everything already sent, and an
        agent's message is acked only when the agent asks for the next one. A
        commit that falls between a message's sends and its ack puts the
        message's output and state changes in one transaction and its offset in
        the next: killed in between, the new owner processes the message again
        on top of state that already holds it, and its record appears twice to
        a read_committed consumer. The agent holds ``app.message_boundary``
        from a message's first read to its explicit ack.

        Test: ``tests/agent/test_faust_ext.py::test_a_commit_waits_for_the_message_being_processed``.
        """
        app = cast(ExtendedApp, self.app)
        if not app.in_transaction:
            return await self._commit_outside_the_boundary()
        async with app.message_boundary:
            if self.revoking:
                # Committed when the revocation began; acks since are of skipped messages.
                return False
            did_commit: bool = await super().force_commit(*args, **kwargs)
            if did_commit:
                await app.on_offsets_committed.send()
            return did_commit

    async def _commit_outside_the_boundary(self) -> bool:
        """At-least-once: offsets taken between two batches, flushed and committed while processing goes on.

        The offsets are taken under ``app.message_boundary``, where every
        record processed has its outputs in the producer; the producer is
        flushed (everything handed to it so far, a superset, is delivered)
        and the offsets committed after the lock is released. Holding the
        lock for the flush and the commit request (two broker round trips,
        3-90 ms measured on this machine under load) held up every record
        that arrived meanwhile: the freshness tail. Commits are serialized
        among themselves; under exactly_once the transaction's commit stays
        under the lock (it is the transaction boundary).

        Test: ``tests/agent/test_faust_ext.py::test_an_at_least_once_commit_does_not_hold_the_boundary``.
        """
        app = cast(ExtendedApp, self.app)
        async with self._commit_serial:
            async with app.message_boundary:
                if self.revoking:
                    return False
                offsets = self._filter_committable_offsets(list(self._filter_tps_with_pending_acks()))
            if not offsets:
                return False
            did_commit: bool = await self._commit_offsets(offsets)
            if did_commit:
                await app.on_offsets_committed.send()
            return did_commit


def is_fencing(exc: BaseException) -> bool:
    """True for a producer error that means the transaction's partition has migrated.

    Fencing (another producer initialised the same transactional id, or the
    broker aborted the transaction on timeout), and what a producer that was
    fenced or stopped for a revoked partition raises afterwards. Anything else
    is a real failure.
    """
    if isinstance(exc, _FENCING_ERRORS):
        return True
    if isinstance(exc, ProducerSendError):
        return "No transaction producer found" in str(exc) or (
            exc.__cause__ is not None and is_fencing(exc.__cause__)
        )
    return isinstance(exc, kafka_errors.IllegalOperation) and "not in transaction" in str(exc)


#: How long a fenced producer gets to stop (in the background) before it is abandoned.
FENCED_STOP_TIMEOUT_S = 30.0
#: A transaction commit that takes longer is given up (see Producer.commit_transactions).
TRANSACTION_COMMIT_TIMEOUT_S = 30.0
_stopping: set[asyncio.Future[None]] = set()


class Producer(faust_aiokafka.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        """Every producer idempotent with ``acks=all``, not only the transactional ones.

        Faust enables idempotence under exactly_once only. Under at_least_once
        a retried send could then write a record twice or reorder a
        partition's records (features, predictions, changelog); with the
        idempotent producer the broker drops the retry's copy and keeps the
        order, so the only duplicates left are those of a message processed
        again after a crash, which carry their ``transaction_id``.
        """
        return {"acks": "all", "enable_idempotence": True}

    async def commit_transactions(
        self,
        tid_to_offset_map: Mapping[str, Mapping[TP, int]],
        group_id: str,
        start_new_transaction: bool = True,
    ) -> None:
        """Commit each transaction on its own; a fenced one is a migrated partition, not a crash.

        Faust (0.15.3) commits the transactions one after the other and lets
        ``ProducerFenced`` escape, which crashes the App (and leaves the other
        partitions' transactions uncommitted). A fenced transaction is gone:
        its partition now belongs to another worker, or the broker aborted it.
        Like Kafka Streams (``TaskMigratedException``), we drop its producer,
        commit the others, and ask to rejoin the group (``ExtendedApp.task_migrated``).

        Test: ``tests/agent/test_faust_ext.py::test_a_fenced_transaction_is_a_migrated_partition``.
        """
        app = cast(ExtendedApp, self.app)
        for tid, offsets in tid_to_offset_map.items():
            if tid in app.fenced_transactional_ids:
                continue  # migrated: its messages are processed again by the partition's owner
            try:
                await asyncio.wait_for(
                    self._flush_and_commit(tid, offsets, group_id, start_new_transaction),
                    TRANSACTION_COMMIT_TIMEOUT_S,
                )
            except TimeoutError as exc:
                # aiokafka waits for a transaction's end without a limit, and the caller holds
                # app.message_boundary: a commit that never returns stops the stream and every
                # rebalance. Kafka commits or aborts the transaction as a whole either way, so
                # giving it up is safe: the partition is migrated (state restored from the
                # changelog, messages processed again from the committed offsets).
                await app.task_migrated(tid, exc)
            except Exception as exc:
                if not app.transaction_lost(tid, exc):
                    raise
                await app.task_migrated(tid, exc)

    async def _flush_and_commit(
        self, tid: str, offsets: Mapping[TP, int], group_id: str, start_new_transaction: bool
    ) -> None:
        """Wait for the transaction's records to be delivered, then commit it with its offsets.

        aiokafka (0.14) sends the commit (EndTxn) as soon as it is asked to,
        while records handed to the producer may still be queued or in
        flight; Kafka's Java producer waits for them first. A record that
        reaches the broker after the commit is refused (or, on a broker
        without transaction verification, left in no transaction) while
        the offset of the message it came from is committed.
        """
        producer = self._transaction_producers.get(tid)
        if producer is not None:
            await producer.flush()
        await super().commit_transactions({tid: offsets}, group_id, start_new_transaction)

    async def stop_transaction(self, transactional_id: str) -> None:
        """A revoked partition's producer: stopped in the background, like a fenced one.

        Faust (0.15.3) awaits ``stop()`` inside the revocation; a producer
        whose sender keeps retrying never lets it return, and the group's
        rebalance waits for the revocation. Its transaction was committed at
        the revocation (``Consumer.on_partitions_revoked``) or can only be
        aborted; nothing is lost by not waiting.
        """
        await self.drop_transaction_producer(transactional_id)

    async def drop_all_transaction_producers(self) -> None:
        """At a revocation, after its commit: every transaction producer, so each generation starts fresh.

        Faust (0.15.3) keeps the producers of partitions assigned again and
        calls ``begin_transaction`` on them. A worker that lost its
        membership (paused or cut off past its session timeout) keeps
        producers another worker has fenced meanwhile; reused, the first
        send or commit of the new generation fails as fenced and forces a
        second rebalance. Kafka Streams closes the tasks of a lost member
        and makes new producers; so do we, for every rebalance: what each
        had to commit was committed just before (``Consumer.on_partitions_revoked``),
        and a new producer's ``init_transactions`` aborts whatever a fenced
        one left open.
        """
        for transactional_id in list(self._transaction_producers):
            await self.drop_transaction_producer(transactional_id)

    async def drop_transaction_producer(self, transactional_id: str) -> None:
        """Forget a fenced producer; Faust makes a new one when the partition is assigned again.

        It is stopped in the background, given ``FENCED_STOP_TIMEOUT_S``: a
        fenced producer's ``stop()`` waits for its pending batches, which a
        producer whose sender keeps retrying may never deliver, and the
        caller holds ``app.message_boundary`` (a wait here stops the stream).
        """
        producer = self._transaction_producers.pop(transactional_id, None)
        if producer is not None:
            task = asyncio.ensure_future(self._stop_fenced(transactional_id, producer))
            _stopping.add(task)
            task.add_done_callback(_stopping.discard)

    @staticmethod
    async def _stop_fenced(transactional_id: str, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), FENCED_STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a fenced producer may fail to stop cleanly
            log.info("stopping the fenced producer %s: %r", transactional_id, exc)


class TransactionManager(FaustTransactionManager):
    """Under exactly_once, Faust's sends that name no transaction (its own tables' changelogs)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        """As Faust, but a topic outside the assignor's topic groups goes outside any transaction.

        Faust (0.15.3) picks the transaction from the destination topic's group;
        a table changelog (``monitoring-state``, whose sender is an ordinary agent)
        is not always in the groups (a rebalance rebuilds them), and the
        ``KeyError`` crashed the producer buffer, so the worker (a broker restart
        under exactly_once). Such a record is then sent like any other
        non-transactional one: the aggregator's figures are at-least-once anyway
        (README, the fraud loop).

        Test: ``tests/integration/test_broker_restart.py`` (exactly_once).
        """
        assignor = self.app.assignor
        if partition is not None or self.consumer.key_partition(topic, key, partition) is not None:
            try:
                assignor.group_for_topic(topic)
            except KeyError:
                return await self.producer.send(
                    topic, key, value, partition, timestamp, headers, transactional_id=None
                )
        return await super().send(topic, key, value, partition, timestamp, headers)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer
    TransactionManager = TransactionManager


class Recovery(FaustRecovery):
    async def _build_offsets(self, consumer: Any, tps: set[TP], destination: Any, title: str) -> None:
        """Let ``app.on_before_restore`` prepare the local store before Faust reads where it is.

        Receivers may drop a partition's local state (``tables/restore.py``:
        uncommitted writes of a worker that died under exactly_once) or bring
        it forward: Faust restores a changelog one event at a time through a
        queue (a few thousand records/s), ``tables/restore.py`` reads the bulk
        of it with a plain consumer and writes RocksDB batches, then Faust
        starts from the persisted offset it leaves and reads only what remains.

        Test: ``tests/integration/test_restart.py::test_cold_restart_restores_every_user`` (the bulk count).
        """
        if tps:
            app = cast(ExtendedApp, self.app)
            highwaters = self.active_highwaters if title == "active" else self.standby_highwaters
            await app.on_before_restore.send(set(tps), dict(highwaters), title)
            for tp in tps:  # re-read where the local store is, as Recovery._add does
                table = self.tp_to_table.get(tp)
                if table is not None:
                    destination[tp] = table.persisted_offset(tp)
        await super()._build_offsets(consumer, tps, destination, title)


class TableManager(FaustTableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return cast(Recovery, self._recovery)


class ExtendedApp(faust.App):
    """``faust.App`` built from the classes above.

    * ``message_boundary``: held by the agent while it processes and acks one
      message, and by every offset commit.
    * ``on_offsets_committed``: sent after every offset commit that committed something.
    * ``consumer_fetch_max_wait_ms`` (keyword; default 100): the worker
      consumer's fetch wait, which Faust fixes at 1,500 ms (see
      ``ConsumerThread._create_worker_consumer``).
    * ``on_before_restore(tps, highwaters, title)``: sent before Faust reads
      where to start restoring changelog partitions (``title``: ``"active"``
      or ``"standby"``); a receiver may drop or bring forward the local
      store, and persist how far it got.
    """

    on_offsets_committed: Signal[Any] = Signal()
    on_before_restore: Signal[Any] = Signal()
    on_task_migrated: Signal[Any] = Signal()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_faust_version()
        kwargs.setdefault("TableManager", TableManager)
        # Consumer.on_partitions_revoked commits instead; Faust's wait would
        # wait for the messages the agent skips during a rebalance.
        kwargs.setdefault("stream_wait_empty", False)
        self.consumer_fetch_max_wait_ms: int = kwargs.pop("consumer_fetch_max_wait_ms", 100)
        super().__init__(*args, **kwargs)
        self.message_boundary = asyncio.Lock()
        #: Transactional ids fenced since the last assignment: their partitions have migrated.
        self.fenced_transactional_ids: set[str] = set()
        #: This generation's last processed offset per input partition (what the next commit commits).
        self.processed_through: dict[TP, int] = {}
        #: The consumer generation whose seek to the committed offsets is done (``Consumer.perform_seek``).
        self.seeked_generation: int = self.consumer_generation_id
        #: Takes the input topics' records batch by batch (``Consumer._drain_messages``); None: Faust's path.
        self.batch_handler: BatchHandler | None = None
        self.on_offsets_committed = self.on_offsets_committed.with_default_sender(self)
        self.on_before_restore = self.on_before_restore.with_default_sender(self)
        self.on_task_migrated = self.on_task_migrated.with_default_sender(self)
        connect(self.on_partitions_assigned, self._on_assigned)

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def is_stale(self, message: Any) -> bool:
        """Whether the agent must not process ``message`` (it is acked or redone elsewhere).

        * it was fetched before a rebalance that is under way or done: its
          partition's next owner processes it from the committed offset;
        * it was processed already in this generation: Faust resumes a
          partition's stream before it seeks to the committed offset after a
          recovery (faust-streaming 0.15.3, ``Recovery.on_recovery_completed``),
          so messages fetched in between come again. Their first outputs are
          in the open transaction, which commits or aborts with them.

        Test: ``tests/agent/test_faust_ext.py::test_a_message_is_processed_once_per_generation``.
        """
        if not self.generation_is_current(message.generation_id):
            return True
        return bool(message.offset <= self.processed_through.get(message.tp, -1))

    def generation_is_current(self, generation: int) -> bool:
        """Records of consumer generation ``generation`` may be processed now.

        No rebalance has begun since they were fetched, and the generation's
        seek to the committed offsets is done. Faust (0.15.3) resumes the
        input partitions before that seek (``Recovery.on_recovery_completed``):
        records fetched in between were processed, counted as done in
        ``processed_through``, and skipped when the seek fetched them again;
        in the repeated paused-worker runs their outputs never reached the
        log while later commits covered their offsets. Until the seek they
        are not processed; the seek fetches them again.
        """
        consumer = self.consumer
        if isinstance(consumer, Consumer) and consumer.revoking:
            return False
        return bool(self.consumer_generation_id == generation == self.seeked_generation)

    def processed(self, message: Any) -> None:
        """The agent processed ``message`` (see :meth:`is_stale`)."""
        self.processed_through[message.tp] = message.offset

    def _new_producer_transport(self) -> Transport:
        return Transport(self.conf.broker_producer, self)

    def transaction_lost(self, transactional_id: str, exc: BaseException) -> bool:
        """Whether ``exc`` means the transaction of ``transactional_id`` can never commit.

        Fencing (:func:`is_fencing`), or a transactional producer that failed
        for good: aiokafka stops a producer's sender on an error it does not
        retry (seen: a connection closed during a coordinator lookup while the
        broker restarted) and fails everything pending with it. Either way
        the broker aborts the transaction; like fencing, that is a migrated
        partition (:meth:`task_migrated`), not a reason to stop the worker.
        Any other producer error is a real failure.
        """
        if is_fencing(exc):
            return True
        producer = kafka_producer(self, transactional_id)
        txn_manager = getattr(producer, "_txn_manager", None)
        return bool(txn_manager is not None and txn_manager.is_fatal_error())

    async def task_migrated(self, transactional_id: str, exc: BaseException) -> None:
        """The transaction of ``transactional_id`` was fenced: close its partition dirty and rejoin.

        Its uncommitted outputs are aborted by the broker, its offsets are not
        committed (the next owner processes those messages again), its local
        state keeps the uncommitted mark (``on_task_migrated``: it is restored
        from the changelog before it is used again), nothing more is sent in
        its name until the next assignment, and the worker asks to rejoin the
        group instead of stopping.
        """
        if transactional_id in self.fenced_transactional_ids:
            return
        self.fenced_transactional_ids.add(transactional_id)
        partition = int(transactional_id.rsplit("-", 1)[1])
        log.warning(
            "transaction %s was fenced or its producer failed (%r): partition %s has migrated; "
            "dropping its uncommitted work and rejoining the group",
            transactional_id,
            exc,
            partition,
        )
        await self.on_task_migrated.send(partition)
        producer = self.producer
        if isinstance(producer, Producer):
            await producer.drop_transaction_producer(transactional_id)
        request_rejoin(self.consumer)

    async def _on_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self.fenced_transactional_ids.clear()
        self.processed_through.clear()


# ------------------------------------------------------------- typed helpers

Receiver = Callable[..., Awaitable[None]]
_F = TypeVar("_F", bound=Callable[..., Awaitable[None]])


def connect(signal: Any, receiver: Receiver) -> None:
    """``signal.connect(receiver)`` for an async ``receiver(sender, *args, **kwargs)``.

    (mode's annotation of receivers is narrower than what it calls them with.)
    """
    signal.connect(receiver)


def disconnect(signal: Any, receiver: Receiver) -> None:
    signal.disconnect(receiver)


def timer(app: faust.App, interval_s: float, *, on_leader: bool = False) -> Callable[[_F], _F]:
    """``@app.timer(interval=..., on_leader=...)``, typed."""
    return cast(Callable[[_F], _F], app.timer(interval=interval_s, on_leader=on_leader))


def recovery_completed(app: faust.App) -> bool:
    """Faust's table recovery has finished at least once since the last rebalance."""
    return bool(cast(TableManager, app.tables).recovery.completed.is_set())


def persisted_offset(table: Any, tp: TP) -> int | None:
    """The changelog offset the table's local store says it holds up to (None: nothing)."""
    offset: int | None = table.data.persisted_offset(tp)
    return offset


def set_persisted_offset(table: Any, tp: TP, offset: int) -> None:
    table.data.set_persisted_offset(tp, offset)


# ------------------------------------------------- reads of private attributes


class _Rdict(Protocol):
    """The part of ``rocksdict.Rdict`` we use (Faust keeps one per table partition)."""

    def keys(self) -> Iterator[bytes]: ...

    def write(self, batch: Any) -> None: ...

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def delete_range(self, begin: bytes, end: bytes) -> None: ...


def kafka_producer(app: faust.App, transactional_id: str | None) -> Any:
    """The aiokafka producer behind Faust's: the transaction's (None if it has none), or the default one."""
    producer: Any = app.producer
    if transactional_id is None:
        return producer._producer
    return producer._transaction_producers.get(transactional_id)


def request_rejoin(consumer: Any) -> None:
    """Make the consumer rejoin its group at the next poll (a rebalance, as after a task migration)."""
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None)
    coordinator = getattr(client, "_coordinator", None)
    if thread is not None and coordinator is not None:  # aiokafka runs in the consumer's thread
        thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset this consumer last committed for ``tp`` (None: never, in this process)."""
    offsets: Mapping[TP, int | None] = consumer._committed_offset
    return offsets.get(tp)


def uses_rocksdict(table: Any) -> bool:
    """True when the table's data is Faust's RocksDB store on rocksdict (not ``memory://``)."""
    return bool(getattr(table.data, "use_rocksdict", False))


def open_partition_dbs(table: Any) -> Mapping[int, _Rdict]:
    """The RocksDB databases the table's store has open, by partition (empty for ``memory://``)."""
    dbs: Mapping[int, _Rdict] = getattr(table.data, "_dbs", {})
    return dbs


def partition_db(table: Any, partition: int) -> _Rdict:
    """The table partition's RocksDB database, opened if need be."""
    db: _Rdict = table.data._db_for_partition(partition)
    return db


def store_offset_key(table: Any) -> bytes | None:
    """The key under which Faust's RocksDB store keeps the persisted changelog offset."""
    key: bytes | None = getattr(table.data, "offset_key", None)
    return key
