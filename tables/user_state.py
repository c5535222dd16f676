"""The per-user state table, and :class:`UserWindows`: the pure :class:`UserWindow` s kept in it.

One RocksDB-backed Faust table, ``user-state``, with raw byte keys
(:func:`tables.window.head_key`, :func:`tables.window.chunk_key`): the head
of a user is stored under the user id's UTF-8 bytes (exactly the bytes of the
topic key, so ``table_route``/the router find the owner), and each sealed
chunk under ``user id + 0xFF + chunk number`` (0xFF never occurs in UTF-8, so
the two kinds cannot collide). Every key of a user lives in the partition that
owns the user, and its changelog is co-partitioned with the input topic.

Decoded windows are kept in a bounded LRU cache in front of the table, so a
heavy user is not decoded on every transaction; the cache is emptied at every
rebalance, because then the table may have changed under it.

Words: the *table* is the Faust table ``user_state``; its *store* is Faust's
RocksDB store behind it (one database per partition); *windows* are the
decoded per-user states.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import faust
import rocksdict
from aiokafka.partitioner import murmur2
from faust.types import TP

from app.faust_ext import (
    connect,
    kafka_producer,
    open_partition_dbs,
    partition_db,
    set_persisted_offset,
    store_offset_key,
    uses_rocksdict,
)
from app.main import app, label_join, settings
from tables.expiry import TICK_KEY, StreamTimes, Sweeper
from tables.window import StateWrite, UserWindow, chunk_key, head_key, is_head_key

log = logging.getLogger(__name__)


async def _count_changelog_event(event: Any) -> None:
    # Faust applies changelog events to active partitions while it restores
    # them (app.in_recovery) and to standby partitions afterwards.
    app.metrics.on_changelog_event(restoring_active=bool(app.in_recovery))


user_state = app.Table(
    "user-state",
    # Raw bytes both ways: key_type=bytes makes Faust pick the "raw" codec for
    # the changelog too (a JSON key would break table_route, see module doc).
    key_type=bytes,
    value_type=bytes,
    schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"),
    partitions=settings.topic_partitions,
    on_changelog_event=_count_changelog_event,
    # Every transaction rewrites its user's head, so the changelog is mostly
    # superseded values: roll segments every 10 minutes so that compaction
    # (which never touches the active segment) keeps restores proportional
    # to the number of users, not to the traffic.
    extra_topic_configs={"segment.ms": "600000", "min.cleanable.dirty.ratio": "0.2"},
    # Faust's RocksDB defaults are sized for one big table: 3 x 64 MiB memtables and a
    # 2 GiB block cache *per partition database*. Bounded here, per partition (README).
    options={
        "write_buffer_size": settings.rocksdb_write_buffer_mb * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024,
    },
    help="Per-user sliding-window state: heads and sealed chunks (tables/window.py).",
)


def changelog_topic_name() -> str:
    return str(user_state.changelog_topic.get_topic_name())


_delivered: dict[TP, int] = {}


def on_changelog_delivered(metadata: Any, count: int = 1) -> None:
    """Remember the highest changelog offset delivered per partition (written at the next commit).

    ``metadata`` is the delivery of one record, or of a batch of ``count``
    records (aiokafka reports its first offset).
    """
    tp = TP(metadata.topic, metadata.partition)
    last = metadata.offset + count - 1
    if last > _delivered.get(tp, -1):
        _delivered[tp] = last


#: Present in a partition's RocksDB while it holds writes that no offset commit
#: covers yet. 0xFF never starts a UTF-8 user id, so no head or chunk key can be this one.
UNCOMMITTED_KEY = b"\xffuncommitted"


class UncommittedWrites:
    """Marks in each table partition's RocksDB whether it holds writes no offset commit covers yet.

    The mark is written before a partition's first write after a commit and
    removed after the next commit (after the persisted changelog offset). A
    worker that dies in between leaves it, and the next restore of that
    partition (``tables/restore.py``) starts it from empty, from the
    changelog. Under exactly_once those writes belong to a transaction the
    broker aborted, which replaying the changelog would not undo (Kafka
    Streams wipes a task's state after an unclean shutdown for the same
    reason). Under at_least_once their changelog records may never have
    been delivered: the messages processed again would find their own
    transactions in the local state (duplicates: nothing written again),
    and expiry deletions are not repeated at all, so the changelog would
    miss changes the local store has (a later restore elsewhere would bring
    back forgotten users or lose transactions). Partitions without the mark
    are exactly their committed state and restore warm; a clean shutdown
    commits, so only a crash costs a restore from the changelog.
    """

    def __init__(self) -> None:
        self._marked: set[int] = set()
        self.migrated: set[int] = set()  # fenced since the last assignment: marks stay

    def before_write(self, partition: int) -> None:
        if partition in self._marked or partition in self.migrated:
            return
        db = open_partition_dbs(user_state).get(partition)
        if db is not None:  # None: memory store (unit tests)
            db.put(UNCOMMITTED_KEY, b"1")
        self._marked.add(partition)

    def on_task_migrated(self, partition: int) -> None:
        """The partition's transaction was fenced: its writes will never be committed here."""
        self.migrated.add(partition)
        self._marked.discard(partition)

    def on_assigned(self) -> None:
        self.migrated.clear()

    def after_commit(self) -> None:
        dbs = open_partition_dbs(user_state)
        for partition in self._marked:
            db = dbs.get(partition)
            if db is not None:
                db.delete(UNCOMMITTED_KEY)
        self._marked.clear()


