"""The per-user state table and its bridge to the pure :class:`UserWindow`.

One RocksDB-backed Faust table, ``user-state``, with raw byte keys: the head
of a user is stored under the user id's UTF-8 bytes (exactly the bytes of the
topic key, so ``table_route``/the router find the owner), and each sealed
chunk under ``user id + 0xFF + chunk number`` (0xFF never occurs in UTF-8, so
the two kinds cannot collide). Every key of a user lives in the partition that
owns the user, and its changelog is co-partitioned with the input topic.

Decoded windows are kept in a bounded LRU cache in front of the table, so a
heavy user is not decoded on every transaction; the cache is emptied at every
rebalance, because then the table may have changed under it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import faust
from faust.types import TP

from app.faust_fixes import after_commit
from app.health import health
from app.main import app, settings
from tables.window import StateWrite, UserWindow

log = logging.getLogger(__name__)

CHUNK_SEPARATOR = b"\xff"


async def _count_changelog_event(event: Any) -> None:
    # Faust applies changelog events to active partitions while it restores
    # them (app.in_recovery) and to standby partitions afterwards.
    health.on_changelog_event(restoring_active=bool(app.in_recovery))


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
    help="Per-user sliding-window state: heads and sealed chunks (tables/window.py).",
)


def changelog_topic_name() -> str:
    return str(user_state.changelog_topic.get_topic_name())


_delivered: dict[TP, int] = {}


def on_changelog_delivered(metadata: Any) -> None:
    """Remember the highest changelog offset delivered per partition (written at the next commit)."""
    tp = TP(metadata.topic, metadata.partition)
    if metadata.offset > _delivered.get(tp, -1):
        _delivered[tp] = metadata.offset


def persist_delivered_offsets() -> None:
    """After an offset commit: record in RocksDB how far the changelog is in the local store.

    It is what lets a warm restart replay only the changelog written since.
    Faust writes it once per changelog message (a second RocksDB write per
    table write) and, under exactly_once, never: its pending offsets are
    keyed by changelog partition but looked up by input partition. Once per
    commit and partition is enough, and after the commit it is also true
    under exactly_once (the transaction holding those records committed).
    """
    open_dbs = getattr(user_state.data, "_dbs", {})
    for tp, offset in list(_delivered.items()):
        if tp.partition in open_dbs:  # not a partition revoked since
            user_state.data.set_persisted_offset(tp, offset)
    _delivered.clear()


def head_key(user_id: str) -> bytes:
    return user_id.encode("utf-8")


def chunk_key(user_id: str, chunk_no: int) -> bytes:
    return head_key(user_id) + CHUNK_SEPARATOR + str(chunk_no).encode("ascii")


def is_head_key(key: bytes) -> bool:
    return CHUNK_SEPARATOR not in key


class UserStateStore:
    """Load/save :class:`UserWindow` s through the table, with an LRU cache."""

    def __init__(self, table: Any, lateness_s: float, chunk_rows: int, cache_size: int) -> None:
        self.table = table
        self.lateness_s = lateness_s
        self.chunk_rows = chunk_rows
        self.cache_size = cache_size
        self._cache: OrderedDict[str, UserWindow] = OrderedDict()

    def load(self, user_id: str) -> UserWindow | None:
        """The user's window, or None if it has no state (raises StateCorruptError)."""
        window = self._cache.get(user_id)
        if window is not None:
            self._cache.move_to_end(user_id)
            return window
        head = self.table.get(head_key(user_id))
        if head is None:
            return None
        chunks = {no: self.table.get(chunk_key(user_id, no)) for no in UserWindow.chunk_numbers(head)}
        window = UserWindow.decode(user_id, head, chunks, self.lateness_s, self.chunk_rows)
        self._remember(user_id, window)
        return window

    def new(self, user_id: str) -> UserWindow:
        return UserWindow(user_id, self.lateness_s, self.chunk_rows)

    def save(self, window: UserWindow, writes: Iterable[StateWrite]) -> list[tuple[bytes, bytes | None]]:
        """Write the changes to the local store; return the changelog records to send.

        Inside an agent, the store puts them in the event's partition. The
        writes bypass Faust's table API on purpose: that API queues one
        changelog message per write in a buffer that a background task
        drains later, outside the message's processing (and, under
        exactly_once, possibly in a later transaction). The agent sends the
        returned records itself, awaited, with the feature record.
        """
        user_id = window.user_id
        data = self.table.data
        changes: list[tuple[bytes, bytes | None]] = []
        for write in writes:
            key = head_key(user_id) if write.chunk_no is None else chunk_key(user_id, write.chunk_no)
            if write.value is None:
                data.pop(key, None)
            else:
                data[key] = write.value
            changes.append((key, write.value))
        self._remember(user_id, window)
        return changes

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


store = UserStateStore(
    user_state,
    lateness_s=settings.allowed_lateness_s,
    chunk_rows=settings.state_chunk_rows,
    cache_size=settings.user_cache_size,
)


async def _forget_cached_windows(sender: Any, *args: Any, **kwargs: Any) -> None:
    # Partitions may move; the table, not the cache, is the truth afterwards.
    store.clear_cache()


app.on_partitions_revoked.connect(_forget_cached_windows)
app.on_partitions_assigned.connect(_forget_cached_windows)
app.on_rebalance_complete.connect(_forget_cached_windows)
after_commit.append(persist_delivered_offsets)
