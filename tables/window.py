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
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from itertools import repeat
from operator import mul, sub
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
    txid, ts, amount, merchant, category, online, seq = row
    txn = Transaction(
        str(txid), user_id, float(amount), str(merchant), str(category), float(ts), bool(online)
    )
    return int(seq), txn


#: Between a user id and a chunk number in a chunk's key (0xFF never occurs in UTF-8).
CHUNK_SEPARATOR = b"\xff"


def head_key(user_id: str) -> bytes:
    """Where a user's head is stored: its id's UTF-8 bytes (the topic key, so routing finds the owner)."""
    return user_id.encode("utf-8")


def chunk_key(user_id: str, chunk_no: int) -> bytes:
    return head_key(user_id) + CHUNK_SEPARATOR + str(chunk_no).encode("ascii")


def is_head_key(key: bytes) -> bool:
    return CHUNK_SEPARATOR not in key


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One table write: the head (``chunk_no is None``) or a chunk; ``value=None`` deletes."""

    chunk_no: int | None
    value: bytes | None


Verdict = Literal["accepted", "duplicate", "late"]


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    features: dict[str, Any] | None  # the record to publish (accepted, duplicate)
    writes: tuple[StateWrite, ...]
    reason: str = ""  # for late events: the human line for the dead letter


class UserWindow:
    """All retained transactions of one user, sorted by (timestamp, acceptance)."""

    __slots__ = (
        "_amounts",
        "_big",
        "_by_id",
        "_chunk_list",
        "_chunks_min_ts",
        "_exp",
        "_max_amounts",
        "_max_ts",
        "_merchants",
        "_merchants_1h",
        "_merchants_24h",
        "_sq_sums",
        "_start",
        "_sums",
        "_tail_min_ts",
        "_tail_rows",
        "_ts",
        "_txns",
        "chunk_rows",
        "chunks",
        "evicted_ts_s",
        "lateness_s",
        "latest_ts_s",
        "next_chunk",
        "next_seq",
        "tail",
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
        self.tail: list[Transaction] = []  # accepted since the last seal, acceptance order
        # Caches: t.row() of each tail entry, the smallest timestamp in the tail,
        # the chunk index as stored and the smallest max timestamp of a chunk.
        self._tail_rows: list[list[Any]] = []
        self._tail_min_ts = math.inf
        self._chunk_list: list[list[Any]] = []
        self._chunks_min_ts = math.inf
        # Parallel arrays sorted by (ts, seq), for bisect and C-speed slices.
        # Entries before _start are evicted; they are dropped in bulk (see _evict).
        self._start = 0
        self._ts: list[float] = []
        self._amounts: list[float] = []
        self._merchants: list[str] = []
        self._txns: list[Transaction] = []
        self._by_id: dict[str, Transaction] = {}
        # Exact prefix sums, one entry longer than _ts: _sums[j] - _sums[i] is the
        # sum of the amounts of entries i..j-1 times 2**_exp, _sq_sums the same
        # for their squares times 2**(2 * _exp). Only differences are meaningful.
        self._exp = _MIN_SUM_EXP
        self._sums: list[int] = [0]
        self._sq_sums: list[int] = [0]
        # Only while the window is big (_big), see _set_big: the right-to-left
        # maxima of the retained amounts (the entries larger than every later
        # one, by position, so strictly decreasing amounts), and merchant ->
        # count over the retained entries with M - W < ts <= M.
        self._big = False
        self._max_ts: list[float] = []
        self._max_amounts: list[float] = []
        self._merchants_1h: dict[str, int] = {}
        self._merchants_24h: dict[str, int] = {}

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._txns) - self._start

    @property
    def retained(self) -> list[Transaction]:
        return self._txns[self._start :]

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

    # ---------------------------------------------------------------- updates
    def apply(self, txn: Transaction, computed_at_s: float, with_head: bool = True) -> Outcome:
        """Process one validated transaction (SPEC 4: duplicates, lateness, accept).

        ``with_head=False`` leaves the head out of the writes: a caller that
        keeps the window in memory stores :meth:`encode_head` when it lets
        the window go (the export), instead of once per transaction.
        """
        known = self._by_id.get(txn.transaction_id)
        floor = self.lateness_floor_s()
        if known is not None:
            assert floor is not None
            if known.timestamp >= floor:
                return Outcome("duplicate", self.features_for(known, computed_at_s), ())
            return Outcome(
                "late",
                None,
                (),
                f"timestamp: duplicate of transaction_id {txn.transaction_id!r} at "
                f"{known.timestamp!r}, older than the lateness floor {floor!r} (M - ALLOWED_LATENESS_S)",
            )
        if floor is not None and txn.timestamp < floor:
            return Outcome(
                "late",
                None,
                (),
                f"timestamp: {txn.timestamp!r} is older than the lateness floor {floor!r} "
                f"(latest {self.latest_ts_s!r} - ALLOWED_LATENESS_S {self.lateness_s!r})",
            )
        accepted = txn
        self._tail_rows.append(_row(accepted, self.next_seq))
        self.next_seq += 1
        previous = self.latest_ts_s
        if previous is None or accepted.timestamp > previous:
            self.latest_ts_s = accepted.timestamp
        self._insert(accepted, previous)
        self.tail.append(accepted)
        self._tail_min_ts = min(self._tail_min_ts, accepted.timestamp)
        writes = self._evict()
        size = len(self._txns) - self._start
        if size >= _BIG_FROM if not self._big else size < _BIG_UNTIL:
            self._set_big(not self._big)
        if len(self.tail) >= self.chunk_rows:
            writes.append(self._seal())
        if with_head:
            writes.append(StateWrite(None, self.encode_head()))
        return Outcome("accepted", self.features_for(accepted, computed_at_s), tuple(writes))

    def _insert(self, txn: Transaction, previous_m: float | None) -> None:
        """Add ``txn`` (``latest_ts_s`` already includes it; it was ``previous_m``)."""
        # bisect_right on ts puts it after equal timestamps: accepted last.
        ts = txn.timestamp
        amount = txn.amount
        i = bisect_right(self._ts, ts, self._start)
        self._ts.insert(i, ts)
        self._amounts.insert(i, amount)
        self._merchants.insert(i, txn.merchant_id)
        self._txns.insert(i, txn)
        self._by_id[txn.transaction_id] = txn

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

        if not self._big:
            return
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
            return
        j = k
        while j and max_amounts[j - 1] <= amount:
            j -= 1
        max_ts[j:k] = [ts]
        max_amounts[j:k] = [amount]

    def _rescale(self, exp: int) -> None:
        shift = exp - self._exp
        self._exp = exp
        self._sums = [v << shift for v in self._sums]
        self._sq_sums = [v << (2 * shift) for v in self._sq_sums]

    def _slide_merchants(self, old_m: float, new_m: float) -> None:
        """M moved from ``old_m`` to ``new_m``: uncount what left the windows ending at M."""
        ts, merchants, start = self._ts, self._merchants, self._start
        for width, counts in ((WINDOW_1H_S, self._merchants_1h), (WINDOW_24H_S, self._merchants_24h)):
            lo = bisect_right(ts, old_m - width, start)
            hi = bisect_right(ts, new_m - width, lo)
            for merchant in merchants[lo:hi]:
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
        self._max_ts, self._max_amounts = [], []
        self._merchants_1h, self._merchants_24h = {}, {}
        if not big:
            return
        start = self._start
        max_ts, max_amounts = self._max_ts, self._max_amounts
        for i in range(len(self._ts) - 1, start - 1, -1):
            a = self._amounts[i]
            if not max_amounts or a > max_amounts[-1]:
                max_ts.append(self._ts[i])
                max_amounts.append(a)
        max_ts.reverse()
        max_amounts.reverse()
        m = self.latest_ts_s
        assert m is not None
        for width, counts in ((WINDOW_1H_S, self._merchants_1h), (WINDOW_24H_S, self._merchants_24h)):
            for merchant in self._merchants[bisect_right(self._ts, m - width, start) :]:
                counts[merchant] = counts.get(merchant, 0) + 1

    def _build_sums(self) -> None:
        """Recompute the prefix sums from the amounts (after decode)."""
        pairs = [a.as_integer_ratio() for a in self._amounts]
        exp = max([_MIN_SUM_EXP, *(den.bit_length() - 1 for _, den in pairs)])
        s1 = s2 = 0
        sums, sq_sums = [0], [0]
        for num, den in pairs:
            shift = exp - den.bit_length() + 1
            s1 += num << shift
            s2 += (num * num) << (2 * shift)
            sums.append(s1)
            sq_sums.append(s2)
        self._exp, self._sums, self._sq_sums = exp, sums, sq_sums

    def _evict(self) -> list[StateWrite]:
        floor = self.retention_floor_s()
        start = self._start
        end = bisect_right(self._ts, floor, start)
        writes: list[StateWrite] = []
        if end == start:
            return writes
        gone = self._txns[start:end]
        self.evicted_ts_s = max(self.evicted_ts_s or gone[-1].timestamp, gone[-1].timestamp)
        for t in gone:
            # An id may have been re-used by a later, retained transaction.
            if self._by_id.get(t.transaction_id) is t:
                del self._by_id[t.transaction_id]
        # Deleting from the front of the arrays moves all of them: do it only
        # once the evicted entries are as many as the retained ones.
        self._start = end
        if 2 * end >= len(self._ts):
            del self._ts[:end], self._amounts[:end], self._merchants[:end], self._txns[:end]
            del self._sums[:end], self._sq_sums[:end]
            self._start = 0
        if self._big:
            k = bisect_right(self._max_ts, floor)
            del self._max_ts[:k], self._max_amounts[:k]
        if self._tail_min_ts <= floor:
            kept = [(t, r) for t, r in zip(self.tail, self._tail_rows, strict=True) if t.timestamp > floor]
            self.tail = [t for t, _ in kept]
            self._tail_rows = [r for _, r in kept]
            self._tail_min_ts = min([t.timestamp for t in self.tail], default=math.inf)
        # A chunk's latest transaction is evicted in the call that makes the chunk
        # evictable, so with nothing evicted (the early return) no chunk is.
        if self._chunks_min_ts <= floor:
            for no in [no for no, max_ts in self.chunks.items() if max_ts <= floor]:
                del self.chunks[no]
                writes.append(StateWrite(no, None))
            self._chunks_changed()
        return writes

    def _chunks_changed(self) -> None:
        self._chunk_list = [[no, max_ts] for no, max_ts in self.chunks.items()]
        self._chunks_min_ts = min(self.chunks.values(), default=math.inf)

    def _seal(self) -> StateWrite:
        no = self.next_chunk
        self.next_chunk += 1
        self.chunks[no] = max(t.timestamp for t in self.tail)
        value = orjson.dumps(self._tail_rows)
        self.tail = []
        self._tail_rows = []
        self._tail_min_ts = math.inf
        self._chunks_changed()
        return StateWrite(no, value)

    # --------------------------------------------------------------- features
    def features_for(self, x: Transaction, computed_at_s: float) -> dict[str, Any]:
        """The record of retained transaction ``x``, evaluated at ``T = x.timestamp``."""
        record = self._window_fields(x.timestamp, x)
        record.update(self._x_fields(x))
        record["computed_at"] = computed_at_s
        return record

    def lookup(self, at_s: float | None, computed_at_s: float) -> dict[str, Any]:
        """SPEC 7 lookup at ``T = at_s`` (default: the latest timestamp).

        The caller checks ``at_s >= M - L`` first (older windows are not exact).
        """
        assert self.latest_ts_s is not None
        t = self.latest_ts_s if at_s is None else at_s
        hi = bisect_right(self._ts, t, self._start)
        x = self._txns[hi - 1] if hi > self._start else None
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

    def _x_fields(self, x: Transaction) -> dict[str, Any]:
        return {
            "transaction_id": x.transaction_id,
            "event_time": x.timestamp,
            "current_amount": x.amount,
            "is_online": x.is_online,
            "merchant_category": x.merchant_category,
            "seconds_since_last_tx": self._seconds_since_previous(x),
        }

    def _seconds_since_previous(self, x: Transaction) -> float | None:
        # Entries with ts <= x.ts are [start, hi); x is one of them. If any other
        # has x's timestamp the answer is 0, else it is the one just before.
        hi = bisect_right(self._ts, x.timestamp, self._start)
        if hi - self._start >= 2:
            return x.timestamp - self._ts[hi - 2] if self._txns[hi - 1] is x else 0.0
        if self.evicted_ts_s is not None:
            return x.timestamp - self.evicted_ts_s
        return None

    def _window_fields(self, t: float, x: Transaction | None) -> dict[str, Any]:
        ts = self._ts
        start = self._start
        hi = bisect_right(ts, t, start)
        lo_1h = bisect_right(ts, t - WINDOW_1H_S, start, hi)
        lo_24h = bisect_right(ts, t - WINDOW_24H_S, start, hi)
        n_1h = hi - lo_1h
        n_24h = hi - lo_24h
        sums, exp = self._sums, self._exp
        s1_24h = sums[hi] - sums[lo_24h]
        # int / int is correctly rounded, like math.fsum.
        scale = 1 << exp
        total_1h = (sums[hi] - sums[lo_1h]) / scale
        total_24h = s1_24h / scale
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
            unique_1h = len(set(self._merchants[lo_1h:hi]))
            unique_24h = len(set(self._merchants[lo_24h:hi]))
        if x is None or n_24h < 2:
            z = None
        else:
            z = _exact_zscore(x.amount, exp, n_24h, s1_24h, self._sq_sums[hi] - self._sq_sums[lo_24h])
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
                "chunks": self._chunk_list,
                "tail": self._tail_rows,
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
            decoded = [_from_row(user_id, r) for r in h["tail"]]
            w.tail = [t for _, t in decoded]
            tail_rows = [_row(t, seq) for seq, t in decoded]
            for no in w.chunks:
                blob = chunks.get(no)
                if blob is None:
                    raise StateCorruptError(f"chunk {no} of user {user_id!r} is missing")
                decoded.extend(_from_row(user_id, r) for r in orjson.loads(blob))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, StateCorruptError):
                raise
            raise StateCorruptError(f"state of user {user_id!r} cannot be decoded: {exc}") from exc
        if w.latest_ts_s is not None:
            floor = w.retention_floor_s()
            decoded = [(seq, t) for seq, t in decoded if t.timestamp > floor]
        decoded.sort(key=lambda st: (st[1].timestamp, st[0]))
        rows = [t for _, t in decoded]
        w._txns = rows
        w._ts = [t.timestamp for t in rows]
        w._amounts = [t.amount for t in rows]
        w._merchants = [t.merchant_id for t in rows]
        w._by_id = {t.transaction_id: t for t in rows}  # later seq wins
        w._tail_rows = tail_rows
        w._tail_min_ts = min([t.timestamp for t in w.tail], default=math.inf)
        w._chunks_changed()
        w._build_sums()
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
