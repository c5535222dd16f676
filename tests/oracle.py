"""Brute-force oracle of SPEC section 4 (feature semantics) and the lookup part of section 7.

Written from the SPEC text alone, deliberately slow and obvious: every accepted
transaction of a user is kept forever in arrival order (that list *is* S), and
every answer is recomputed from scratch with exact rational arithmetic
(``fractions.Fraction``), converted to float only at the end. Eviction is not
modelled as a data structure; "retained" is a predicate on the current M.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

HOUR_S = 3600
DAY_S = 86400

RECORD_FIELDS = (
    "user_id",
    "transaction_id",
    "event_time",
    "tx_count_1h",
    "tx_count_24h",
    "total_amount_1h",
    "total_amount_24h",
    "avg_amount_1h",
    "avg_amount_24h",
    "max_amount_24h",
    "unique_merchants_1h",
    "unique_merchants_24h",
    "seconds_since_last_tx",
    "amount_zscore_24h",
    "current_amount",
    "is_online",
    "merchant_category",
)

_INT_FIELDS = frozenset({"tx_count_1h", "tx_count_24h", "unique_merchants_1h", "unique_merchants_24h"})
_EXACT_FIELDS = frozenset(
    {"user_id", "transaction_id", "event_time", "as_of", "current_amount", "is_online", "merchant_category"}
)
_FLOAT_FIELDS = frozenset(
    {
        "total_amount_1h",
        "total_amount_24h",
        "avg_amount_1h",
        "avg_amount_24h",
        "max_amount_24h",
        "seconds_since_last_tx",
        "amount_zscore_24h",
    }
)
_IGNORED_FIELDS = frozenset({"computed_at"})


@dataclass(frozen=True)
class _Accepted:
    seq: int  # position in S: larger means accepted later
    transaction_id: str
    amount: float
    merchant_id: str
    merchant_category: str
    timestamp: float
    is_online: bool
    ts_q: Fraction  # the timestamp and amount as exact rationals
    amount_q: Fraction


class _User:
    def __init__(self) -> None:
        self.s: list[_Accepted] = []  # every accepted transaction, evicted ones included

    def latest_ts(self) -> float | None:
        """M: the user's latest accepted timestamp."""
        if not self.s:
            return None
        return max((t.timestamp for t in self.s), key=Fraction)


def _window(s: list[_Accepted], at_s: float, window_s: int) -> list[_Accepted]:
    """Transactions of S with T - W < timestamp <= T, compared exactly."""
    t = Fraction(at_s)
    return [x for x in s if t - window_s < x.ts_q <= t]


def _exact_sum(window: list[_Accepted]) -> Fraction:
    return sum((x.amount_q for x in window), Fraction(0))


def _zscore(amount: float, window: list[_Accepted]) -> float | None:
    amounts = [x.amount_q for x in window]
    n = len(amounts)
    if n < 2 or all(a == amounts[0] for a in amounts):
        return None
    mean = sum(amounts, Fraction(0)) / n
    variance = sum(((a - mean) ** 2 for a in amounts), Fraction(0)) / n
    diff = Fraction(amount) - mean
    # z^2 is exact and bounded (|z| <= sqrt(n - 1)), so only the final sqrt rounds.
    z_squared = diff * diff / variance
    magnitude = math.sqrt(float(z_squared))
    return -magnitude if diff < 0 else magnitude


def _window_fields(s: list[_Accepted], at_s: float, zscore_amount: float | None) -> dict[str, Any]:
    w1 = _window(s, at_s, HOUR_S)
    w24 = _window(s, at_s, DAY_S)
    total_1h = _exact_sum(w1)
    total_24h = _exact_sum(w24)
    return {
        "tx_count_1h": len(w1),
        "tx_count_24h": len(w24),
        "total_amount_1h": float(total_1h),
        "total_amount_24h": float(total_24h),
        "avg_amount_1h": float(total_1h / len(w1)) if w1 else 0.0,
        "avg_amount_24h": float(total_24h / len(w24)) if w24 else 0.0,
        "max_amount_24h": max(x.amount for x in w24) if w24 else 0.0,
        "unique_merchants_1h": len({x.merchant_id for x in w1}),
        "unique_merchants_24h": len({x.merchant_id for x in w24}),
        "amount_zscore_24h": None if zscore_amount is None else _zscore(zscore_amount, w24),
    }


