"""Expiry of inactive users (SPEC 4, "Expiry"): stream time per partition, and the sweep.

Two halves, so that expiry is exact and never a long scan on the event loop:

* **The rule, applied where it matters.** The stream time of a partition is
  the largest timestamp accepted on it (kept by :class:`StreamTimes`, stored
  in the partition's own RocksDB and changelog under :func:`stream_time_key`,
  so a restart, a restore and the partition's next owner know it). A user
  whose latest timestamp *M* is below ``stream time - USER_TTL_S`` is
  forgotten at that moment: the hot path deletes it before applying its next
  transaction (which then starts a new user), and a lookup answers 404. So
  what a user sees never depends on when the sweep ran.
* **The sweep, for users that never come back.** :class:`Sweeper` walks each
  active partition's heads in key order, ``KEYS_PER_TURN`` keys per
  event-loop turn (a fresh iterator each turn, so no snapshot is pinned for
  the length of a pass), and queues the expired ones. The hot path deletes
  queued users at the end of the partition's next batch, under the batch's
  lock and in its write batch and transaction (for at most
  ``EXPIRE_BUDGET_S`` of work per batch, after the batch's own records),
  writing tombstones for the head and every chunk to the changelog: a restore
  does not bring them back. A partition without traffic has no next batch:
  after a pass, each partition with queued users and no batch since the pass
  began gets a *tick* (:data:`TICK_KEY`) on the re-keying topic, the app's
  own input, so that a batch (and, under exactly_once, its transaction and
  offset commit) carries the deletions like any other; a tick's batch that
  leaves users queued sends the next tick. A pass starts every
  ``EXPIRY_SWEEP_INTERVAL_S``;
  a partition whose stream time has not passed the oldest *M* it kept in the
  previous pass is skipped (nothing new can have expired there).

Words: *floor* is the expiry floor of a partition, the smallest float
``>= stream time - USER_TTL_S``; a user is expired iff ``M < floor``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson

from records.label import PREDICTION_PREFIX, logged_event_time
from tables.window import _difference

log = logging.getLogger(__name__)

#: Prefix of the per-partition stream-time key. 0xFF never occurs in UTF-8, so
#: no head or chunk key starts with it (as for the uncommitted-writes mark).
STREAM_TIME_PREFIX = b"\xffstream_time:"

#: Key of a tick on the re-keying topic: no transaction, only a batch for the expiry queue to ride on.
TICK_KEY = b"\xffexpiry-tick"

#: Heads stored by tables/window.py start with these bytes (orjson keeps key order).
_HEAD_PREFIX = b'{"v":1,"latest_ts_s":'


def stream_time_key(partition: int) -> bytes:
    """One key per partition: the ``memory://`` store of the agent tests keeps all partitions in one dict."""
    return STREAM_TIME_PREFIX + str(partition).encode("ascii")


def expiry_floor(stream_time_s: float, ttl_s: float) -> float:
    """The smallest float ``>= stream_time_s - ttl_s`` in real arithmetic: ``M < floor`` iff expired."""
    return _difference(stream_time_s, ttl_s, round_up=True)


def head_latest_ts(head: bytes) -> float | None:
    """*M* of a stored head, reading only its first field when it is where the encoder puts it."""
    if head.startswith(_HEAD_PREFIX):
        end = head.find(b",", len(_HEAD_PREFIX))
        if end > 0:
            raw = head[len(_HEAD_PREFIX) : end]
            if raw != b"null":
                try:
                    return float(raw)
                except ValueError:
                    pass
            else:
                return None
    try:
        value = orjson.loads(head).get("latest_ts_s")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return None if value is None else float(value)


