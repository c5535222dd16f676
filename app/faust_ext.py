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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar, cast

import faust
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Signal

from records.errors import VelocityError

#: The faust-streaming release these extensions were written for and tested with.
FAUST_VERSION = "0.15.3"


class FaustVersionError(VelocityError):
    """The installed faust-streaming is not the release the extensions were written for."""


def check_faust_version(installed: str = faust.__version__) -> None:
    if installed != FAUST_VERSION:
        raise FaustVersionError(
            f"app/faust_ext.py overrides private parts of faust-streaming {FAUST_VERSION}, "
            f"but {installed} is installed: re-check each override against its source, "
            "then update FAUST_VERSION"
        )


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
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

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
        between two messages.

        Test: ``tests/integration/test_exactly_once.py::test_a_third_worker_joins_under_traffic``.
        """
        app = cast(ExtendedApp, self.app)
        async with app.message_boundary:
            await super().force_commit()
        await super().on_partitions_revoked(revoked)

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
        async with app.message_boundary:
            did_commit: bool = await super().force_commit(*args, **kwargs)
            if did_commit:
                await app.on_offsets_committed.send()
            return did_commit


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


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
    * ``on_before_restore(tps, highwaters, title)``: sent before Faust reads
      where to start restoring changelog partitions (``title``: ``"active"``
      or ``"standby"``); a receiver may drop or bring forward the local
      store, and persist how far it got.
    """

    on_offsets_committed: Signal[Any] = Signal()
    on_before_restore: Signal[Any] = Signal()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_faust_version()
        kwargs.setdefault("TableManager", TableManager)
        super().__init__(*args, **kwargs)
        self.message_boundary = asyncio.Lock()
        self.on_offsets_committed = self.on_offsets_committed.with_default_sender(self)
        self.on_before_restore = self.on_before_restore.with_default_sender(self)

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)


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