def _seconds_since_last(s: list[_Accepted], x: _Accepted) -> float | None:
    earlier = [o.ts_q for o in s if o.seq != x.seq and o.ts_q <= x.ts_q]
    if not earlier:
        return None
    return float(x.ts_q - max(earlier))


def _x_fields(s: list[_Accepted], x: _Accepted) -> dict[str, Any]:
    return {
        "transaction_id": x.transaction_id,
        "event_time": x.timestamp,
        "current_amount": x.amount,
        "is_online": x.is_online,
        "merchant_category": x.merchant_category,
        "seconds_since_last_tx": _seconds_since_last(s, x),
    }


def _record(user_id: str, s: list[_Accepted], x: _Accepted) -> dict[str, Any]:
    """The feature record of x, evaluated at T = x.timestamp over the current S."""
    fields: dict[str, Any] = {"user_id": user_id}
    fields.update(_x_fields(s, x))
    fields.update(_window_fields(s, x.timestamp, x.amount))
    return {name: fields[name] for name in RECORD_FIELDS}


class Oracle:
    """``ttl_s`` > 0 models SPEC 4 "Expiry": ``partition_of(user_id)`` names the user's partition,
    and transactions must be given to :meth:`process` in the order their partition processes them."""

    def __init__(
        self,
        lateness_s: float = 3600.0,
        ttl_s: float = 0.0,
        partition_of: Callable[[str], int] | None = None,
    ) -> None:
        self.lateness_s = lateness_s
        self.ttl_s = ttl_s
        self.partition_of = partition_of
        self._users: dict[str, _User] = {}
        self._seq = 0
        self._stream_time: dict[int, Fraction] = {}  # partition -> largest accepted timestamp
        self.expired: list[str] = []  # users forgotten, in order (one entry per forgetting)

    def _is_expired(self, user_id: str, user: _User) -> bool:
        """SPEC 4, Expiry: M < stream time of the user's partition - USER_TTL_S."""
        m = user.latest_ts()
        if not self.ttl_s or m is None:
            return False
        assert self.partition_of is not None, "expiry needs partition_of"
        stream_time = self._stream_time.get(self.partition_of(user_id))
        return stream_time is not None and Fraction(m) < stream_time - Fraction(self.ttl_s)

    def _retained(self, user: _User) -> list[_Accepted]:
        m = user.latest_ts()
        if m is None:
            return []
        floor = Fraction(m) - DAY_S - Fraction(self.lateness_s)
        return [x for x in user.s if x.ts_q > floor]

    def _is_late(self, ts: float, m: float | None) -> bool:
        return m is not None and Fraction(ts) < Fraction(m) - Fraction(self.lateness_s)

    def process(
        self, txn: dict[str, Any]
    ) -> tuple[Literal["accepted", "duplicate", "late"], dict[str, Any] | None]:
        """txn has keys transaction_id, user_id, amount, merchant_id, merchant_category, timestamp,
        is_online (already validated, defaults applied).
        Returns ("accepted", record) | ("duplicate", record) | ("late", None).
        record has every SPEC 4 field except computed_at."""
        user_id = txn["user_id"]
        user = self._users.setdefault(user_id, _User())
        if self._is_expired(user_id, user):
            self.expired.append(user_id)
            user = self._users[user_id] = _User()
        m = user.latest_ts()

        # Duplicates first (after validation, before lateness), against retained transactions only.
        same_id = [x for x in self._retained(user) if x.transaction_id == txn["transaction_id"]]
        assert len(same_id) <= 1, "oracle invariant: at most one retained transaction per id"
        if same_id:
            x = same_id[0]
            if self._is_late(x.timestamp, m):
                return "late", None
            return "duplicate", _record(user_id, user.s, x)

        if self._is_late(txn["timestamp"], m):
            return "late", None

        self._seq += 1
        x = _Accepted(
            seq=self._seq,
            transaction_id=txn["transaction_id"],
            amount=txn["amount"],
            merchant_id=txn["merchant_id"],
            merchant_category=txn["merchant_category"],
            timestamp=txn["timestamp"],
            is_online=txn["is_online"],
            ts_q=Fraction(txn["timestamp"]),
            amount_q=Fraction(txn["amount"]),
        )
        user.s.append(x)
        if self.ttl_s:
            assert self.partition_of is not None
            partition = self.partition_of(user_id)
            self._stream_time[partition] = max(self._stream_time.get(partition, x.ts_q), x.ts_q)
        return "accepted", _record(user_id, user.s, x)

    def lookup(self, user_id: str, at: float | None = None) -> tuple[int, dict[str, Any] | None]:
        """(200, body-without-computed_at) | (404, None) | (400, None) per SPEC 7
        (the malformed-at case is not the oracle's business)."""
        user = self._users.get(user_id)
        retained = self._retained(user) if user is not None else []
        if user is None or not retained or self._is_expired(user_id, user):
            return 404, None
        m = user.latest_ts()
        assert m is not None
        if at is not None and self._is_late(at, m):
            return 400, None
        t = m if at is None else at

        candidates = [x for x in retained if x.ts_q <= Fraction(t)]
        body: dict[str, Any] = {"user_id": user_id}
        if candidates:
            # latest timestamp; among equal timestamps, the one accepted last
            x = max(candidates, key=lambda c: (c.ts_q, c.seq))
            body.update(_x_fields(user.s, x))
            body.update(_window_fields(user.s, t, x.amount))
        else:
            body.update(
                {
                    "transaction_id": None,
                    "event_time": None,
                    "current_amount": None,
                    "is_online": None,
                    "merchant_category": None,
                    "seconds_since_last_tx": None,
                }
            )
            body.update(_window_fields(user.s, t, None))
        ordered = {name: body[name] for name in RECORD_FIELDS}
        ordered["as_of"] = t
        return 200, ordered


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def assert_record_matches(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Compare per SPEC 4: ints/copied values exact, computed floats to rel 1e-9 or abs 1e-6
    (whichever looser), None must be None; ignore computed_at; fail with a message naming the field.

    Both sides must carry the same fields (apart from computed_at)."""
    actual_keys = set(actual) - _IGNORED_FIELDS
    expected_keys = set(expected) - _IGNORED_FIELDS
    missing = sorted(expected_keys - actual_keys)
    if missing:
        first = missing[0]
        raise AssertionError(f"field {first!r} missing (expected {expected[first]!r}); missing: {missing}")
    extra = sorted(actual_keys - expected_keys)
    if extra:
        raise AssertionError(f"unexpected field {extra[0]!r} = {actual[extra[0]]!r}; all unexpected: {extra}")

    for name in sorted(expected_keys):
        got, want = actual[name], expected[name]
        where = f"field {name!r}: got {got!r}, expected {want!r}"
        if want is None or got is None:
            if not (want is None and got is None):
                raise AssertionError(where)
            continue
        if name in _INT_FIELDS:
            if not (isinstance(got, int) and not isinstance(got, bool) and got == want):
                raise AssertionError(where)
        elif name == "is_online":
            if not (isinstance(got, bool) and got is want):
                raise AssertionError(where)
        elif name in _EXACT_FIELDS:
            if isinstance(want, str):
                if not (isinstance(got, str) and got == want):
                    raise AssertionError(where)
            elif not (_is_number(got) and got == want):
                raise AssertionError(where)
        elif name in _FLOAT_FIELDS:
            if not (_is_number(got) and math.isfinite(got)):
                raise AssertionError(where)
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6):
                raise AssertionError(where)
        elif got != want:
            raise AssertionError(where)