class StreamTimes:
    """The stream time of each partition this worker processes, read from the store once per assignment.

    ``read(key)`` reads the partition's store; the cache is dropped at every
    rebalance (the partition may have been restored or moved meanwhile).
    """

    def __init__(self, ttl_s: float, also_for_predictions: bool = False) -> None:
        self.ttl_s = ttl_s
        #: Kept when users expire, or when the prediction log (records/label.py) expires by it.
        self.tracking = ttl_s > 0 or also_for_predictions
        self._times: dict[int, float | None] = {}
        self._floors: dict[int, float | None] = {}
        self._dirty: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, partition: int, read: Callable[[bytes], bytes | None]) -> float | None:
        if partition in self._times:
            return self._times[partition]
        raw = read(stream_time_key(partition))
        value: float | None = None
        if raw is not None:
            try:
                value = float(orjson.loads(raw))
            except (orjson.JSONDecodeError, TypeError, ValueError):
                log.error(
                    "stream time of partition %s is unreadable (%r); starting it afresh", partition, raw
                )
        self._set(partition, value)
        return value

    def floor(self, partition: int, read: Callable[[bytes], bytes | None]) -> float | None:
        """The expiry floor of the partition, or None (expiry off, or nothing accepted yet)."""
        if not self.enabled:
            return None
        if partition not in self._floors:
            self.get(partition, read)
        return self._floors[partition]

    def prediction_floor(
        self, partition: int, read: Callable[[bytes], bytes | None], wait_s: float
    ) -> float | None:
        """Prediction-log entries of transactions stamped before this are past ``LABEL_WAIT_S``."""
        if not self.tracking or wait_s <= 0:
            return None
        current = self.get(partition, read)
        return None if current is None else current - wait_s

    def is_expired(
        self, partition: int, latest_ts_s: float | None, read: Callable[[bytes], bytes | None]
    ) -> bool:
        if latest_ts_s is None or not self.enabled:
            return False
        floor = self.floor(partition, read)
        return floor is not None and latest_ts_s < floor

    def advance(self, partition: int, timestamp_s: float, read: Callable[[bytes], bytes | None]) -> None:
        """A timestamp accepted on the partition."""
        current = self.get(partition, read)
        if current is None or timestamp_s > current:
            self._set(partition, timestamp_s)
            self._dirty.add(partition)

    def take_write(self, partition: int) -> tuple[bytes, bytes] | None:
        """The key and value to store if the partition's time moved since the last call."""
        if partition not in self._dirty:
            return None
        self._dirty.discard(partition)
        return stream_time_key(partition), orjson.dumps(self._times[partition])

    def clear(self) -> None:
        self._times.clear()
        self._floors.clear()
        self._dirty.clear()

    def _set(self, partition: int, value: float | None) -> None:
        self._times[partition] = value
        self._floors[partition] = (
            None if value is None or not self.enabled else expiry_floor(value, self.ttl_s)
        )


