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

WINDOW_1H_S = 3600.0
WINDOW_24H_S = 86400.0
STATE_FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 128


class StateCorruptError(ValueError):
    """A stored head or chunk could not be decoded."""


@dataclass(frozen=True, slots=True)
class Txn:
    """One accepted transaction, as the window keeps it."""

    transaction_id: str
    event_ts_s: float
    amount: float
    merchant_id: str
    merchant_category: str
    is_online: bool
    seq: int = 0  # acceptance order within the user, set by the window

    def row(self) -> list[Any]:
        return [
            self.transaction_id,
            self.event_ts_s,
            self.amount,
            self.merchant_id,
            self.merchant_category,
            self.is_online,
            self.seq,
        ]

    @classmethod
    def from_row(cls, row: list[Any]) -> Txn:
        txid, ts, amount, merchant, category, online, seq = row
        return cls(str(txid), float(ts), float(amount), str(merchant), str(category), bool(online), int(seq))


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
        "_by_id",
        "_merchants",
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
        self.tail: list[Txn] = []  # accepted since the last seal, acceptance order
        # Parallel arrays sorted by (ts, seq), for bisect and C-speed slices.
        self._ts: list[float] = []
        self._amounts: list[float] = []
        self._merchants: list[str] = []
        self._txns: list[Txn] = []
        self._by_id: dict[str, Txn] = {}

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._txns)

    @property
    def retained(self) -> list[Txn]:
        return list(self._txns)

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
    def apply(self, txn: Txn, computed_at_s: float) -> Outcome:
        """Process one validated transaction (SPEC 4: duplicates, lateness, accept)."""
        known = self._by_id.get(txn.transaction_id)
        floor = self.lateness_floor_s()
        if known is not None:
            assert floor is not None
            if known.event_ts_s >= floor:
                return Outcome("duplicate", self.features_for(known, computed_at_s), ())
            return Outcome(
                "late",
                None,
                (),
                f"timestamp: duplicate of transaction_id {txn.transaction_id!r} at "
                f"{known.event_ts_s!r}, older than the lateness floor {floor!r} (M - ALLOWED_LATENESS_S)",
            )
        if floor is not None and txn.event_ts_s < floor:
            return Outcome(
                "late",
                None,
                (),
                f"timestamp: {txn.event_ts_s!r} is older than the lateness floor {floor!r} "
                f"(latest {self.latest_ts_s!r} - ALLOWED_LATENESS_S {self.lateness_s!r})",
            )
        accepted = _with_seq(txn, self.next_seq)
        self.next_seq += 1
        self._insert(accepted)
        self.tail.append(accepted)
        if self.latest_ts_s is None or accepted.event_ts_s > self.latest_ts_s:
            self.latest_ts_s = accepted.event_ts_s
        writes = self._evict()
        if len(self.tail) >= self.chunk_rows:
            writes.append(self._seal())
        writes.append(StateWrite(None, self.encode_head()))
        return Outcome("accepted", self.features_for(accepted, computed_at_s), tuple(writes))

    def _insert(self, txn: Txn) -> None:
        # bisect_right on ts puts it after equal timestamps: accepted last.
        i = bisect_right(self._ts, txn.event_ts_s)
        self._ts.insert(i, txn.event_ts_s)
        self._amounts.insert(i, txn.amount)
        self._merchants.insert(i, txn.merchant_id)
        self._txns.insert(i, txn)
        self._by_id[txn.transaction_id] = txn

    def _evict(self) -> list[StateWrite]:
        floor = self.retention_floor_s()
        n = bisect_right(self._ts, floor)
        writes: list[StateWrite] = []
        if n:
            gone = self._txns[:n]
            self.evicted_ts_s = max(self.evicted_ts_s or gone[-1].event_ts_s, gone[-1].event_ts_s)
            for t in gone:
                # An id may have been re-used by a later, retained transaction.
                if self._by_id.get(t.transaction_id) is t:
                    del self._by_id[t.transaction_id]
            del self._ts[:n], self._amounts[:n], self._merchants[:n], self._txns[:n]
            self.tail = [t for t in self.tail if t.event_ts_s > floor]
        for no in [no for no, max_ts in self.chunks.items() if max_ts <= floor]:
            del self.chunks[no]
            writes.append(StateWrite(no, None))
        return writes

    def _seal(self) -> StateWrite:
        no = self.next_chunk
        self.next_chunk += 1
        self.chunks[no] = max(t.event_ts_s for t in self.tail)
        value = orjson.dumps([t.row() for t in self.tail])
        self.tail = []
        return StateWrite(no, value)

    # --------------------------------------------------------------- features
    def features_for(self, x: Txn, computed_at_s: float) -> dict[str, Any]:
        """The record of retained transaction ``x``, evaluated at ``T = x.timestamp``."""
        record = self._window_fields(x.event_ts_s, x)
        record.update(self._x_fields(x))
        record["computed_at"] = computed_at_s
        return record

    def lookup(self, at_s: float | None, computed_at_s: float) -> dict[str, Any]:
        """SPEC 7 lookup at ``T = at_s`` (default: the latest timestamp).

        The caller checks ``at_s >= M - L`` first (older windows are not exact).
        """
        assert self.latest_ts_s is not None
        t = self.latest_ts_s if at_s is None else at_s
        hi = bisect_right(self._ts, t)
        x = self._txns[hi - 1] if hi else None
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

    def _x_fields(self, x: Txn) -> dict[str, Any]:
        return {
            "transaction_id": x.transaction_id,
            "event_time": x.event_ts_s,
            "current_amount": x.amount,
            "is_online": x.is_online,
            "merchant_category": x.merchant_category,
            "seconds_since_last_tx": self._seconds_since_previous(x),
        }

    def _seconds_since_previous(self, x: Txn) -> float | None:
        # Entries with ts <= x.ts are [0, hi); x is one of them. If any other
        # has x's timestamp the answer is 0, else it is the one just before.
        hi = bisect_right(self._ts, x.event_ts_s)
        if hi >= 2:
            return x.event_ts_s - self._ts[hi - 2] if self._txns[hi - 1] is x else 0.0
        if self.evicted_ts_s is not None:
            return x.event_ts_s - self.evicted_ts_s
        return None

    def _window_fields(self, t: float, x: Txn | None) -> dict[str, Any]:
        ts = self._ts
        hi = bisect_right(ts, t)
        lo_1h = bisect_right(ts, t - WINDOW_1H_S, 0, hi)
        lo_24h = bisect_right(ts, t - WINDOW_24H_S, 0, hi)
        n_1h = hi - lo_1h
        n_24h = hi - lo_24h
        amounts_1h = self._amounts[lo_1h:hi]
        amounts_24h = self._amounts[lo_24h:hi]
        total_1h = math.fsum(amounts_1h)
        total_24h = math.fsum(amounts_24h)
        return {
            "user_id": self.user_id,
            "tx_count_1h": n_1h,
            "tx_count_24h": n_24h,
            "total_amount_1h": total_1h,
            "total_amount_24h": total_24h,
            "avg_amount_1h": total_1h / n_1h if n_1h else 0.0,
            "avg_amount_24h": total_24h / n_24h if n_24h else 0.0,
            "max_amount_24h": max(amounts_24h) if n_24h else 0.0,
            "unique_merchants_1h": len(set(self._merchants[lo_1h:hi])),
            "unique_merchants_24h": len(set(self._merchants[lo_24h:hi])),
            "amount_zscore_24h": None if x is None else zscore(x.amount, amounts_24h, total_24h),
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
                "chunks": [[no, max_ts] for no, max_ts in self.chunks.items()],
                "tail": [t.row() for t in self.tail],
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
            w.tail = [Txn.from_row(r) for r in h["tail"]]
            rows: list[Txn] = []
            for no in w.chunks:
                blob = chunks.get(no)
                if blob is None:
                    raise StateCorruptError(f"chunk {no} of user {user_id!r} is missing")
                rows.extend(Txn.from_row(r) for r in orjson.loads(blob))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, StateCorruptError):
                raise
            raise StateCorruptError(f"state of user {user_id!r} cannot be decoded: {exc}") from exc
        rows.extend(w.tail)
        if w.latest_ts_s is not None:
            floor = w.retention_floor_s()
            rows = [t for t in rows if t.event_ts_s > floor]
        rows.sort(key=lambda t: (t.event_ts_s, t.seq))
        w._txns = rows
        w._ts = [t.event_ts_s for t in rows]
        w._amounts = [t.amount for t in rows]
        w._merchants = [t.merchant_id for t in rows]
        w._by_id = {t.transaction_id: t for t in rows}  # later seq wins
        return w

    @staticmethod
    def chunk_numbers(head: bytes) -> list[int]:
        """The chunk numbers a stored head refers to (to fetch them before decode)."""
        try:
            return [int(no) for no, _ in orjson.loads(head)["chunks"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StateCorruptError(f"head cannot be decoded: {exc}") from exc


def _with_seq(txn: Txn, seq: int) -> Txn:
    return Txn(
        txn.transaction_id,
        txn.event_ts_s,
        txn.amount,
        txn.merchant_id,
        txn.merchant_category,
        txn.is_online,
        seq,
    )


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
