"""The Faust extensions of app/faust_ext.py, each against the behaviour it exists for.

In-process with the App (memory store, no broker): the consumer is built but never started.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, cast

import faust
import pytest
from aiokafka import errors as kafka_errors
from faust.exceptions import ProducerSendError
from faust.tables.recovery import Recovery as FaustRecovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.threads import MethodQueue

from app import faust_ext
from app.faust_ext import (
    FAUST_VERSION,
    Consumer,
    ConsumerThread,
    FaustVersionError,
    Producer,
    Recovery,
    check_faust_version,
    connect,
    disconnect,
    is_fencing,
)
from app.main import app, settings


def test_the_installed_faust_is_the_one_the_extensions_were_written_for() -> None:
    assert faust.__version__ == FAUST_VERSION
    check_faust_version()


def test_another_faust_version_is_refused_with_one_line_naming_both() -> None:
    with pytest.raises(FaustVersionError) as info:
        check_faust_version("0.16.0")
    message = str(info.value)
    assert "0.16.0" in message and FAUST_VERSION in message and "\n" not in message


def test_the_app_is_built_from_the_extended_classes() -> None:
    """Faust's class settings and factories hand out our subclasses, with nothing patched."""
    consumer = app.consumer
    assert type(consumer) is Consumer
    assert type(consumer._new_consumer_thread()) is ConsumerThread
    assert type(app.tables.recovery) is Recovery  # type: ignore[attr-defined]
    # Faust's own classes are untouched: another App in the process gets Faust's behaviour.
    assert faust_aiokafka.Consumer.force_commit is not Consumer.force_commit
    assert faust_aiokafka.AIOKafkaConsumerThread._highwaters is not ConsumerThread._highwaters
    assert FaustRecovery._build_offsets is not Recovery._build_offsets


def test_the_worker_consumer_takes_the_fetch_wait_setting() -> None:
    """Faust builds its worker consumer with a 1,500 ms fetch wait; ours has CONSUMER_FETCH_MAX_WAIT_MS.

    (A stand-in for the aiokafka consumer: one built in this process upsets pytest's later imports.)
    """
    built = SimpleNamespace(_fetch_max_wait_ms=1500)  # what Faust 0.15.3 passes
    assert faust_ext.tune_worker_consumer(built, app) is built
    assert built._fetch_max_wait_ms == settings.consumer_fetch_max_wait_ms == 100


async def test_calls_into_the_consumer_thread_do_not_wait_for_each_other() -> None:
    """A fetch waiting for records, a commit, a lag refresh and a position call all run at once.

    mode's MethodQueue (two workers by default) ran two calls at a time: the next fetch queued behind
    a commit and a lag refresh (README, *Performance*).
    """
    thread = cast(ConsumerThread, app.consumer._new_consumer_thread())  # type: ignore[attr-defined]
    workers = thread.method_queue.num_workers
    assert workers == ConsumerThread.METHOD_QUEUE_WORKERS
    calls = ["fetch", "commit", "lag", "position"]

    async def started_together(queue: MethodQueue) -> list[str]:
        """Which of ``calls`` start before any of them returns."""
        await queue.start()
        started: list[str] = []
        release = asyncio.Event()

        async def call(name: str) -> str:
            started.append(name)
            await release.wait()
            return name

        loop = asyncio.get_running_loop()
        try:
            promises = [await queue.call(loop.create_future(), call, name) for name in calls]
            deadline = loop.time() + 5.0
            while len(started) < len(calls) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            seen = list(started)
            release.set()
            assert await asyncio.gather(*promises) == calls
            return seen
        finally:
            await queue.stop()

    assert sorted(await started_together(MethodQueue(num_workers=workers))) == sorted(calls)
    assert len(await started_together(MethodQueue())) == 2  # mode's default: the other two waited


def test_every_producer_is_idempotent_with_acks_all() -> None:
    """Faust enables idempotence only in a transaction; predictions and features need it always."""
    assert faust_aiokafka.Producer(app.transport)._settings_extra() == {}
    ours = cast(faust_ext.Producer, app.producer)._settings_extra()
    assert ours == {"acks": "all", "enable_idempotence": True}
    assert settings.processing_guarantee == "at_least_once"  # the case Faust leaves out