class Sweeper:
    """Finds expired users in the active partitions' stores and queues them for the hot path.

    ``open_dbs()`` gives partition -> RocksDB database as the table's store
    has them open (active and standby); ``floor(partition, db)`` the
    partition's expiry floor; ``send_tick(partition)`` sends a tick.
    """

    KEYS_PER_TURN = 1000
    #: Queued users per partition at most: a pass waits there until the hot path has deleted
    #: them (so it goes on from its last key, past the deleted ones, not over their tombstones).
    MAX_QUEUED = 5000
    WAIT_S = 0.05

    def __init__(
        self,
        open_dbs: Callable[[], Mapping[int, Any]],
        floor: Callable[[int, Any], float | None],
        offset_key: Callable[[], bytes | None],
        send_tick: Callable[[int], Awaitable[None]] | None = None,
        prediction_floor: Callable[[int, Any], float | None] | None = None,
    ) -> None:
        self._open_dbs = open_dbs
        self._prediction_floor = prediction_floor
        self._send_tick = send_tick
        self._floor = floor
        self._offset_key = offset_key
        self.queued: dict[int, OrderedDict[str, None]] = {}  # partition -> user ids (an ordered set)
        #: partition -> prediction-log keys past LABEL_WAIT_S (records/label.py)
        self.queued_predictions: dict[int, OrderedDict[bytes, None]] = {}
        self._oldest_kept: dict[int, float] = {}  # partition -> smallest M left by its last full pass
        self._oldest_prediction_kept: dict[int, float] = {}  # the same for prediction-log entries
        self._generation = 0
        self._batch_at: dict[int, float] = {}  # partition -> monotonic time of its last batch
        self.passes = 0
        self.last_pass_s: float | None = None
        self.last_pass_keys = 0

    def on_rebalance(self) -> None:
        """Partitions may move: queues and per-partition knowledge are dropped, a running pass stops."""
        self._generation += 1
        self.queued.clear()
        self.queued_predictions.clear()
        self._oldest_kept.clear()
        self._oldest_prediction_kept.clear()

    def note_latest(self, partition: int, latest_ts_s: float) -> None:
        """A user of the partition now has this *M* (it may be older than any the last pass kept)."""
        oldest = self._oldest_kept.get(partition)
        if oldest is not None and latest_ts_s < oldest:
            self._oldest_kept[partition] = latest_ts_s

    def note_prediction(self, partition: int, event_time_s: float) -> None:
        """A prediction-log entry of the partition now has this event time."""
        oldest = self._oldest_prediction_kept.get(partition)
        if oldest is not None and event_time_s < oldest:
            self._oldest_prediction_kept[partition] = event_time_s

    def note_batch(self, partition: int) -> None:
        """The hot path is processing a batch of the partition (so it needs no tick)."""
        self._batch_at[partition] = time.monotonic()

    def pop(self, partition: int) -> str | None:
        """The next queued user of ``partition``, or None (the hot path checks it again)."""
        queue = self.queued.get(partition)
        if not queue:
            return None
        return queue.popitem(last=False)[0]

    def pop_prediction(self, partition: int) -> bytes | None:
        """The next queued prediction-log key of ``partition``, or None (the hot path checks it again)."""
        queue = self.queued_predictions.get(partition)
        if not queue:
            return None
        return queue.popitem(last=False)[0]

    def has_queued(self, partition: int) -> bool:
        return bool(self.queued.get(partition)) or bool(self.queued_predictions.get(partition))

    def _queued_count(self, partition: int) -> int:
        return len(self.queued.get(partition, ())) + len(self.queued_predictions.get(partition, ()))

    async def tick(self, partition: int) -> bool:
        """Send a tick to ``partition`` (its batch deletes queued users); False if it could not be sent."""
        if self._send_tick is None:
            return False
        try:
            await self._send_tick(partition)
        except Exception as exc:  # noqa: BLE001 - the next pass or wait tries again
            log.warning("could not send an expiry tick to partition %s: %s", partition, exc)
            return False
        return True

    def _batch_since(self, partition: int, since: float) -> bool:
        return self._batch_at.get(partition, -math.inf) >= since

    async def sweep(self, partitions: Iterable[int]) -> bool:
        """One pass over ``partitions`` (the active ones); False if a rebalance interrupted it.

        Partitions left with queued users and no batch since the pass began get a tick.
        """
        generation = self._generation
        started = time.monotonic()
        keys = 0
        for partition in sorted(partitions):
            db = self._open_dbs().get(partition)
            if db is None:
                continue
            floor = self._floor(partition, db)
            if floor is not None and floor <= self._oldest_kept.get(partition, -math.inf):
                floor = None  # nothing has fallen behind since the last pass
            prediction_floor = (
                None if self._prediction_floor is None else self._prediction_floor(partition, db)
            )
            if prediction_floor is not None and prediction_floor <= self._oldest_prediction_kept.get(
                partition, -math.inf
            ):
                prediction_floor = None
            if floor is None and prediction_floor is None:
                continue  # no stream time yet, or nothing has fallen behind since the last pass
            done = await self._sweep_partition(partition, db, floor, prediction_floor, generation)
            keys += done
            if self._generation != generation:
                return False
        self.passes += 1
        self.last_pass_s = time.monotonic() - started
        self.last_pass_keys = keys
        for partition in sorted(set(self.queued) | set(self.queued_predictions)):
            if self.has_queued(partition) and not self._batch_since(partition, started):
                await self.tick(partition)
        return True

    async def _sweep_partition(
        self, partition: int, db: Any, floor: float | None, prediction_floor: float | None, generation: int
    ) -> int:
        queue = self.queued.setdefault(partition, OrderedDict())
        predictions = self.queued_predictions.setdefault(partition, OrderedDict())
        offset_key = self._offset_key()
        oldest = oldest_prediction = math.inf
        last: bytes | None = None
        seen = 0
        while True:
            it = db.iter()
            if last is None and floor is None:
                it.seek(PREDICTION_PREFIX)  # only the prediction log to look at: it sorts last
            elif last is None:
                it.seek_to_first()
            else:
                it.seek(last)
                if it.valid() and it.key() == last:
                    it.next()
            turn = 0
            while it.valid() and turn < self.KEYS_PER_TURN:
                key = it.key()
                last = key
                turn += 1
                if b"\xff" not in key:
                    if floor is not None and key != offset_key:  # a head (tables/user_state.py)
                        latest = head_latest_ts(it.value())
                        if latest is not None:
                            if latest < floor:
                                queue[key.decode("utf-8")] = None
                            elif latest < oldest:
                                oldest = latest
                elif prediction_floor is not None and key.startswith(PREDICTION_PREFIX):
                    stamped = logged_event_time(it.value())
                    if stamped is not None:
                        if stamped < prediction_floor:
                            predictions[key] = None
                        elif stamped < oldest_prediction:
                            oldest_prediction = stamped
                it.next()
            seen += turn
            if turn < self.KEYS_PER_TURN:
                break
            await asyncio.sleep(0)
            if not await self._wait_for_room(partition, generation, db):
                return seen
        if floor is not None:
            self._oldest_kept[partition] = oldest
        if prediction_floor is not None:
            self._oldest_prediction_kept[partition] = oldest_prediction
        return seen

    async def _wait_for_room(self, partition: int, generation: int, db: Any) -> bool:
        """Until the hot path has deleted most of a full queue; False if a rebalance came first."""
        since = time.monotonic()
        ticked = False
        while True:
            if self._generation != generation or self._open_dbs().get(partition) is not db:
                return False
            if self._queued_count(partition) < self.MAX_QUEUED:
                return True
            if not ticked and not self._batch_since(partition, since):
                ticked = await self.tick(partition)  # no batch is coming: a tick brings one
            await asyncio.sleep(self.WAIT_S)
