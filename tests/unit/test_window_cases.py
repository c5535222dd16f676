"""Hand-computed edge cases of SPEC sections 4 and 7, checked against UserWindow and the oracle.

Every expected value below was worked out by hand from the SPEC text; the
comment beside a case shows the arithmetic. T0 is an integer epoch second, so
all the timestamps here are exact floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from records.transaction import Transaction
from tables.window import UserWindow, zscore
from tests.oracle import Oracle, assert_record_matches

T0 = 1_700_000_000.0
H = 3600.0
D = 86_400.0
USER = "alice"
NOW_S = 1_800_000_000.0
U = 2.0**-52  # one ulp of 1.0


def tx(txid: str, ts: float, amount: float, merchant: str, category: str, online: bool) -> Transaction:
    """A validated transaction of USER, fields in the order the cases list them."""
    return Transaction(txid, USER, amount, merchant, category, ts, online)


ULP_1E11 = 2.0**-16  # one ulp of 1e11 (2**36 <= 1e11 < 2**37)


@dataclass(frozen=True)
class T:
    """One input transaction: id, timestamp, amount, merchant (the rest is fixed)."""

    txid: str
    ts: float
    amount: float = 10.0
    merchant: str = "m1"
    category: str = "grocery"
    online: bool = False


@dataclass(frozen=True)
class Case:
    stream: list[T]
    verdicts: str  # one letter per transaction: a(ccepted) d(uplicate) l(ate)
    last: dict[str, Any]  # expected fields of the last record (empty when the last is late)
    lateness_s: float = H
    extra: dict[str, Any] = field(default_factory=dict)


def feed(case: Case) -> tuple[UserWindow, Oracle, list[tuple[str, dict[str, Any] | None]]]:
    """Run the stream through both; return the window's and the oracle's verdicts and records."""
    window = UserWindow(USER, case.lateness_s, chunk_rows=2)
    oracle = Oracle(case.lateness_s)
    results: list[tuple[str, dict[str, Any] | None]] = []
    for t in case.stream:
        outcome = window.apply(tx(t.txid, t.ts, t.amount, t.merchant, t.category, t.online), NOW_S)
        verdict, record = oracle.process(
            {
                "transaction_id": t.txid,
                "user_id": USER,
                "amount": t.amount,
                "merchant_id": t.merchant,
                "merchant_category": t.category,
                "timestamp": t.ts,
                "is_online": t.online,
            }
        )
        assert outcome.verdict == verdict, f"{t}: window {outcome.verdict}, oracle {verdict}"
        if record is None:
            assert outcome.features is None
        else:
            assert outcome.features is not None
            assert_record_matches(outcome.features, record)
        results.append((outcome.verdict, outcome.features))
    return window, oracle, results


def check_fields(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        assert name in actual, f"field {name!r} missing"
        assert_record_matches({name: actual[name]}, {name: value})


LETTER = {"a": "accepted", "d": "duplicate", "l": "late"}

CASES: dict[str, Case] = {
    # b at T0+1h: a at exactly T - 1h is out of the 1 h window, in the 24 h one.
    # z(20) over {10, 20}: mean 15, population std 5 -> 1.0.
    "1h edge excluded": Case(
        [T("a", T0, 10.0, "m1"), T("b", T0 + H, 20.0, "m2")],
        "aa",
        dict(
            tx_count_1h=1,
            total_amount_1h=20.0,
            avg_amount_1h=20.0,
            unique_merchants_1h=1,
            tx_count_24h=2,
            total_amount_24h=30.0,
            avg_amount_24h=15.0,
            max_amount_24h=20.0,
            unique_merchants_24h=2,
            seconds_since_last_tx=3600.0,
            amount_zscore_24h=1.0,
        ),
    ),
    "1h edge just inside": Case(
        [T("a", T0 + 0.25, 10.0, "m1"), T("b", T0 + H, 20.0, "m2")],
        "aa",
        dict(
            tx_count_1h=2,
            total_amount_1h=30.0,
            avg_amount_1h=15.0,
            unique_merchants_1h=2,
            seconds_since_last_tx=3599.75,
            amount_zscore_24h=1.0,
        ),
    ),
    # b at T0+24h: a at exactly T - 24h is out (still retained: M - 24h - L = T0 - 1h).
    "24h edge excluded": Case(
        [T("a", T0, 10.0), T("b", T0 + D, 30.0)],
        "aa",
        dict(
            tx_count_1h=1,
            tx_count_24h=1,
            total_amount_24h=30.0,
            avg_amount_24h=30.0,
            max_amount_24h=30.0,
            unique_merchants_24h=1,
            seconds_since_last_tx=86_400.0,
            amount_zscore_24h=None,
        ),
    ),
    # {10, 30}: mean 20, std 10, z(30) = 1.0.
    "24h edge just inside": Case(
        [T("a", T0 + 0.25, 10.0), T("b", T0 + D, 30.0)],
        "aa",
        dict(
            tx_count_1h=1,
            tx_count_24h=2,
            total_amount_1h=30.0,
            total_amount_24h=40.0,
            avg_amount_24h=20.0,
            max_amount_24h=30.0,
            seconds_since_last_tx=86_399.75,
            amount_zscore_24h=1.0,
        ),
    ),
    # Same timestamp, same amount, same merchant: counted twice, gap 0, z null (all equal).
    "tie at T is included": Case(
        [T("a", T0, 10.0), T("b", T0, 10.0)],
        "aa",
        dict(
            transaction_id="b",
            event_time=T0,
            tx_count_1h=2,
            tx_count_24h=2,
            total_amount_24h=20.0,
            unique_merchants_1h=1,
            seconds_since_last_tx=0.0,
            amount_zscore_24h=None,
        ),
    ),
    # Replay of a after b (same ts): a's record recomputed with b in S.
    # {10, 20}: z(10) = (10 - 15) / 5 = -1.0; b has a's timestamp, so the gap is 0.
    "duplicate republishes with ties": Case(
        [T("a", T0, 10.0), T("b", T0, 20.0), T("a", T0 + 5.0, 99.0, "m9")],
        "aad",
        dict(
            transaction_id="a",
            event_time=T0,
            current_amount=10.0,
            tx_count_1h=2,
            total_amount_1h=30.0,
            max_amount_24h=20.0,
            seconds_since_last_tx=0.0,
            amount_zscore_24h=-1.0,
            merchant_category="grocery",
        ),
    ),
    # b arrives out of order (ts 40 < a's 100), then a is replayed: {10, 30} in a's window,
    # avg 20, std 10, z(10) = -1.0, and b is now the previous transaction: 100 - 40 = 60.
    "duplicate after out-of-order arrival": Case(
        [T("a", T0 + 100.0, 10.0), T("b", T0 + 40.0, 30.0), T("a", T0 + 100.0, 10.0)],
        "aad",
        dict(
            transaction_id="a",
            event_time=T0 + 100.0,
            tx_count_1h=2,
            total_amount_1h=40.0,
            avg_amount_1h=20.0,
            max_amount_24h=30.0,
            seconds_since_last_tx=60.0,
            amount_zscore_24h=-1.0,
        ),
    ),
    # Out of order first: S = {a at 100, b at 40}; nothing in S is <= 40 but b.
    "out of order: nothing earlier": Case(
        [T("a", T0 + 100.0, 10.0), T("b", T0 + 40.0, 30.0)],
        "aa",
        dict(
            transaction_id="b",
            tx_count_1h=1,
            total_amount_1h=30.0,
            seconds_since_last_tx=None,
            amount_zscore_24h=None,
        ),
    ),
    # M - L = T0 exactly: accepted (only >= is needed), and exact.
    "exactly M - L is accepted": Case(
        [T("a", T0 + H, 10.0), T("b", T0, 20.0)],
        "aa",
        dict(
            transaction_id="b",
            tx_count_1h=1,
            tx_count_24h=1,
            total_amount_24h=20.0,
            seconds_since_last_tx=None,
        ),
    ),
    "just before M - L is late": Case(
        [T("a", T0 + H, 10.0), T("b", T0 - 0.25, 20.0)],
        "al",
        {},
    ),
    # M = T0 + 1h + 0.5, so M - L = T0 + 0.5 > a's T0: a is still retained, a replay is LateEvent.
    "duplicate of an old transaction is late": Case(
        [T("a", T0, 10.0), T("b", T0 + H + 0.5, 20.0), T("a", T0, 10.0)],
        "aal",
        {},
    ),
    # ...while a replay of a transaction exactly at M - L is still republished.
    "duplicate exactly at M - L is republished": Case(
        [T("a", T0, 10.0), T("b", T0 + H, 20.0), T("a", T0, 10.0)],
        "aad",
        dict(
            transaction_id="a",
            tx_count_1h=1,
            tx_count_24h=1,
            seconds_since_last_tx=None,
            amount_zscore_24h=None,
        ),
    ),
    # M = T0 + 90001: M - 24h - L = T0 + 1 > a's T0, a is evicted; its timestamp still counts.
    "seconds since last after eviction": Case(
        [T("a", T0, 10.0), T("b", T0 + 90_001.0, 20.0)],
        "aa",
        dict(tx_count_24h=1, seconds_since_last_tx=90_001.0, amount_zscore_24h=None),
    ),
    # c at T0+200000 evicts b too (floor T0+110000); last gap 200000 - 90001.
    "seconds since last after two evictions": Case(
        [T("a", T0, 10.0), T("b", T0 + 90_001.0, 20.0), T("c", T0 + 200_000.0, 30.0)],
        "aaa",
        dict(tx_count_24h=1, total_amount_24h=30.0, seconds_since_last_tx=109_999.0),
    ),
    # a evicted (T0 <= M - 90000 = T0 + 1), so "a" is a new id: {20, 5}: mean 12.5, std 7.5, z(5) = -1.
    "id re-used after eviction is new": Case(
        [T("a", T0, 10.0), T("b", T0 + 90_001.0, 20.0, "m2"), T("a", T0 + 90_002.0, 5.0)],
        "aaa",
        dict(
            transaction_id="a",
            event_time=T0 + 90_002.0,
            tx_count_1h=2,
            total_amount_1h=25.0,
            avg_amount_1h=12.5,
            max_amount_24h=20.0,
            unique_merchants_1h=2,
            seconds_since_last_tx=1.0,
            amount_zscore_24h=-1.0,
        ),
    ),
    # Retention floor exactly at a's timestamp: ts <= M - 24h - L is evicted, so "a" is new.
    "retention floor is exclusive": Case(
        [T("a", T0, 10.0), T("b", T0 + 90_000.0, 20.0), T("a", T0 + 90_000.0, 20.0)],
        "aaa",
        dict(tx_count_1h=2, seconds_since_last_tx=0.0, amount_zscore_24h=None),
    ),
    # a just above the retention floor: retained, older than M - L, so a replay is late.
    "just above the retention floor is retained": Case(
        [T("a", T0 + 0.25, 10.0), T("b", T0 + 90_000.0, 20.0), T("a", T0 + 90_000.0, 20.0)],
        "aal",
        {},
    ),
    "z-score null: single transaction": Case(
        [T("a", T0, 10.0)],
        "a",
        dict(
            tx_count_24h=1,
            total_amount_24h=10.0,
            max_amount_24h=10.0,
            seconds_since_last_tx=None,
            amount_zscore_24h=None,
        ),
    ),
    "z-score null: three equal amounts": Case(
        [T("a", T0, 7.5), T("b", T0 + 10.0, 7.5), T("c", T0 + 20.0, 7.5)],
        "aaa",
        dict(tx_count_24h=3, total_amount_24h=22.5, avg_amount_24h=7.5, amount_zscore_24h=None),
    ),
    # z-score over the 24 h window only: a is out of it (ts == T - 24h), {b, c} are equal -> null.
    "z-score null: unequal amount outside the window": Case(
        [T("a", T0, 1.0), T("b", T0 + D, 5.0), T("c", T0 + D, 5.0)],
        "aaa",
        dict(tx_count_24h=2, amount_zscore_24h=None),
    ),
    # {1, 1, 1+u}: mean 1 + u/3, deviations -u/3, -u/3, 2u/3, variance 2u^2/9,
    # z(1+u) = (2u/3) / (u sqrt(2)/3) = sqrt(2).
    "z-score of nearly equal amounts": Case(
        [T("a", T0, 1.0), T("b", T0 + 1.0, 1.0), T("c", T0 + 2.0, 1.0 + U)],
        "aaa",
        dict(amount_zscore_24h=math.sqrt(2.0), total_amount_24h=3.0 + U),
    ),
    # {1e11, 1e11 + ulp}: z of the larger is +1 however large the amounts.
    "z-score of large nearly equal amounts": Case(
        [T("a", T0, 1e11), T("b", T0 + 1.0, 1e11 + ULP_1E11)],
        "aa",
        dict(amount_zscore_24h=1.0),
    ),
    # {0, 0, 1e-200}: same shape as above, sqrt(2); squares of the deviations underflow in floats.
    "z-score of tiny amounts": Case(
        [T("a", T0, 0.0), T("b", T0 + 1.0, 0.0), T("c", T0 + 2.0, 1e-200)],
        "aaa",
        dict(amount_zscore_24h=math.sqrt(2.0), max_amount_24h=1e-200),
    ),
    # {0, smallest subnormal}: z = +1.
    "z-score of subnormal amounts": Case(
        [T("a", T0, 0.0), T("b", T0 + 1.0, 5e-324)],
        "aa",
        dict(amount_zscore_24h=1.0),
    ),
    # {0, 3, 9} -> mean 4, variance (16 + 1 + 25)/3 = 14, z(0) = -4/sqrt(14); the current one is not the max.
    "z-score negative, current below mean": Case(
        [T("a", T0, 3.0), T("b", T0 + 1.0, 9.0), T("c", T0 + 2.0, 0.0)],
        "aaa",
        dict(amount_zscore_24h=-4.0 / math.sqrt(14.0), max_amount_24h=9.0, avg_amount_24h=4.0),
    ),
    # A fractional lateness: M - L = T0 + 0.5 exactly, so T0 + 0.5 is accepted and T0 + 0.25 is late.
    "fractional lateness: boundary accepted": Case(
        [T("a", T0 + 1800.0, 10.0), T("b", T0 + 0.5, 10.0)],
        "aa",
        dict(transaction_id="b", seconds_since_last_tx=None),
        lateness_s=1799.5,
    ),
    "fractional lateness: just before is late": Case(
        [T("a", T0 + 1800.0, 10.0), T("b", T0 + 0.25, 10.0)],
        "al",
        {},
        lateness_s=1799.5,
    ),
    # L = 0.1 is not a float: the float 0.1 is 0.1 + 5.55e-18, and the float 1.9 is 1.9 - 8.88e-17.
    # So M - L = 2 - 0.1 = 1.9 - 5.55e-18 > float 1.9: late, though 2.0 - 0.1 rounds to 1.9 in floats.
    "non-dyadic lateness: late by 8e-17 s": Case(
        [T("a", 2.0, 10.0), T("b", 1.9, 10.0)],
        "al",
        {},
        lateness_s=0.1,
    ),
    "non-dyadic lateness: next float up is accepted": Case(
        [T("a", 2.0, 10.0), T("b", math.nextafter(1.9, math.inf), 10.0)],
        "aa",
        dict(transaction_id="b", seconds_since_last_tx=None),
        lateness_s=0.1,
    ),
    # Retention with L = 0.1: M - 24h - L = 1 - 0.1 = 0.9 - 5.55e-18, and the float 0.9 is 0.9 + 2.22e-17,
    # so a (at float 0.9) is still retained: its replay is a duplicate older than M - L, hence late,
    # though 86401.0 - 86400.0 - 0.1 rounds to 0.9 in floats.
    "non-dyadic lateness: retention floor": Case(
        [T("a", 0.9, 10.0), T("b", 86_401.0, 10.0), T("a", 86_401.0, 10.0)],
        "aal",
        {},
        lateness_s=0.1,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_record_cases(case: Case) -> None:
    _, _, results = feed(case)
    assert [verdict for verdict, _ in results] == [LETTER[c] for c in case.verdicts]
    verdict, record = results[-1]
    if verdict == "late":
        assert record is None
        return
    assert record is not None
    check_fields(record, case.last)
    last_input = case.stream[-1]
    assert record["user_id"] == USER
    if verdict == "accepted":
        check_fields(
            record,
            dict(
                transaction_id=last_input.txid,
                event_time=last_input.ts,
                current_amount=last_input.amount,
                is_online=last_input.online,
                merchant_category=last_input.category,
            ),
        )


# ------------------------------------------------------------------ lookups

# a at T0 (10, m1), b at T0+30m (20, m2), c at T0+1h (30, m1); M = T0 + 1h, M - L = T0.
ABC = [T("a", T0, 10.0, "m1"), T("b", T0 + 1800.0, 20.0, "m2"), T("c", T0 + H, 30.0, "m1")]

NO_X = dict(
    transaction_id=None,
    event_time=None,
    current_amount=None,
    is_online=None,
    merchant_category=None,
    seconds_since_last_tx=None,
)
EMPTY = dict(
    tx_count_1h=0,
    tx_count_24h=0,
    total_amount_1h=0.0,
    total_amount_24h=0.0,
    avg_amount_1h=0.0,
    avg_amount_24h=0.0,
    max_amount_24h=0.0,
    unique_merchants_1h=0,
    unique_merchants_24h=0,
    amount_zscore_24h=None,
)

LOOKUPS: dict[str, tuple[list[T], float | None, int, dict[str, Any]]] = {
    # Without at: the latest record (c at T): 1h window (T0, T0+1h] holds b, c.
    # 24h {10, 20, 30}: mean 20, variance 200/3, z(30) = 10 / sqrt(200/3) = sqrt(3/2).
    "latest": (
        ABC,
        None,
        200,
        dict(
            as_of=T0 + H,
            transaction_id="c",
            tx_count_1h=2,
            total_amount_1h=50.0,
            tx_count_24h=3,
            total_amount_24h=60.0,
            unique_merchants_1h=2,
            seconds_since_last_tx=1800.0,
            amount_zscore_24h=math.sqrt(1.5),
        ),
    ),
    # at = T0 + 30m: x = b; window {a, b}; z(20) over {10, 20} = 1.
    "between transactions": (
        ABC,
        T0 + 1800.0,
        200,
        dict(
            as_of=T0 + 1800.0,
            transaction_id="b",
            event_time=T0 + 1800.0,
            current_amount=20.0,
            tx_count_1h=2,
            total_amount_1h=30.0,
            avg_amount_1h=15.0,
            max_amount_24h=20.0,
            seconds_since_last_tx=1800.0,
            amount_zscore_24h=1.0,
        ),
    ),
    # at = T0 + 2h (later than M): 1h window (T0+1h, T0+2h] is empty; 24h still {a, b, c}; x = c.
    "in the future": (
        ABC,
        T0 + 2 * H,
        200,
        dict(
            as_of=T0 + 2 * H,
            transaction_id="c",
            tx_count_1h=0,
            total_amount_1h=0.0,
            avg_amount_1h=0.0,
            unique_merchants_1h=0,
            tx_count_24h=3,
            avg_amount_24h=20.0,
            max_amount_24h=30.0,
            unique_merchants_24h=2,
            amount_zscore_24h=math.sqrt(1.5),
        ),
    ),
    # at = T0 + 1h + 24h: the 24h window (T0+1h, ...] excludes c itself: all window fields zero,
    # z null, but x is still c.
    "x outside its window": (
        ABC,
        T0 + H + D,
        200,
        dict(transaction_id="c", current_amount=30.0, seconds_since_last_tx=1800.0, **EMPTY),
    ),
    # at = M - L exactly (T0) is allowed: x = a, window {a}.
    "at exactly M - L": (
        ABC,
        T0,
        200,
        dict(
            as_of=T0,
            transaction_id="a",
            tx_count_24h=1,
            total_amount_24h=10.0,
            seconds_since_last_tx=None,
            amount_zscore_24h=None,
        ),
    ),
    "at before M - L": (ABC, T0 - 0.25, 400, {}),
    # Only a at T0: at = T0 - 1h = M - L, no transaction <= at: window zero, x fields null.
    "no transaction at or before at": (
        [T("a", T0, 10.0)],
        T0 - H,
        200,
        dict(as_of=T0 - H, **NO_X, **EMPTY),
    ),
    # Ties: among equal timestamps the one accepted last is x.
    "ties pick the last accepted": (
        [T("a", T0, 10.0), T("b", T0, 20.0), T("c", T0 - 10.0, 30.0)],
        T0,
        200,
        dict(transaction_id="b", current_amount=20.0, tx_count_1h=3, seconds_since_last_tx=0.0),
    ),
    # a is evicted (M = T0 + 90001); at = M - L = T0 + 86401: no retained transaction <= at.
    "only evicted transactions before at": (
        [T("a", T0, 10.0), T("b", T0 + 90_001.0, 20.0)],
        T0 + 86_401.0,
        200,
        dict(**NO_X, **EMPTY),
    ),
}


@pytest.mark.parametrize(("stream", "at", "status", "expected"), LOOKUPS.values(), ids=LOOKUPS.keys())
def test_lookup_cases(stream: list[T], at: float | None, status: int, expected: dict[str, Any]) -> None:
    window, oracle, _ = feed(Case(stream, "", {}))
    floor = window.lateness_floor_s()
    assert floor is not None
    # The view answers 400 exactly when at < lateness_floor_s().
    assert (400 if at is not None and at < floor else 200) == status
    want_status, want = oracle.lookup(USER, at)
    assert want_status == status
    if status != 200:
        return
    assert want is not None
    body = window.lookup(at, NOW_S)
    assert body["user_id"] == USER
    assert body["computed_at"] == NOW_S
    check_fields(body, expected)
    check_fields(want, expected)  # the oracle agrees with the hand computation too
    assert_record_matches(body, want)


@pytest.mark.parametrize(("at", "status"), [(1.9, 400), (math.nextafter(1.9, math.inf), 200), (2.0, 200)])
def test_lookup_floor_with_non_dyadic_lateness(at: float, status: int) -> None:
    """M = 2.0, L = 0.1: the float 1.9 is 8e-17 s before M - L (see the record cases): 400."""
    window, oracle, _ = feed(Case([T("a", 2.0, 10.0)], "a", {}, lateness_s=0.1))
    floor = window.lateness_floor_s()
    assert floor is not None
    assert (400 if at < floor else 200) == status
    assert oracle.lookup(USER, at)[0] == status


def test_lookup_without_at_equals_the_latest_record_plus_as_of() -> None:
    window, _, results = feed(Case(ABC, "aaa", {}))
    latest = results[-1][1]
    assert latest is not None
    assert_record_matches(window.lookup(None, NOW_S), {**latest, "as_of": T0 + H})


def test_oracle_lookup_of_an_unknown_user_is_404() -> None:
    assert Oracle().lookup("nobody") == (404, None)
    assert Oracle().lookup("nobody", T0) == (404, None)


@pytest.mark.parametrize(
    ("amount", "window", "expected"),
    [
        (1.0, [1.0], None),
        (2.0, [2.0, 2.0], None),
        (3.0, [1.0, 3.0], 1.0),
        (1.0, [1.0, 3.0], -1.0),
        (2.0, [1.0, 2.0, 3.0], 0.0),
        # {2, 4, 4, 4, 5, 5, 7, 9}: mean 5, population std 2; z(9) = 2
        (9.0, [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 2.0),
        (0.0, [0.0, 5e-324], -1.0),
    ],
)
def test_zscore_table(amount: float, window: list[float], expected: float | None) -> None:
    got = zscore(amount, window, math.fsum(window))
    if expected is None:
        assert got is None
    else:
        assert got is not None and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-6)


# ----------------------------------------------------- the comparison helper itself

GOOD = {
    "tx_count_1h": 2,
    "total_amount_1h": 30.0,
    "amount_zscore_24h": None,
    "event_time": T0,
    "is_online": False,
}


@pytest.mark.parametrize(
    ("actual", "field_name"),
    [
        ({**GOOD, "tx_count_1h": 3}, "tx_count_1h"),
        ({**GOOD, "tx_count_1h": True}, "tx_count_1h"),
        ({**GOOD, "total_amount_1h": 30.0 + 1e-5}, "total_amount_1h"),
        ({**GOOD, "amount_zscore_24h": 0.0}, "amount_zscore_24h"),
        ({**GOOD, "event_time": T0 + 1e-6}, "event_time"),
        ({**GOOD, "is_online": 0}, "is_online"),
        ({k: v for k, v in GOOD.items() if k != "tx_count_1h"}, "tx_count_1h"),
        ({**GOOD, "surprise": 1}, "surprise"),
    ],
)
def test_assert_record_matches_names_the_field(actual: dict[str, Any], field_name: str) -> None:
    with pytest.raises(AssertionError, match=field_name):
        assert_record_matches(actual, GOOD)


def test_assert_record_matches_tolerances() -> None:
    assert_record_matches({**GOOD, "total_amount_1h": 30.0 * (1 + 5e-10), "computed_at": 1.0}, GOOD)
    assert_record_matches({**GOOD, "total_amount_1h": 30.0 + 5e-7}, GOOD)