uncommitted = UncommittedWrites()


async def _on_task_migrated(sender: Any, partition: int, **kwargs: Any) -> None:
    uncommitted.on_task_migrated(partition)


async def _on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
    uncommitted.on_assigned()


connect(app.on_task_migrated, _on_task_migrated)
connect(app.on_partitions_assigned, _on_assigned)


async def persist_delivered_offsets(sender: Any, *args: Any, **kwargs: Any) -> None:
    """After an offset commit: record in RocksDB how far the changelog is in the local store.

    It is what lets a warm restart replay only the changelog written since.
    Faust writes it once per changelog message (a second RocksDB write per
    table write) and, under exactly_once, never: its pending offsets are
    keyed by changelog partition but looked up by input partition. Once per
    commit and partition is enough, and after the commit it is also true
    under exactly_once (the transaction holding those records committed).
    """
    open_dbs = open_partition_dbs(user_state)
    for tp, offset in list(_delivered.items()):
        # Not a partition revoked since, nor one whose transaction was fenced (never committed).
        if tp.partition in open_dbs and tp.partition not in uncommitted.migrated:
            set_persisted_offset(user_state, tp, offset)
    _delivered.clear()
    uncommitted.after_commit()


#: Keys whose murmur2 hash is remembered, at most (about 150 bytes each: 30 MB when full).
KEY_HASHES_KEPT = 200_000
_key_hashes: dict[bytes, int] = {}


