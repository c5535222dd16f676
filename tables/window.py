"""Exact sliding-window state of one user (SPEC section 4), in plain Python.

Nothing here imports Faust or Kafka: the agent decodes a message, calls
:meth:`UserWindow.apply`, writes the :class:`StateWrite` s it returns to the
table and publishes the features. Correctness lives here and is tested against
a brute-force oracle (tests/unit/test_window_properties.py).

Layout of the stored state, chosen so that a transaction costs one small table
write even for a user with tens of thousands of transactions a day:

* the *head* (one table key per user) holds the scalars (latest timestamp,
  latest evicted timestamp, counters), the index of sealed chunks and the
  *tail*: the transactions accepted since the last seal, at most
  ``chunk_rows`` of them;
* when the tail is full it is *sealed* into an immutable chunk (its own
  table key, written once) and the tail starts empty again;
* a chunk is deleted once all its transactions are evicted.

So each transaction writes the head (bounded by ``chunk_rows`` rows plus the
chunk index) and, once every ``chunk_rows`` transactions, one chunk.

In memory, derived structures (rebuilt on decode, never stored) keep the
features of a user with tens of thousands of transactions a day cheap:

* exact prefix sums of the amounts and of their squares as Python ints (every
  float is a dyadic rational, so ``amount * 2**E`` is an exact int for a
  large enough ``E``): window sums, means and the z-score are differences of
  two entries, rounded once, with no drift;
* a stack of right-to-left maxima for ``max_amount_24h`` of windows that end
  at or after the latest timestamp ``M``;
* per-merchant counts of the 1 h and 24 h windows ending at ``M``.

Windows ending before ``M`` (out-of-order arrivals, re-published duplicates,
lookups in the past) fall back to slices for the maximum and unique counts.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from fractions import Fraction
from itertools import repeat
from operator import itemgetter, mul, sub
from typing import Any, Literal

import orjson

from records.errors import StateCorruptError
from records.transaction import Transaction

WINDOW_1H_S = 3600.0
WINDOW_24H_S = 86400.0
STATE_FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 128
# Initial scale of the exact prefix sums: amounts >= 2**-11 (all amounts with
# cents, say) are exact ints times 2**64; a finer amount rescales the sums.
_MIN_SUM_EXP = 64
_MIN_SUM_SCALE = float(2**_MIN_SUM_EXP)
# The maxima and per-merchant counts are kept from _BIG_FROM retained
# transactions on, until there are fewer than _BIG_UNTIL (apart, so that a
# user hovering around one size does not rebuild them again and again).
_BIG_FROM = 64
_BIG_UNTIL = 16


def _row(txn: Transaction, seq: int) -> list[Any]:
    """How a transaction is stored in a head's tail or a chunk (``seq``: acceptance order)."""
    return [
        txn.transaction_id,
        txn.timestamp,
        txn.amount,
        txn.merchant_id,
        txn.merchant_category,
        txn.is_online,
        seq,
    ]


def _from_row(user_id: str, row: list[Any]) -> tuple[int, Transaction]:
    txid, ts, amount, merchant, category, online, seq = _normal_row(row)
    return seq, Transaction(txid, user_id, amount, merchant, category, ts, online)


#: Between a user id and a chunk number in a chunk's key (0xFF never occurs in UTF-8).
CHUNK_SEPARATOR = b"\xff"


def head_key(user_id: str) -> bytes:
    """Where a user's head is stored: its id's UTF-8 bytes (the topic key, so routing finds the owner)."""
    return user_id.encode("utf-8")


def chunk_key(user_id: str, chunk_no: int) -> bytes:
    return head_key(user_id) + CHUNK_SEPARATOR + str(chunk_no).encode("ascii")


def is_head_key(key: bytes) -> bool:
    return CHUNK_SEPARATOR not in key


@dataclass(slots=True)  # immutable by convention; not frozen: see Transaction
class StateWrite:
    """One table write: the head (``chunk_no is None``) or a chunk; ``value=None`` deletes."""

    chunk_no: int | None
    value: bytes | None