async def test_a_commit_waits_for_the_message_being_processed() -> None:
    """Consumer.force_commit takes app.message_boundary, which the agent holds per message."""
    received: list[str] = []

    async def on_committed(sender: object, **kwargs: object) -> None:
        received.append("committed")

    connect(app.on_offsets_committed, on_committed)
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    async with app.message_boundary:
        commit = asyncio.ensure_future(consumer.force_commit())
        for _ in range(50):  # let the commit run as far as it can
            await asyncio.sleep(0)
        assert not commit.done(), "the commit went ahead while a message was being processed"
    did_commit = await asyncio.wait_for(commit, timeout=10)
    assert did_commit is False  # nothing was acked: nothing to commit, no signal
    assert received == []
    disconnect(app.on_offsets_committed, on_committed)


async def test_an_at_least_once_commit_does_not_hold_the_boundary() -> None:
    """Consumer.force_commit (at-least-once): offsets are taken under app.message_boundary, and
    the flush and commit request run after it is released, so batches go on meanwhile."""
    consumer = app.consumer
    assert isinstance(consumer, Consumer) and not app.in_transaction
    tp = TP(settings.transactions_topic, 0)
    committing = asyncio.Event()
    release = asyncio.Event()
    committed: list[dict[TP, int]] = []

    async def slow_commit(offsets: dict[TP, int], start_new_transaction: bool = True) -> bool:
        committing.set()
        await release.wait()  # the broker round trips
        committed.append(dict(offsets))
        return True

    class Handler:  # the batch path: offsets come from app.processed_through
        topics = frozenset({tp.topic})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(consumer, "_commit_offsets", slow_commit)
        mp.setattr(app, "batch_handler", Handler())
        # Locks of this test's event loop (an asyncio.Lock stays bound to the loop it first waited in).
        mp.setattr(app, "message_boundary", asyncio.Lock())
        mp.setitem(consumer.__dict__, "_commit_serial", asyncio.Lock())
        app.processed_through[tp] = 41
        try:
            async with app.message_boundary:  # a batch in progress: the offsets wait for it
                commit = asyncio.ensure_future(consumer.force_commit())
                for _ in range(50):
                    await asyncio.sleep(0)
                assert not committing.is_set(), "offsets taken while a batch was being processed"
                app.processed_through[tp] = 42  # the batch's last record
            await asyncio.wait_for(committing.wait(), 10)
            assert not app.message_boundary.locked(), "the commit request holds up the next batch"
            release.set()
            assert await asyncio.wait_for(commit, 10) is True
            assert committed == [{tp: 43}]
        finally:
            app.processed_through.clear()


async def test_a_gap_does_not_ack_the_message_after_it() -> None:
    """Consumer._add_gap: after a transaction marker, one commit covers every processed message.

    Offsets 100-101, 103-104 and 106-107 are records, 102 and 105 transaction markers; the drain
    loop reports each jump as ``_add_gap(tp, last read + 1, offset just delivered)``.
    """
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    tp = TP("velocity-gap-test", 0)
    consumer._committed_offset[tp] = 100
    last_read = None
    for offset in (100, 101, 103, 104, 106, 107):
        if last_read is not None and offset - last_read > 1:
            await consumer._add_gap(tp, last_read + 1, offset)
        consumer._acked[tp].append(offset)
        consumer._acked_index[tp].add(offset)
        last_read = offset
    assert consumer._new_offset(tp) == 108  # Faust's own _add_gap: 104, then one transaction per commit


class FakeTransactionProducer:
    """Stands in for aiokafka's transactional producer; ``fenced`` makes it fail as a fenced one does."""

    def __init__(self, fenced: bool) -> None:
        self.fenced = fenced
        self.calls: list[str] = []

    async def send_offsets_to_transaction(self, offsets: object, group_id: str) -> None:
        self.calls.append("offsets")
        if self.fenced:
            raise kafka_errors.ProducerFenced()

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def stop(self) -> None:
        self.calls.append("stop")

    async def flush(self) -> None:
        self.calls.append("flush")


