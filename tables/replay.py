"""History through the worker's own code: SPEC 4 decisions over a private RocksDB (SPEC 9).

:class:`HistoryState` is what ``faust -A app export`` runs every retained
transaction through. It applies the same :class:`tables.window.UserWindow`
the hot path applies (duplicates, lateness, eviction, exact sums), with the
same stored layout (heads and chunks, :func:`tables.window.head_key`), and the
same expiry rule (:class:`tables.expiry.StreamTimes`, stream time per owner
partition), so a training row and the record the live pipeline published
for the same transaction cannot disagree. What it leaves out is what has no
effect on a record: changelog, offsets, transactions, the sweep (it only
deletes users that are expired already).

State lives in a temporary RocksDB, not a dict of users, so memory is bounded
by the decoded-window cache (``cache_size`` windows) and the pending write
batch, whatever the number of users in the history. A window's head is
stored when the cache lets the window go, not after every transaction (the
worker needs it in its changelog at once; a replay does not).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import rocksdict

from records.transaction import Transaction
from tables.expiry import StreamTimes
from tables.window import Outcome, UserWindow, chunk_key, head_key

#: Writes gathered before they go to RocksDB in one write batch.
FLUSH_EVERY = 5_000


_NO_WAL = rocksdict.WriteOptions()
_NO_WAL.disable_wal = True  # type: ignore[method-assign,assignment]  # a property at run time; the stub says method


def _nothing_stored(key: bytes) -> bytes | None:
    return None  # stream times live in StreamTimes only: the export starts from an empty history


class HistoryState:
    """Per-user windows of a replay, in a RocksDB at ``path`` (created; the caller removes it)."""

    def __init__(
        self,
        path: Path,
        lateness_s: float,
        chunk_rows: int,
        ttl_s: float,
        cache_size: int = 20_000,
    ) -> None:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(16 * 1024 * 1024)
        options.set_max_write_buffer_number(2)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(rocksdict.Cache(16 * 1024 * 1024))
        table.set_bloom_filter(10, block_based=True)
        table.set_cache_index_and_filter_blocks(True)  # their memory counts in (and is bounded by) the cache
        options.set_block_based_table_factory(table)
        self._db = rocksdict.Rdict(str(path), options=options)
        self._db.set_write_options(_NO_WAL)  # a throwaway database: no write-ahead log
        self._pending: dict[bytes, bytes | None] = {}
        self._cache: OrderedDict[str, UserWindow] = OrderedDict()
        self._dirty: set[str] = set()  # cached windows whose head is not stored yet
        self.cache_size = cache_size
        self.lateness_s = lateness_s
        self.chunk_rows = chunk_rows
        self.stream_times = StreamTimes(ttl_s)
        self.users_expired = 0

    def apply(self, txn: Transaction, partition: int, computed_at_s: float) -> Outcome:
        """Decide ``txn`` of a user owned by ``partition``, as the hot path does (SPEC 4)."""
        user_id = txn.user_id
        window = self._load(user_id)
        stream_times = self.stream_times
        if window is not None and stream_times.is_expired(partition, window.latest_ts_s, _nothing_stored):
            self._forget(window)  # SPEC 4, Expiry: the transaction starts a new user
            self.users_expired += 1
            window = None
        if window is None:
            window = UserWindow(user_id, self.lateness_s, self.chunk_rows)
        try:
            outcome = window.apply(txn, computed_at_s, with_head=False)
        except Exception:
            # Maybe half-updated: read it again from its stored state (as of its last write).
            self._cache.pop(user_id, None)
            self._dirty.discard(user_id)
            raise
        for write in outcome.writes:
            key = head_key(user_id) if write.chunk_no is None else chunk_key(user_id, write.chunk_no)
            self._put(key, write.value)
        if outcome.verdict == "accepted":
            self._dirty.add(user_id)
        self._remember(window)
        if outcome.verdict == "accepted" and stream_times.enabled:
            stream_times.advance(partition, txn.timestamp, _nothing_stored)
        return outcome

    def close(self) -> None:
        self._pending.clear()
        self._cache.clear()
        self._db.close()

    # ----------------------------------------------------------------- storage
    def _get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        value: bytes | None = self._db.get(key)
        return value

    def _put(self, key: bytes, value: bytes | None) -> None:
        self._pending[key] = value
        if len(self._pending) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)
        self._pending.clear()

    def _load(self, user_id: str) -> UserWindow | None:
        window = self._cache.get(user_id)
        if window is not None:
            self._cache.move_to_end(user_id)
            return window
        head = self._get(head_key(user_id))
        if head is None:
            return None
        chunks = {no: self._get(chunk_key(user_id, no)) for no in UserWindow.chunk_numbers(head)}
        return UserWindow.decode(user_id, head, chunks, self.lateness_s, self.chunk_rows)

    def _forget(self, window: UserWindow) -> None:
        user_id = window.user_id
        for key in (head_key(user_id), *(chunk_key(user_id, no) for no in window.chunks)):
            self._put(key, None)
        self._cache.pop(user_id, None)
        self._dirty.discard(user_id)

    def _remember(self, window: UserWindow) -> None:
        cache = self._cache
        cache[window.user_id] = window
        cache.move_to_end(window.user_id)
        while len(cache) > self.cache_size:
            user_id, evicted = cache.popitem(last=False)
            if user_id in self._dirty:
                self._dirty.discard(user_id)
                self._put(head_key(user_id), evicted.encode_head())