Verdict = Literal["accepted", "duplicate", "late"]


@dataclass(slots=True)  # immutable by convention; not frozen: see Transaction
class Outcome:
    verdict: Verdict
    features: dict[str, Any] | None  # the record to publish (accepted, duplicate)
    writes: tuple[StateWrite, ...]
    reason: str = ""  # for late events: the human line for the dead letter


_NO_CHUNKS = orjson.Fragment(b"[]")
#: Per retained transaction, its id, merchant and category follow one another in ``_strs``.
_ID, _MERCHANT, _CATEGORY, _STRIDE = 0, 1, 2, 3


class UserWindow:
    """All retained transactions of one user, sorted by (timestamp, acceptance).

    Held as a handful of flat containers (arrays of floats, one list of
    strings, a bytearray) rather than an object per transaction: a decoded
    window is about five objects the garbage collector tracks, whatever its
    size, so the collections of a worker that decodes thousands of windows a
    second stay short (README, *Performance*).
    """

    __slots__ = (
        "_amounts",
        "_big",
        "_by_id",
        "_chunk_frag",
        "_chunks_min_ts",
        "_exp",
        "_max_amounts",
        "_max_ts",
        "_merchants_1h",
        "_merchants_24h",
        "_online",
        "_sq_sums",
        "_start",
        "_strs",
        "_sums",
        "_tail",
        "_tail_min_ts",
        "_ts",
        "chunk_rows",
        "chunks",
        "evicted_ts_s",
        "lateness_s",
        "latest_ts_s",
        "next_chunk",
        "next_seq",
        "user_id",
    )

    def __init__(self, user_id: str, lateness_s: float, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        self.user_id = user_id
        self.lateness_s = float(lateness_s)
        self.chunk_rows = chunk_rows
        self.latest_ts_s: float | None = None  # M
        self.evicted_ts_s: float | None = None  # latest evicted timestamp
        self.next_seq = 0
        self.next_chunk = 0
        self.chunks: dict[int, float] = {}  # chunk no -> max timestamp in it
        # The chunk index as stored, and the smallest max timestamp of a chunk.
        self._chunk_frag = _NO_CHUNKS
        self._chunks_min_ts = math.inf
        # The tail (accepted since the last seal, acceptance order) as stored:
        # timestamp and encoded row alternating, and its smallest timestamp.
        self._tail: list[Any] = []
        self._tail_min_ts = math.inf
        # Parallel arrays sorted by (ts, acceptance), for bisect and C-speed
        # slices; entry i's strings are _strs[3i:3i+3] (id, merchant, category).
        # Entries before _start are evicted; they are dropped in bulk (see _evict).
        self._start = 0
        self._ts = array("d")
        self._amounts = array("d")
        self._strs: list[str] = []
        self._online = bytearray()
        self._by_id: dict[str, float] = {}  # retained id -> its timestamp
        self._big = False
        # Only while the window is big (_big), see _set_big:
        # exact prefix sums, one entry longer than _ts: _sums[j] - _sums[i] is
        # the sum of the amounts of entries i..j-1 times 2**_exp, _sq_sums the
        # same for their squares times 2**(2 * _exp) (small windows sum their
        # slices instead); the right-to-left maxima of the retained amounts
        # (the entries larger than every later one, by position, so strictly
        # decreasing amounts); and merchant -> count over the retained entries
        # with M - W < ts <= M.
        self._exp = _MIN_SUM_EXP
        self._sums = self._sq_sums = _NO_SUMS
        self._max_ts = _EMPTY
        self._max_amounts = _EMPTY
        self._merchants_1h: dict[str, int] = {}
        self._merchants_24h: dict[str, int] = {}

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._ts) - self._start

    def _txn(self, i: int) -> Transaction:
        s = _STRIDE * i
        return Transaction(
            self._strs[s + _ID],
            self.user_id,
            self._amounts[i],
            self._strs[s + _MERCHANT],
            self._strs[s + _CATEGORY],
            self._ts[i],
            bool(self._online[i]),
        )

    @property
    def retained(self) -> list[Transaction]:
        return [self._txn(i) for i in range(self._start, len(self._ts))]

    @property
    def tail(self) -> list[Transaction]:
        """The transactions accepted since the last seal, in acceptance order, as stored."""
        return [_from_row(self.user_id, orjson.loads(row))[1] for row in self._tail[1::2]]

    def retention_floor_s(self) -> float:
        """Transactions with ``ts <= floor`` are evicted.

        The largest float ``<= M - 24 h - L`` in real arithmetic, so that
        ``ts <= floor`` is exactly ``ts <= M - 24 h - L`` for every float ``ts``.
        """
        assert self.latest_ts_s is not None
        return _difference(self.latest_ts_s, WINDOW_24H_S, self.lateness_s, round_up=False)

    def lateness_floor_s(self) -> float | None:
        """``M - L``: the earliest timestamp still accepted (and queryable).

        The smallest float ``>= M - L`` in real arithmetic, so that ``ts < floor``
        is exactly ``ts < M - L`` for every float ``ts`` (``L`` need not be an
        integer, and ``M - L`` need not be a float).
        """
        if self.latest_ts_s is None:
            return None
        return _difference(self.latest_ts_s, self.lateness_s, round_up=True)

    def _position(self, transaction_id: str, ts: float) -> int:
        """Where the retained transaction ``transaction_id`` (at ``ts``) is."""
        strs = self._strs
        i = bisect_left(self._ts, ts, self._start)
        while strs[_STRIDE * i + _ID] != transaction_id:
            i += 1
        return i

    # ---------------------------------------------------------------- updates
    def apply(self, txn: Transaction, computed_at_s: float, with_head: bool = True) -> Outcome:
        """Process one validated transaction (SPEC 4: duplicates, lateness, accept).

        ``with_head=False`` leaves the head out of the writes: a caller that
        keeps the window in memory stores :meth:`encode_head` when it lets
        the window go (the export), instead of once per transaction.
        """
        known_ts = self._by_id.get(txn.transaction_id)
        floor = self.lateness_floor_s()
        if known_ts is not None:
            assert floor is not None
            if known_ts >= floor:
                p = self._position(txn.transaction_id, known_ts)
                return Outcome("duplicate", self._features_at(p, computed_at_s), ())
            return Outcome(
                "late",
                None,
                (),
                f"timestamp: duplicate of transaction_id {txn.transaction_id!r} at "
                f"{known_ts!r}, older than the lateness floor {floor!r} (M - ALLOWED_LATENESS_S)",
            )
        if floor is not None and txn.timestamp < floor:
            return Outcome(
                "late",
                None,
                (),
                f"timestamp: {txn.timestamp!r} is older than the lateness floor {floor!r} "
                f"(latest {self.latest_ts_s!r} - ALLOWED_LATENESS_S {self.lateness_s!r})",
            )
        ts = txn.timestamp
        self._tail += (ts, orjson.dumps(_row(txn, self.next_seq)))
        self.next_seq += 1
        if ts < self._tail_min_ts:
            self._tail_min_ts = ts
        previous = self.latest_ts_s
        if previous is None or ts > previous:
            self.latest_ts_s = ts
        i = self._insert(txn, previous)
        writes, evicted = self._evict()
        size = len(self._ts) - self._start
        if size >= _BIG_FROM if not self._big else size < _BIG_UNTIL:
            self._set_big(not self._big)
        if len(self._tail) >= 2 * self.chunk_rows:
            writes.append(self._seal())
        if with_head:
            writes.append(StateWrite(None, self.encode_head()))
        # The new entry is retained (ts >= M - L > M - 24 h - L); evictions moved it.
        return Outcome("accepted", self._features_at(i - evicted, computed_at_s), tuple(writes))

    def _insert(self, txn: Transaction, previous_m: float | None) -> int:
        """Add ``txn`` (``latest_ts_s`` already includes it; it was ``previous_m``); its position."""
        # bisect_right on ts puts it after equal timestamps: accepted last.
        ts = txn.timestamp
        amount = txn.amount
        i = bisect_right(self._ts, ts, self._start)
        self._ts.insert(i, ts)
        self._amounts.insert(i, amount)
        s = _STRIDE * i
        self._strs[s:s] = (txn.transaction_id, txn.merchant_id, txn.merchant_category)
        self._online.insert(i, txn.is_online)
        self._by_id[txn.transaction_id] = ts
        if not self._big:
            return i

        num, den = amount.as_integer_ratio()
        e = den.bit_length() - 1
        if e > self._exp:
            self._rescale(e)
        shift = self._exp - e
        scaled = num << shift
        squared = (num * num) << (2 * shift)
        sums, sq_sums = self._sums, self._sq_sums
        if i + 1 == len(sums):  # in order: append
            sums.append(sums[i] + scaled)
            sq_sums.append(sq_sums[i] + squared)
        else:  # out of order: every later prefix grows
            sums.insert(i + 1, sums[i] + scaled)
            sq_sums.insert(i + 1, sq_sums[i] + squared)
            sums[i + 2 :] = [v + scaled for v in sums[i + 2 :]]
            sq_sums[i + 2 :] = [v + squared for v in sq_sums[i + 2 :]]

        m = self.latest_ts_s
        assert m is not None
        if previous_m is not None and m > previous_m:
            self._slide_merchants(previous_m, m)
        merchant = txn.merchant_id
        if ts > m - WINDOW_1H_S:
            counts = self._merchants_1h
            counts[merchant] = counts.get(merchant, 0) + 1
        if ts > m - WINDOW_24H_S:
            counts = self._merchants_24h
            counts[merchant] = counts.get(merchant, 0) + 1
        # The maxima: the entries after position i are those with ts > txn's.
        max_ts, max_amounts = self._max_ts, self._max_amounts
        k = bisect_right(max_ts, ts)
        if k < len(max_amounts) and max_amounts[k] >= amount:
            return i
        j = k
        while j and max_amounts[j - 1] <= amount:
            j -= 1
        max_ts[j:k] = array("d", (ts,))
        max_amounts[j:k] = array("d", (amount,))
        return i

    def _rescale(self, exp: int) -> None:
        shift = exp - self._exp
        self._exp = exp
        self._sums = [v << shift for v in self._sums]
        self._sq_sums = [v << (2 * shift) for v in self._sq_sums]

    def _merchant_slice(self, lo: int, hi: int) -> list[str]:
        return self._strs[_STRIDE * lo + _MERCHANT : _STRIDE * hi : _STRIDE]

    def _slide_merchants(self, old_m: float, new_m: float) -> None:
        """M moved from ``old_m`` to ``new_m``: uncount what left the windows ending at M."""
        ts, start = self._ts, self._start
        for width, counts in ((WINDOW_1H_S, self._merchants_1h), (WINDOW_24H_S, self._merchants_24h)):
            lo = bisect_right(ts, old_m - width, start)
            hi = bisect_right(ts, new_m - width, lo)
            for merchant in self._merchant_slice(lo, hi):
                left = counts[merchant] - 1
                if left:
                    counts[merchant] = left
                else:
                    del counts[merchant]

    def _set_big(self, big: bool) -> None:
        """Build (or drop) the structures that only pay off for big windows.

        They give the same answers as the slices they replace, so when they
        exist does not matter for the features.
        """
        self._big = big
        self._sums = self._sq_sums = _NO_SUMS
        self._max_ts, self._max_amounts = _EMPTY, _EMPTY
        self._merchants_1h, self._merchants_24h = {}, {}
        if not big:
            return
        self._build_sums()
        start = self._start
        max_ts: list[float] = []
        max_amounts: list[float] = []
        ts, amounts = self._ts, self._amounts
        for i in range(len(ts) - 1, start - 1, -1):
            a = amounts[i]
            if not max_amounts or a > max_amounts[-1]:
                max_ts.append(ts[i])
                max_amounts.append(a)
        max_ts.reverse()
        max_amounts.reverse()
        self._max_ts, self._max_amounts = array("d", max_ts), array("d", max_amounts)
        m = self.latest_ts_s
        assert m is not None
        for width, counts in ((WINDOW_1H_S, self._merchants_1h), (WINDOW_24H_S, self._merchants_24h)):
            for merchant in self._merchant_slice(bisect_right(ts, m - width, start), len(ts)):
                counts[merchant] = counts.get(merchant, 0) + 1

    def _build_sums(self) -> None:
        """The prefix sums of all entries (before ``_start`` too, so positions line up)."""
        self._exp, self._sums, self._sq_sums = _prefix_sums(self._amounts)

    def _evict(self) -> tuple[list[StateWrite], int]:
        """Drop what fell out of the retention; the writes and how far positions moved."""
        floor = self.retention_floor_s()
        start = self._start
        end = bisect_right(self._ts, floor, start)
        writes: list[StateWrite] = []
        if end == start:
            return writes, 0
        latest_gone = self._ts[end - 1]
        if self.evicted_ts_s is None or latest_gone > self.evicted_ts_s:
            self.evicted_ts_s = latest_gone
        by_id, strs, ts = self._by_id, self._strs, self._ts
        for k in range(start, end):
            txid = strs[_STRIDE * k + _ID]
            # An id may have been re-used by a later, retained transaction.
            if by_id.get(txid) == ts[k]:
                del by_id[txid]
        # Deleting from the front of the arrays moves all of them: do it only
        # once the evicted entries are as many as the retained ones.
        self._start = end
        moved = 0
        if 2 * end >= len(ts):
            del ts[:end], self._amounts[:end], strs[: _STRIDE * end], self._online[:end]
            if self._big:
                del self._sums[:end], self._sq_sums[:end]
            self._start = 0
            moved = end
        if self._big:
            k = bisect_right(self._max_ts, floor)
            del self._max_ts[:k], self._max_amounts[:k]
        if self._tail_min_ts <= floor:
            tail = self._tail
            kept = [k for k in range(0, len(tail), 2) if tail[k] > floor]
            self._tail = [v for k in kept for v in (tail[k], tail[k + 1])]
            self._tail_min_ts = min(self._tail[::2], default=math.inf)
        # A chunk's latest transaction is evicted in the call that makes the chunk
        # evictable, so with nothing evicted (the early return) no chunk is.
        if self._chunks_min_ts <= floor:
            for no in [no for no, max_ts in self.chunks.items() if max_ts <= floor]:
                del self.chunks[no]
                writes.append(StateWrite(no, None))
            self._chunks_changed()
        return writes, moved

    def _chunks_changed(self) -> None:
        self._chunk_frag = orjson.Fragment(orjson.dumps([[no, max_ts] for no, max_ts in self.chunks.items()]))
        self._chunks_min_ts = min(self.chunks.values(), default=math.inf)

    def _seal(self) -> StateWrite:
        no = self.next_chunk
        self.next_chunk += 1
        self.chunks[no] = max(self._tail[::2])
        value = b"[" + b",".join(self._tail[1::2]) + b"]"
        self._tail = []
        self._tail_min_ts = math.inf
        self._chunks_changed()
        return StateWrite(no, value)

    # --------------------------------------------------------------- features
    def _features_at(self, p: int, computed_at_s: float) -> dict[str, Any]:
        """The record of the retained transaction at position ``p``, evaluated at its timestamp."""
        record = self._window_fields(self._ts[p], p)
        record.update(self._x_fields(p))
        record["computed_at"] = computed_at_s
        return record

    def lookup(self, at_s: float | None, computed_at_s: float) -> dict[str, Any]:
        """SPEC 7 lookup at ``T = at_s`` (default: the latest timestamp).

        The caller checks ``at_s >= M - L`` first (older windows are not exact).
        """
        assert self.latest_ts_s is not None
        t = self.latest_ts_s if at_s is None else at_s
        hi = bisect_right(self._ts, t, self._start)
        x = hi - 1 if hi > self._start else None
        record = self._window_fields(t, x)
        if x is None:
            record.update(
                transaction_id=None,
                event_time=None,
                current_amount=None,
                is_online=None,
                merchant_category=None,
                seconds_since_last_tx=None,
            )
        else:
            record.update(self._x_fields(x))
        record["as_of"] = t
        record["computed_at"] = computed_at_s
        return record

    def _x_fields(self, p: int) -> dict[str, Any]:
        s = _STRIDE * p
        return {
            "transaction_id": self._strs[s + _ID],
            "event_time": self._ts[p],
            "current_amount": self._amounts[p],
            "is_online": bool(self._online[p]),
            "merchant_category": self._strs[s + _CATEGORY],
            "seconds_since_last_tx": self._seconds_since_previous(p),
        }

    def _seconds_since_previous(self, p: int) -> float | None:
        # Entries with ts <= x.ts are [start, hi); x (at p) is one of them. If any
        # other has x's timestamp the answer is 0, else it is the one just before.
        ts = self._ts
        t = ts[p]
        hi = bisect_right(ts, t, self._start)
        if hi - self._start >= 2:
            return t - ts[hi - 2] if p == hi - 1 else 0.0
        if self.evicted_ts_s is not None:
            return t - self.evicted_ts_s
        return None

    def _window_fields(self, t: float, x: int | None) -> dict[str, Any]:
        """The window fields at ``T = t``; ``x``: the position of the record's transaction, if any."""
        ts = self._ts
        start = self._start
        hi = bisect_right(ts, t, start)
        lo_1h = bisect_right(ts, t - WINDOW_1H_S, start, hi)
        lo_24h = bisect_right(ts, t - WINDOW_24H_S, start, hi)
        n_1h = hi - lo_1h
        n_24h = hi - lo_24h
        z_wanted = x is not None and n_24h >= 2
        if self._big:
            sums, exp = self._sums, self._exp
            s1_24h = sums[hi] - sums[lo_24h]
            # int / int is correctly rounded, like math.fsum.
            scale = 1 << exp
            total_1h = (sums[hi] - sums[lo_1h]) / scale
            total_24h = s1_24h / scale
            s2_24h = self._sq_sums[hi] - self._sq_sums[lo_24h]
        else:
            # Small windows: exact sums of the slices (fsum is correctly rounded too).
            amounts = self._amounts
            total_1h = math.fsum(amounts[lo_1h:hi])
            total_24h = math.fsum(amounts[lo_24h:hi])
            if z_wanted:
                exp, s1_24h, s2_24h = _exact_sums(amounts[lo_24h:hi])
        if not n_24h:
            max_24h = 0.0
        elif self._big and hi == len(ts):  # the window ends at or after M: its first maximum
            max_24h = self._max_amounts[bisect_right(self._max_ts, t - WINDOW_24H_S)]
        else:
            max_24h = max(self._amounts[lo_24h:hi])
        if self._big and t == self.latest_ts_s:
            unique_1h = len(self._merchants_1h)
            unique_24h = len(self._merchants_24h)
        else:
            unique_1h = len(set(self._merchant_slice(lo_1h, hi)))
            unique_24h = len(set(self._merchant_slice(lo_24h, hi)))
        if z_wanted:
            assert x is not None
            z = _exact_zscore(self._amounts[x], exp, n_24h, s1_24h, s2_24h)
        else:
            z = None
        return {
            "user_id": self.user_id,
            "tx_count_1h": n_1h,
            "tx_count_24h": n_24h,
            "total_amount_1h": total_1h,
            "total_amount_24h": total_24h,
            "avg_amount_1h": total_1h / n_1h if n_1h else 0.0,
            "avg_amount_24h": total_24h / n_24h if n_24h else 0.0,
            "max_amount_24h": max_24h,
            "unique_merchants_1h": unique_1h,
            "unique_merchants_24h": unique_24h,
            "amount_zscore_24h": z,
        }

    # ------------------------------------------------------------ persistence
    def encode_head(self) -> bytes:
        return orjson.dumps(
            {
                "v": STATE_FORMAT_VERSION,
                "latest_ts_s": self.latest_ts_s,
                "evicted_ts_s": self.evicted_ts_s,
                "next_seq": self.next_seq,
                "next_chunk": self.next_chunk,
                "chunks": self._chunk_frag,
                "tail": orjson.Fragment(b"[" + b",".join(self._tail[1::2]) + b"]"),
            }
        )

    @classmethod
    def decode(
        cls,
        user_id: str,
        head: bytes,
        chunks: dict[int, bytes | None],
        lateness_s: float,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> UserWindow:
        """Rebuild from the head and the chunk values it lists (see :meth:`chunk_numbers`)."""
        try:
            h = orjson.loads(head)
            if h.get("v") != STATE_FORMAT_VERSION:
                raise StateCorruptError(f"unknown state format {h.get('v')!r}")
            w = cls(user_id, lateness_s, chunk_rows)
            w.latest_ts_s = h["latest_ts_s"]
            w.evicted_ts_s = h["evicted_ts_s"]
            w.next_seq = int(h["next_seq"])
            w.next_chunk = int(h["next_chunk"])
            w.chunks = {int(no): float(max_ts) for no, max_ts in h["chunks"]}
            # Rows as stored: [id, ts, amount, merchant, category, online, seq].
            rows = [_normal_row(r) for r in h["tail"]]
            w._tail = [v for r in rows for v in (r[1], orjson.dumps(r))]
            w._tail_min_ts = min(w._tail[::2], default=math.inf)
            for no in w.chunks:
                blob = chunks.get(no)
                if blob is None:
                    raise StateCorruptError(f"chunk {no} of user {user_id!r} is missing")
                rows.extend(_normal_row(r) for r in orjson.loads(blob))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, StateCorruptError):
                raise
            raise StateCorruptError(f"state of user {user_id!r} cannot be decoded: {exc}") from exc
        if w.latest_ts_s is not None:
            floor = w.retention_floor_s()
            rows = [r for r in rows if r[1] > floor]
        rows.sort(key=_BY_TS_SEQ)
        w._ts = array("d", [r[1] for r in rows])
        w._amounts = array("d", [r[2] for r in rows])
        w._strs = [s for r in rows for s in (r[0], r[3], r[4])]
        w._online = bytearray([r[5] for r in rows])
        w._by_id = {r[0]: r[1] for r in rows}  # later seq wins
        w._chunks_changed()
        if len(rows) >= _BIG_FROM:
            w._set_big(True)
        return w

    @staticmethod
    def chunk_numbers(head: bytes) -> list[int]:
        """The chunk numbers a stored head refers to (to fetch them before decode)."""
        try:
            return [int(no) for no, _ in orjson.loads(head)["chunks"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StateCorruptError(f"head cannot be decoded: {exc}") from exc


#: What a small window has instead of the big-window structures: shared, never changed (the
#: big structures are built anew in _set_big before anything changes them).
_EMPTY = array("d")
_NO_SUMS: list[int] = []
_BY_TS_SEQ = itemgetter(1, 6)


def _normal_row(row: list[Any]) -> list[Any]:
    """A stored row with its types checked (``TypeError``/``ValueError`` if it is not one)."""
    txid, ts, amount, merchant, category, online, seq = row
    return [str(txid), float(ts), float(amount), str(merchant), str(category), bool(online), int(seq)]


def _exact_sums(amounts: array[float]) -> tuple[int, int, int]:
    """``(exp, s1, s2)``: the sums of ``amounts`` times ``2**exp``, of their squares times ``2**(2*exp)``."""
    s1 = s2 = 0
    for a in amounts:
        # Exact: a float times a power of two only moves its exponent; an amount
        # >= 2**-11 (any amount in cents) is then an integer, else go the long way.
        v = a * _MIN_SUM_SCALE
        if not v.is_integer():
            return _exact_sums_any(amounts)
        i = int(v)
        s1 += i
        s2 += i * i
    return _MIN_SUM_EXP, s1, s2


def _exact_sums_any(amounts: array[float]) -> tuple[int, int, int]:
    exp, sums, sq_sums = _prefix_sums(amounts)
    return exp, sums[-1], sq_sums[-1]


def _prefix_sums(amounts: array[float]) -> tuple[int, list[int], list[int]]:
    """``(exp, sums, sq_sums)``: exact prefix sums of ``amounts`` times ``2**exp``, squares ``2**(2*exp)``."""
    pairs = [a.as_integer_ratio() for a in amounts]
    exp = max([_MIN_SUM_EXP, *(den.bit_length() - 1 for _, den in pairs)])
    s1 = s2 = 0
    sums, sq_sums = [0], [0]
    for num, den in pairs:
        shift = exp - den.bit_length() + 1
        s1 += num << shift
        s2 += (num * num) << (2 * shift)
        sums.append(s1)
        sq_sums.append(s2)
    return exp, sums, sq_sums


def _difference(minuend: float, *subtrahends: float, round_up: bool) -> float:
    """``minuend - sum(subtrahends)`` in real arithmetic, rounded to a float up or down.

    Float subtraction rounds to nearest, which can put a float timestamp on the
    wrong side of a floor. Each step is checked with the error-free TwoSum; only
    when one is inexact (never for integer second counts and epoch timestamps)
    is the exact value computed with fractions and rounded in the asked direction.
    """
    s = minuend
    for b in subtrahends:
        d = s - b
        # TwoSum(s, -b): err is exactly (s - b) - d.
        s_part = d + b
        b_part = d - s_part
        err = (s - s_part) + (-b - b_part)
        if err != 0.0:
            break
        s = d
    else:
        return s
    exact = Fraction(minuend) - sum(map(Fraction, subtrahends), Fraction(0))
    r = float(exact)  # correctly rounded to nearest
    if round_up and Fraction(r) < exact:
        return math.nextafter(r, math.inf)
    if not round_up and Fraction(r) > exact:
        return math.nextafter(r, -math.inf)
    return r


def _exact_zscore(amount: float, exp: int, n: int, s1: int, s2: int) -> float | None:
    """The z-score of ``amount`` against a window of ``n`` amounts, from exact sums.

    ``s1`` and ``s2`` are the sums of the amounts and of their squares, times
    ``2**exp`` and ``2**(2 * exp)``. With ``A = amount * 2**exp``,
    ``z**2 = (n*A - s1)**2 / (n*s2 - s1**2)`` exactly; the denominator is 0 iff
    all amounts are equal. Only the division and the square root round.
    """
    num, den = amount.as_integer_ratio()
    diff = n * (num << (exp - den.bit_length() + 1)) - s1
    spread = n * s2 - s1 * s1
    if spread <= 0:
        return None
    magnitude = math.sqrt(diff * diff / spread)
    return -magnitude if diff < 0 else magnitude


def zscore(amount: float, window: list[float], total: float) -> float | None:
    """``(amount - mean) / population std`` over ``window``; None if n < 2 or all equal.

    Two-pass with a correction for the rounding of the mean, so that nearly
    equal amounts (where ``a - mean`` is exact by Sterbenz) lose no precision.
    """
    n = len(window)
    if n < 2:
        return None
    largest = max(window)
    if min(window) == largest:
        return None
    if largest < 1.0:
        # Tiny amounts: their squared deviations would underflow (var == 0 for
        # [0, 0, 1e-200]). z is scale-free, so scale by an exact power of two.
        shift = -math.frexp(largest)[1]
        window = [math.ldexp(a, shift) for a in window]
        amount = math.ldexp(amount, shift)
        total = math.fsum(window)
    mean = total / n
    devs = list(map(sub, window, repeat(mean)))
    correction = math.fsum(devs) / n  # the true mean is mean + correction
    var = (math.fsum(map(mul, devs, devs)) - n * correction * correction) / n
    if var <= 0.0:
        return None
    return ((amount - mean) - correction) / math.sqrt(var)
