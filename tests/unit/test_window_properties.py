"""Hypothesis properties: UserWindow (apply, lookup, persistence) against the brute-force oracle.

Every generated step is applied to the live window, to the oracle and to a dict
that simulates the table (key ``None`` = the head, ``int`` = a chunk). After
each step the window is rebuilt from that dict alone and must answer exactly
like the live one; sometimes the rebuilt window replaces the live one, as
after a cache miss or a rebalance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from records.transaction import Transaction
from tables.window import StateWrite, UserWindow
from tests.oracle import Oracle, assert_record_matches

USER = "u1"
BASE_TS_S = 1_700_000_000.0
COMPUTED_AT_S = 1_800_000_000.5


def tx(txid: str, ts: float, amount: float, merchant: str, category: str, online: bool) -> Transaction:
    """A validated transaction of USER, fields in the order the cases list them."""
    return Transaction(txid, USER, amount, merchant, category, ts, online)


PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Amounts chosen to hit exact ties (z-score null), nearly-equal values one ulp
# apart, values far apart in magnitude and subnormal/tiny ones.
SPECIAL_AMOUNTS = [
    0.0,
    1.0,
    2.5,
    10.0,
    100.0,
    math.nextafter(100.0, math.inf),
    1e11,
    math.nextafter(1e11, math.inf),
    999_999_999_999.9999,
    1e-200,
    2e-200,
    5e-324,
]
# A cluster of amounts one ulp apart: windows of them need the exact mean.
NEAR_ONE = [1.0, math.nextafter(1.0, math.inf), math.nextafter(1.0, -math.inf)]
amounts = st.one_of(
    st.sampled_from(SPECIAL_AMOUNTS),
    st.sampled_from(NEAR_ONE),
    st.floats(min_value=0.0, max_value=1e12, exclude_max=True, allow_nan=False, allow_infinity=False),
)

# Moves of the event clock. Most are relative to M (the latest accepted
# timestamp) and aligned on the window sizes, so window edges, the lateness
# floor and the retention floor are hit exactly; "edge" places a transaction
# exactly one window length away from an earlier one.
FORWARD_S = [
    0.0,
    0.25,
    1.0,
    600.0,
    1800.0,
    3600.0,
    3600.25,
    86_400.0,
    86_400.25,
    90_000.0,
    90_000.5,
    200_000.0,
]
moves = st.one_of(
    st.tuples(st.just("forward"), st.sampled_from(FORWARD_S)),
    st.tuples(st.just("forward"), st.floats(min_value=0.0, max_value=100_000.0)),
    st.tuples(st.just("back"), st.sampled_from([0.0, 0.25, 1.0, 1800.0])),
    # fraction of the lateness: 1.0 is exactly M - L (accepted), above it late
    st.tuples(st.just("back_l"), st.sampled_from([0.5, 1.0, 1.5])),
    st.tuples(st.just("back_l"), st.floats(min_value=0.0, max_value=1.3)),
    st.tuples(st.just("tie"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("edge"), st.tuples(st.integers(0, 50), st.sampled_from([3600.0, -3600.0, 86_400.0]))),
)


@dataclass(frozen=True)
class Step:
    id_choice: str | None  # None: a fresh id; else one from a tiny pool, so ids repeat
    move: tuple[str, Any]
    amount: float
    merchant_id: str
    merchant_category: str
    is_online: bool
    reload: bool  # continue from the window decoded from the simulated table


steps = st.builds(
    Step,
    id_choice=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    move=moves,
    amount=amounts,
    merchant_id=st.sampled_from(["m1", "m2", "m3"]),
    merchant_category=st.sampled_from(["grocery", "unknown", ""]),
    is_online=st.booleans(),
    reload=st.booleans(),
)


class Table:
    """The user's keys in the table: ``None`` is the head, ints are chunks."""

    def __init__(self) -> None:
        self.values: dict[int | None, bytes] = {}

    def write(self, writes: tuple[StateWrite, ...]) -> None:
        for w in writes:
            if w.value is None:
                self.values.pop(w.chunk_no, None)
            else:
                self.values[w.chunk_no] = w.value

    def decode(self, lateness_s: float, chunk_rows: int) -> UserWindow:
        head = self.values[None]
        chunks = {no: self.values.get(no) for no in UserWindow.chunk_numbers(head)}
        return UserWindow.decode(USER, head, chunks, lateness_s, chunk_rows)