async def test_a_fenced_transaction_is_a_migrated_partition() -> None:
    """Producer.commit_transactions: the others commit, the fenced one is dropped, nothing crashes."""
    producer = app.producer
    assert isinstance(producer, Producer)
    fenced_tid, ok_tid = f"{app.conf.id}-1-5", f"{app.conf.id}-1-6"
    fenced, ok = FakeTransactionProducer(fenced=True), FakeTransactionProducer(fenced=False)
    migrated: list[int] = []

    async def on_migrated(sender: object, partition: int, **kwargs: object) -> None:
        migrated.append(partition)

    connect(app.on_task_migrated, on_migrated)
    try:
        for tid, fake in ((fenced_tid, fenced), (ok_tid, ok)):
            producer._transaction_producers[tid] = fake
            producer._trn_locks[tid] = asyncio.Lock()
        offsets = {TP("t", 5): 10}
        await producer.commit_transactions({fenced_tid: offsets, ok_tid: {TP("t", 6): 3}}, app.conf.id)
        await asyncio.wait_for(asyncio.gather(*list(faust_ext._stopping)), 10)  # stopped in the background
        # Its records delivered before the commit (aiokafka does not wait for them itself).
        assert ok.calls == ["flush", "offsets", "commit", "begin"]
        assert fenced.calls == ["flush", "offsets", "stop"]
        assert (
            fenced_tid in app.fenced_transactional_ids and fenced_tid not in producer._transaction_producers
        )
        assert migrated == [5]
        # Until the next assignment, the migrated partition's offsets are not committed again.
        await producer.commit_transactions({fenced_tid: offsets}, app.conf.id)
        assert fenced.calls == ["flush", "offsets", "stop"]
    finally:
        disconnect(app.on_task_migrated, on_migrated)
        app.fenced_transactional_ids.clear()
        producer._transaction_producers.pop(ok_tid, None)


class FailedTxnManager:
    def __init__(self, fatal: bool) -> None:
        self.fatal = fatal

    def is_fatal_error(self) -> bool:
        return self.fatal


class FailedTransactionProducer(FakeTransactionProducer):
    """A producer whose sender stopped on an error it does not retry (a broker restart, seen in CI)."""

    def __init__(self, fatal: bool) -> None:
        super().__init__(fenced=False)
        self._txn_manager = FailedTxnManager(fatal)

    async def send_offsets_to_transaction(self, offsets: object, group_id: str) -> None:
        self.calls.append("offsets")
        raise kafka_errors.KafkaError("Unexpected error during batch delivery")


@pytest.mark.parametrize("fatal", [True, False])
async def test_a_failed_transactional_producer_is_a_migrated_partition_other_errors_are_not(
    fatal: bool,
) -> None:
    producer = app.producer
    assert isinstance(producer, Producer)
    tid = f"{app.conf.id}-1-7"
    failed = FailedTransactionProducer(fatal)
    producer._transaction_producers[tid] = failed
    producer._trn_locks[tid] = asyncio.Lock()
    try:
        if fatal:
            await producer.commit_transactions({tid: {TP("t", 7): 4}}, app.conf.id)
            assert tid in app.fenced_transactional_ids and tid not in producer._transaction_producers
        else:  # the producer still works: this error is a real failure, and stops the commit
            with pytest.raises(kafka_errors.KafkaError):
                await producer.commit_transactions({tid: {TP("t", 7): 4}}, app.conf.id)
            assert tid not in app.fenced_transactional_ids
    finally:
        await asyncio.wait_for(asyncio.gather(*list(faust_ext._stopping)), 10)
        app.fenced_transactional_ids.clear()
        producer._transaction_producers.pop(tid, None)


class HangingTransactionProducer(FakeTransactionProducer):
    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        await asyncio.Event().wait()  # aiokafka's wait for the transaction's end, never answered


async def test_a_transaction_commit_that_never_returns_is_given_up() -> None:
    """Producer.commit_transactions: a hung commit must not hold the stream (and rebalances) forever."""
    producer = app.producer
    assert isinstance(producer, Producer)
    tid = f"{app.conf.id}-1-8"
    producer._transaction_producers[tid] = HangingTransactionProducer(fenced=False)
    producer._trn_locks[tid] = asyncio.Lock()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(faust_ext, "TRANSACTION_COMMIT_TIMEOUT_S", 0.05)
            await asyncio.wait_for(producer.commit_transactions({tid: {TP("t", 8): 1}}, app.conf.id), 10)
        assert tid in app.fenced_transactional_ids and tid not in producer._transaction_producers
    finally:
        await asyncio.wait_for(asyncio.gather(*list(faust_ext._stopping)), 10)
        app.fenced_transactional_ids.clear()
        producer._transaction_producers.pop(tid, None)


async def test_a_revocation_leaves_no_transaction_producer_for_the_next_generation() -> None:
    """Producer.drop_all_transaction_producers (called by Consumer.on_partitions_revoked after its
    commit): each is stopped, none is reused by the next assignment (a lost member's could be fenced)."""
    producer = app.producer
    assert isinstance(producer, Producer)
    fakes = {f"{app.conf.id}-1-{p}": FakeTransactionProducer(fenced=False) for p in (9, 10)}
    for tid, fake in fakes.items():
        producer._transaction_producers[tid] = fake
        producer._trn_locks[tid] = asyncio.Lock()
    try:
        await producer.drop_all_transaction_producers()
        assert not set(fakes) & set(producer._transaction_producers)
        await asyncio.wait_for(asyncio.gather(*list(faust_ext._stopping)), 10)
        assert all(fake.calls == ["stop"] for fake in fakes.values()), fakes
    finally:
        for tid in fakes:
            producer._transaction_producers.pop(tid, None)