def owner_partition(user_key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives the key, as Faust routes.

    aiokafka's murmur2 is pure Python (2.6 us for a 12-byte key here), and the
    hot path asks it for every transaction: the hashes of recent keys are
    remembered (forgotten all at once when the dict is full).
    """
    h = _key_hashes.get(user_key)
    if h is None:
        if len(_key_hashes) >= KEY_HASHES_KEPT:
            _key_hashes.clear()
        h = _key_hashes[user_key] = murmur2(user_key) & 0x7FFFFFFF
    return h % partitions


class PartitionWriter:
    """The state writes of one table partition during one batch: one RocksDB write batch.

    ``touched`` holds the windows whose writes are still pending, so that a
    later message of the batch reads them even if the LRU cache let them go.
    On the ``memory://`` store (agent tests) writes go straight to the table.
    """

    __slots__ = ("_batch", "_data", "_db", "_pending", "partition", "touched")

    def __init__(self, table: Any, partition: int) -> None:
        self.partition = partition
        self.touched: dict[str, UserWindow] = {}
        self._data = table.data
        self._db = partition_db(table, partition) if uses_rocksdict(table) else None
        self._batch = rocksdict.WriteBatch(raw_mode=True) if self._db is not None else None
        self._pending = 0

    def get(self, key: bytes) -> bytes | None:
        if self._db is not None:
            return self._db.get(key)
        value: bytes | None = self._data.get(key)
        return value

    def put(self, key: bytes, value: bytes | None) -> None:
        if self._batch is None:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
            return
        if value is None:
            self._batch.delete(key)
        else:
            self._batch.put(key, value)
        self._pending += 1

    def flush(self) -> None:
        """Write what is pending (marking the partition uncommitted first)."""
        if self._pending and self._db is not None:
            uncommitted.before_write(self.partition)
            self._db.write(self._batch)
            self._batch = rocksdict.WriteBatch(raw_mode=True)
            self._pending = 0
        self.touched.clear()


class UserWindows:
    """Load/save :class:`UserWindow` s through the table, with an LRU cache."""

    def __init__(self, table: Any, lateness_s: float, chunk_rows: int, cache_size: int) -> None:
        self.table = table
        self.lateness_s = lateness_s
        self.chunk_rows = chunk_rows
        self.cache_size = cache_size
        self._cache: OrderedDict[str, UserWindow] = OrderedDict()

    def writer(self, partition: int) -> PartitionWriter:
        return PartitionWriter(self.table, partition)

    def load(self, user_id: str, state: PartitionWriter | None = None) -> UserWindow | None:
        """The user's window, or None if it has no state (raises StateCorruptError).

        With ``state`` (the hot path), read through the batch's pending writes
        and the partition's own database; without (lookups), through the table.
        """
        if state is not None:
            pending = state.touched.get(user_id)
            if pending is not None:
                return pending
        window = self._cache.get(user_id)
        if window is not None:
            self._cache.move_to_end(user_id)
            return window
        get = self.table.get if state is None else state.get
        head = get(head_key(user_id))
        if head is None:
            return None
        chunks = {no: get(chunk_key(user_id, no)) for no in UserWindow.chunk_numbers(head)}
        window = UserWindow.decode(user_id, head, chunks, self.lateness_s, self.chunk_rows)
        self._remember(user_id, window)
        return window

    def new(self, user_id: str) -> UserWindow:
        return UserWindow(user_id, self.lateness_s, self.chunk_rows)

    def save(
        self, window: UserWindow, writes: Iterable[StateWrite], state: PartitionWriter
    ) -> list[tuple[bytes, bytes | None]]:
        """Stage the changes in the batch's writes; return the changelog records to send.

        The writes bypass Faust's table API on purpose: that API queues one
        changelog message per write in a buffer that a background task
        drains later, outside the message's processing (and, under
        exactly_once, possibly in a later transaction), and writes RocksDB
        once per key. The hot path sends the returned records itself, with
        the feature record, and ``state`` writes one RocksDB batch.
        """
        user_id = window.user_id
        changes: list[tuple[bytes, bytes | None]] = []
        for write in writes:
            key = head_key(user_id) if write.chunk_no is None else chunk_key(user_id, write.chunk_no)
            changes.append((key, write.value))
        for key, value in changes:
            state.put(key, value)
        state.touched[user_id] = window
        self._remember(user_id, window)
        return changes

    def delete(
        self, user_id: str, chunk_numbers: Iterable[int], state: PartitionWriter
    ) -> list[tuple[bytes, bytes | None]]:
        """Stage the deletion of a user (head and chunks); return the changelog tombstones to send."""
        keys = [head_key(user_id), *(chunk_key(user_id, no) for no in chunk_numbers)]
        for key in keys:
            state.put(key, None)
        state.touched.pop(user_id, None)
        self.forget(user_id)
        return [(key, None) for key in keys]

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, user_id: str, window: UserWindow) -> None:
        if self.cache_size <= 0:
            return
        self._cache[user_id] = window
        self._cache.move_to_end(user_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


windows = UserWindows(
    user_state,
    lateness_s=settings.allowed_lateness_s,
    chunk_rows=settings.state_chunk_rows,
    cache_size=settings.user_cache_size,
)


async def _forget_cached_windows(sender: Any, *args: Any, **kwargs: Any) -> None:
    # Partitions may move; the table, not the cache, is the truth afterwards.
    windows.clear_cache()


connect(app.on_partitions_revoked, _forget_cached_windows)
connect(app.on_partitions_assigned, _forget_cached_windows)
connect(app.on_rebalance_complete, _forget_cached_windows)
connect(app.on_offsets_committed, persist_delivered_offsets)


class UserCounts:
    """The number of users with state in each active partition, kept exact without a scan on the loop.

    After an assignment, :meth:`recount` counts the head keys of each active
    partition with a RocksDB iterator, a bounded number of keys per event-loop
    turn. The iterator reads a snapshot taken when it was created, so users
    the agent creates in that partition meanwhile are counted apart and added
    at the end. A rebalance during a recount abandons it; the next one starts
    over. Between a rebalance and the end of the recount, :meth:`total` is the
    figure from before (``complete`` is False).
    """

    KEYS_PER_TURN = 5000

    def __init__(
        self,
        open_dbs: Callable[[], Mapping[int, Any]],
        offset_key: Callable[[], bytes | None],
        boundary: asyncio.Lock | None = None,
    ) -> None:
        self._open_dbs = open_dbs  # partition -> RocksDB database, as the table's store has them open
        self._offset_key = offset_key  # the store's own bookkeeping key, in every database
        # Held by the hot path for a whole batch (app.message_boundary): a partition's count starts
        # between batches, when every user a batch created is written (see recount).
        self._boundary = boundary if boundary is not None else asyncio.Lock()
        self._counts: dict[int, int] = {}  # partition -> users, once counted
        self._created_while_counting: dict[int, int] = {}
        self._generation = 0  # bumped at every rebalance
        self._last_total = 0
        self.complete = False

    def total(self) -> int:
        if self.complete:
            self._last_total = sum(self._counts.values())
        return self._last_total

    def on_new_user(self, partition: int) -> None:
        if partition in self._counts:
            self._counts[partition] += 1
        elif partition in self._created_while_counting:
            self._created_while_counting[partition] += 1

    def on_user_removed(self, partition: int) -> None:
        # A user removed while its partition is being counted was in the iterator's snapshot.
        if partition in self._counts:
            self._counts[partition] -= 1
        elif partition in self._created_while_counting:
            self._created_while_counting[partition] -= 1

    def on_rebalance(self) -> None:
        self.total()  # keep the last complete figure
        self._generation += 1
        self._counts.clear()
        self._created_while_counting.clear()
        self.complete = False

    async def recount(self, partitions: list[int]) -> bool:
        """Count the users of ``partitions``; False if a rebalance interrupted it."""
        generation = self._generation
        dbs = self._open_dbs()
        offset_key = self._offset_key()
        for partition in partitions:
            db = dbs.get(partition)
            if db is None:  # not open here (memory:// store in unit tests)
                self._counts[partition] = 0
                continue
            # Between two batches: a batch may create a user (on_new_user, before this partition
            # counts them apart) and write it only at its end, after an await inside it; a snapshot
            # taken then would miss that user for good (CI: one user short after a rebalance).
            async with self._boundary:
                if self._generation != generation or self._open_dbs().get(partition) is not db:
                    return False
                self._created_while_counting[partition] = 0
                keys = iter(cast(Any, db).keys())
            heads = 0
            while True:
                seen = 0
                for key in keys:
                    if key != offset_key and is_head_key(key):
                        heads += 1
                    seen += 1
                    if seen == self.KEYS_PER_TURN:
                        break
                if seen < self.KEYS_PER_TURN:
                    break
                await asyncio.sleep(0)
                if self._generation != generation or self._open_dbs().get(partition) is not db:
                    return False
            self._counts[partition] = heads + self._created_while_counting.pop(partition)
        if self._generation != generation:
            return False
        self.complete = True
        return True


async def _recount_after_rebalance(sender: Any, *args: Any, **kwargs: Any) -> None:
    user_counts.on_rebalance()


user_counts = UserCounts(
    lambda: open_partition_dbs(user_state), lambda: store_offset_key(user_state), app.message_boundary
)
connect(app.on_partitions_revoked, _recount_after_rebalance)
connect(app.on_partitions_assigned, _recount_after_rebalance)


stream_times = StreamTimes(settings.user_ttl_s, also_for_predictions=label_join(settings))


sweeper = Sweeper(
    lambda: open_partition_dbs(user_state),
    lambda partition, db: stream_times.floor(partition, db.get),
    lambda: store_offset_key(user_state),
    send_tick=lambda partition: send_expiry_tick(partition),
    prediction_floor=lambda partition, db: stream_times.prediction_floor(
        partition, db.get, settings.label_wait_s
    ),
)


async def _expiry_rebalance(sender: Any, *args: Any, **kwargs: Any) -> None:
    stream_times.clear()
    sweeper.on_rebalance()


connect(app.on_partitions_revoked, _expiry_rebalance)
connect(app.on_partitions_assigned, _expiry_rebalance)
connect(app.on_rebalance_complete, _expiry_rebalance)


def is_expired_in_table(window: UserWindow) -> bool:
    """For lookups: whether the user is forgotten by now (its state may not be deleted yet)."""
    partition = owner_partition(head_key(window.user_id), settings.topic_partitions)
    return stream_times.is_expired(partition, window.latest_ts_s, user_state.get)


async def send_expiry_tick(partition: int) -> None:
    """A message on the re-keying topic's ``partition``: its batch deletes the queued expired users."""
    producer = kafka_producer(app, None)
    if producer is None:
        raise RuntimeError("the producer is not running")
    await producer.send(settings.rekey_topic, b"{}", key=TICK_KEY, partition=partition)