class Runner:
    """Drives the window, the oracle and the simulated table in lock step."""

    def __init__(self, lateness_s: float, chunk_rows: int, base_ts_s: float) -> None:
        self.lateness_s = lateness_s
        self.chunk_rows = chunk_rows
        self.base_ts_s = base_ts_s
        self.window = UserWindow(USER, lateness_s, chunk_rows)
        self.oracle = Oracle(lateness_s)
        self.table = Table()
        self.accepted_ts: list[float] = []  # in acceptance order
        self.fresh = 0
        self.accepted_ids: set[str] = set()

    @property
    def latest_s(self) -> float | None:
        return max(self.accepted_ts) if self.accepted_ts else None

    def timestamp_for(self, move: tuple[str, Any]) -> float:
        m = self.latest_s
        if m is None:
            return self.base_ts_s
        kind, arg = move
        if kind == "forward":
            ts = m + arg
        elif kind == "back":
            ts = m - arg
        elif kind == "back_l":
            ts = m - self.lateness_s * arg
        elif kind == "tie":
            ts = self.accepted_ts[arg % len(self.accepted_ts)]
        else:
            i, offset = arg
            ts = self.accepted_ts[i % len(self.accepted_ts)] + offset
        return ts if ts > 0 else self.base_ts_s

    def txn_for(self, step: Step) -> dict[str, Any]:
        if step.id_choice is None:
            self.fresh += 1
            txid = f"t{self.fresh}"
        else:
            txid = step.id_choice
        return {
            "transaction_id": txid,
            "user_id": USER,
            "amount": step.amount,
            "merchant_id": step.merchant_id,
            "merchant_category": step.merchant_category,
            "timestamp": self.timestamp_for(step.move),
            "is_online": step.is_online,
        }

    def step(self, step: Step) -> None:
        txn = self.txn_for(step)
        want_verdict, want_record = self.oracle.process(txn)
        outcome = self.window.apply(
            tx(
                txn["transaction_id"],
                txn["timestamp"],
                txn["amount"],
                txn["merchant_id"],
                txn["merchant_category"],
                txn["is_online"],
            ),
            COMPUTED_AT_S,
        )
        assert outcome.verdict == want_verdict, f"{txn}: window says {outcome.verdict}, oracle {want_verdict}"
        self.note_event(txn, outcome.verdict, outcome.writes, want_record)
        if want_record is None:
            assert outcome.features is None
            assert outcome.reason, "a late event needs a dead-letter message"
        else:
            assert outcome.features is not None
            assert outcome.features["computed_at"] == COMPUTED_AT_S
            assert_record_matches(outcome.features, want_record)
        if outcome.verdict == "accepted":
            self.accepted_ts.append(txn["timestamp"])
            assert any(w.chunk_no is None and w.value is not None for w in outcome.writes), "head not written"
        value_writes = [w for w in outcome.writes if w.value is not None]
        assert len(value_writes) <= 2, f"{len(value_writes)} table writes for one transaction"
        assert len({w.chunk_no for w in outcome.writes}) == len(outcome.writes), "a key written twice"
        self.table.write(outcome.writes)

        if self.accepted_ts:
            self.check_stored_state()
            rebuilt = self.table.decode(self.lateness_s, self.chunk_rows)
            self.check_lookups(rebuilt)
            if step.reload:
                self.window = rebuilt

    def note_event(
        self, txn: dict[str, Any], verdict: str, writes: tuple[StateWrite, ...], record: dict[str, Any] | None
    ) -> None:
        """Label what the step exercised (shown by ``pytest --hypothesis-show-statistics``)."""
        event(verdict)
        if verdict == "accepted" and txn["transaction_id"] in self.accepted_ids:
            event("id re-used after eviction")
        if verdict == "accepted":
            self.accepted_ids.add(txn["transaction_id"])
        if any(w.chunk_no is not None and w.value is not None for w in writes):
            event("chunk sealed")
        if any(w.value is None for w in writes):
            event("chunk deleted")
        if record is not None and record["amount_zscore_24h"] is None and record["tx_count_24h"] >= 2:
            event("z-score null: all amounts equal")

    def check_stored_state(self) -> None:
        head = self.table.values[None]
        listed = set(UserWindow.chunk_numbers(head))
        stored = {no for no in self.table.values if no is not None}
        assert stored == listed, f"chunks stored {sorted(stored)} but the head lists {sorted(listed)}"
        tail_rows = len(orjson.loads(head)["tail"])
        assert tail_rows <= self.chunk_rows, f"head holds {tail_rows} tail rows > {self.chunk_rows}"
        retained = len(self.window)
        # Each stored chunk still holds at least one retained transaction.
        assert len(listed) <= retained, f"{len(listed)} chunks kept for {retained} retained transactions"
        assert retained <= len(self.accepted_ts)

    def lookup_points(self) -> list[float | None]:
        m = self.latest_s
        assert m is not None
        points: list[float | None] = [None, m, m - self.lateness_s, m + 0.25, m + 3600.0, m + 90_000.0]
        points.append(math.nextafter(m - self.lateness_s, -math.inf))  # just too old: 400
        for ts in self.accepted_ts[-4:]:
            points += [ts, ts - 0.25, ts + 3600.0, ts + 86_400.0]
        return points

    def check_lookups(self, rebuilt: UserWindow) -> None:
        floor_live = self.window.lateness_floor_s()
        assert floor_live is not None
        assert rebuilt.lateness_floor_s() == floor_live
        assert len(rebuilt) == len(self.window)
        for at in self.lookup_points():
            status, want = self.oracle.lookup(USER, at)
            # The view answers 400 exactly when at < lateness_floor_s().
            too_old = at is not None and at < floor_live
            assert (status == 400) == too_old, f"at={at!r}: oracle {status}, floor {floor_live!r}"
            if status != 200:
                continue
            assert want is not None
            live = self.window.lookup(at, COMPUTED_AT_S)
            assert_record_matches(live, want)
            assert rebuilt.lookup(at, COMPUTED_AT_S) == live, f"rebuilt window differs at={at!r}"