@pytest.mark.parametrize(
    ("exc", "fencing"),
    [
        (kafka_errors.ProducerFenced(), True),
        (kafka_errors.InvalidProducerEpoch(), True),
        (ProducerSendError("No transaction producer found for : velocity-1-3"), True),
        (kafka_errors.IllegalOperation("Can't send messages while not in transaction"), True),
        (kafka_errors.KafkaTimeoutError(), False),
        (kafka_errors.MessageSizeTooLargeError(), False),
        (ProducerSendError("Error while sending: MessageSizeTooLargeError()"), False),
    ],
)
def test_fencing_errors_are_told_from_real_failures(exc: BaseException, fencing: bool) -> None:
    assert is_fencing(exc) is fencing


def test_a_message_is_processed_once_per_generation() -> None:
    """ExtendedApp.is_stale: a message is not processed twice in a generation, nor one of another."""

    class Msg:
        def __init__(self, offset: int, generation_id: int) -> None:
            self.tp = TP("velocity-stale-test", 0)
            self.offset = offset
            self.generation_id = generation_id

    current = app.consumer_generation_id
    first, second = Msg(7, current), Msg(8, current)
    assert not app.is_stale(first)
    app.processed(first)
    assert app.is_stale(Msg(7, current))  # delivered again after Faust's late seek
    assert app.is_stale(Msg(6, current))
    assert not app.is_stale(second)
    assert app.is_stale(Msg(9, current - 1))  # fetched before a rebalance


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Flag:
    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value


class _DrainingConsumer:
    """What ``Consumer._drain_messages`` reads of its consumer; each fetch is scripted."""

    consumer_stopped_errors = ()
    should_stop = False
    flow_active = True
    _buffered_partitions: frozenset[TP] = frozenset()

    def __init__(
        self, tps: set[TP], fetches: list[tuple[Callable[[], None], dict[TP, list[_Record]]]]
    ) -> None:
        self.app = app
        self.fetches = fetches
        self._stopped = _Flag()
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.callback = None
        self.log = logging.getLogger(__name__)
        self.tps = tps
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.tps

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self._read_offset[tp] = offset

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[_Record]], None]:
        before, records = self.fetches.pop(0)
        before()  # what happens while this fetch waits
        if not self.fetches:
            self._stopped.value = True
        return records, None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_records_fetched_before_the_generations_seek_are_fetched_again_after_it() -> None:
    """Consumer._drain_messages: Faust resumes the input partitions before it seeks them to the
    committed offsets; what comes in between is not processed (it would count as done and be
    skipped after the seek), and a partition it came from is sought back once the seek is done."""
    a, b = TP(settings.transactions_topic, 0), TP(settings.transactions_topic, 1)
    handled: list[dict[int, list[int]]] = []

    class Handler:
        topics = frozenset({a.topic})

        async def __call__(self, batches: Mapping[TP, list[Any]], generation: int) -> None:
            handled.append({tp.partition: [r.offset for r in rs] for tp, rs in batches.items()})

    def rebalance() -> None:
        app.consumer_generation_id += 1

    def seek_done() -> None:  # Consumer.perform_seek: committed offset 40 for a
        fake._read_offset[a] = 40
        app.seeked_generation = app.consumer_generation_id

    fake = _DrainingConsumer(
        {a, b},
        [
            (rebalance, {a: [_Record(40), _Record(41)]}),  # before the seek: refused
            (seek_done, {a: [_Record(42)], b: [_Record(7)]}),  # a: sought back to 40, b: processed
            (lambda: None, {a: [_Record(40), _Record(41), _Record(42)]}),
        ],
    )
    saved = app.batch_handler, app.consumer_generation_id, app.seeked_generation
    app.batch_handler = Handler()
    try:
        fetcher = type("Fetcher", (), {"_stopped": _Flag()})()
        await Consumer._drain_messages(fake, fetcher)  # type: ignore[arg-type]
    finally:
        app.batch_handler, app.consumer_generation_id, app.seeked_generation = saved
    assert fake.seeks == [(a, 40)]
    assert handled == [{1: [7]}, {0: [40, 41, 42]}]