@PROPERTY_SETTINGS
@given(
    lateness_s=st.sampled_from([3600.0, 1800.5]),
    chunk_rows=st.integers(min_value=2, max_value=5),
    base_ts_s=st.sampled_from([BASE_TS_S, 50.0]),
    stream=st.lists(steps, min_size=1, max_size=30),
)
def test_window_matches_oracle_and_survives_round_trips(
    lateness_s: float, chunk_rows: int, base_ts_s: float, stream: list[Step]
) -> None:
    runner = Runner(lateness_s, chunk_rows, base_ts_s)
    for step in stream:
        runner.step(step)


@PROPERTY_SETTINGS
@given(
    chunk_rows=st.integers(min_value=2, max_value=4),
    gaps=st.lists(st.sampled_from([0.0, 1.0, 1800.0, 30_000.0]), min_size=20, max_size=60),
)
def test_state_stays_bounded_for_a_steady_user(chunk_rows: int, gaps: list[float]) -> None:
    """In-order traffic: every chunk is sealed full, and the state never outgrows the retention rule."""
    lateness_s = 3600.0
    window = UserWindow(USER, lateness_s, chunk_rows)
    table = Table()
    ts = BASE_TS_S
    seen: list[float] = []
    for i, gap in enumerate(gaps):
        ts += gap
        seen.append(ts)
        outcome = window.apply(tx(f"t{i}", ts, 1.0 + i, "m", "c", False), COMPUTED_AT_S)
        assert outcome.verdict == "accepted"
        assert sum(w.value is not None for w in outcome.writes) <= 2
        table.write(outcome.writes)
        floor = ts - 86_400.0 - lateness_s
        must_keep = sum(t > floor for t in seen)
        assert len(window) == must_keep
        head = orjson.loads(table.values[None])
        assert len(head["tail"]) <= chunk_rows
        # Live chunks: all but possibly the oldest are fully retained.
        assert len(head["chunks"]) <= must_keep // chunk_rows + 1
        assert len(table.values) == len(head["chunks"]) + 1


# ---------------------------------------------------------------- float edges

lateness_values = st.one_of(
    st.sampled_from([0.0, 0.1, 0.3, 1800.3, 3600.0, 3599.9]),
    st.floats(min_value=0.0, max_value=200_000.0),
)
latest_values = st.one_of(
    st.sampled_from([1.0, 0.9, 90_000.1, 1_700_000_000.1, BASE_TS_S]),
    st.floats(min_value=1e-3, max_value=2e9),
)


def _neighbours(x: float) -> list[float]:
    below = math.nextafter(x, -math.inf)
    above = math.nextafter(x, math.inf)
    around = (math.nextafter(below, -math.inf), below, x, above, math.nextafter(above, math.inf))
    return [t for t in around if t > 0]


@PROPERTY_SETTINGS
@given(lateness_s=lateness_values, latest_s=latest_values)
def test_lateness_floor_is_exact_in_real_arithmetic(lateness_s: float, latest_s: float) -> None:
    """``ts < M - L`` decided on the real numbers, not on a rounded ``M - L``."""
    exact_floor = Fraction(latest_s) - Fraction(lateness_s)
    for ts in _neighbours(latest_s - lateness_s):
        if ts > latest_s:
            continue
        window = UserWindow(USER, lateness_s, 4)
        window.apply(tx("m", latest_s, 1.0, "m1", "c", False), COMPUTED_AT_S)
        floor = window.lateness_floor_s()
        assert floor is not None
        late = Fraction(ts) < exact_floor
        assert (ts < floor) == late, f"at={ts!r}: floor {floor!r}, exact {exact_floor}"
        verdict = window.apply(tx("x", ts, 1.0, "m1", "c", False), COMPUTED_AT_S).verdict
        assert verdict == ("late" if late else "accepted"), f"ts={ts!r} M={latest_s!r} L={lateness_s!r}"


@PROPERTY_SETTINGS
@given(lateness_s=lateness_values, latest_s=latest_values)
def test_retention_floor_is_exact_in_real_arithmetic(lateness_s: float, latest_s: float) -> None:
    """A transaction is retained iff ``ts > M - 24h - L`` on the real numbers (seen through duplicates)."""
    exact_floor = Fraction(latest_s) - 86_400 - Fraction(lateness_s)
    for old_ts in _neighbours(latest_s - 86_400.0 - lateness_s):
        if old_ts > latest_s - lateness_s:
            continue  # would be a duplicate within the lateness, not our concern here
        window = UserWindow(USER, lateness_s, 2)
        table = Table()
        table.write(window.apply(tx("old", old_ts, 1.0, "m1", "c", False), COMPUTED_AT_S).writes)
        table.write(window.apply(tx("new", latest_s, 2.0, "m1", "c", False), COMPUTED_AT_S).writes)
        retained = Fraction(old_ts) > exact_floor
        assert len(window) == 1 + retained
        assert len(table.decode(lateness_s, 2)) == 1 + retained
        # A retained id is a duplicate (too old to republish: late); an evicted one is new again.
        again = tx("old", latest_s, 3.0, "m1", "c", False)
        verdict = window.apply(again, COMPUTED_AT_S).verdict
        expected = "late" if retained else "accepted"
        assert verdict == expected, f"old={old_ts!r} M={latest_s!r} L={lateness_s!r}"
