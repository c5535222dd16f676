"""Properties of UserWindow's fast paths for big windows, against the brute-force oracle.

The exact prefix sums, the maxima stack and the per-merchant counts only pay
off (and, for the last two, only exist) once a user has many retained
transactions, which the short streams of test_window_properties.py never reach.
These streams are long and mostly in order, with out-of-order inserts,
duplicates, ties, evictions (some wiping most of the window) and reloads, and
check every record and many lookups against the oracle.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import orjson
from hypothesis import event, given, settings
from hypothesis import strategies as st

from records.transaction import Transaction
from tables.window import _BIG_FROM, UserWindow, _from_row, _row
from tests.oracle import assert_record_matches
from tests.unit.test_window_properties import (
    BASE_TS_S,
    COMPUTED_AT_S,
    NEAR_ONE,
    PROPERTY_SETTINGS,
    SPECIAL_AMOUNTS,
    USER,
    Runner,
    Step,
    Table,
    amounts,
    tx,
)

FAST_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=15)

# Mostly small steps forward, so the window grows past _BIG_FROM; a few
# out-of-order ones within the lateness, ties, and rare jumps that evict.
busy_moves = st.one_of(
    st.tuples(st.just("forward"), st.sampled_from([0.0, 0.25, 1.0, 60.0, 600.0])),
    st.tuples(st.just("forward"), st.floats(min_value=0.0, max_value=600.0)),
    st.tuples(st.just("back"), st.sampled_from([0.0, 1.0, 120.0, 1800.0])),
    st.tuples(st.just("back_l"), st.sampled_from([0.5, 1.0, 1.05])),
    st.tuples(st.just("tie"), st.integers(min_value=0, max_value=200)),
    st.tuples(st.just("edge"), st.tuples(st.integers(0, 200), st.just(3600.0))),
)
jumps = st.tuples(st.just("forward"), st.sampled_from([86_400.0, 89_000.0, 90_000.0, 200_000.0]))

busy_steps = st.builds(
    Step,
    id_choice=st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["a", "b", "c"])),
    move=busy_moves,
    amount=st.one_of(amounts, st.sampled_from([12.34, 12.34, 0.01, 7.0])),
    merchant_id=st.sampled_from([f"m{i}" for i in range(8)]),
    merchant_category=st.just("grocery"),
    is_online=st.booleans(),
    reload=st.integers(0, 15).map(lambda r: r == 0),
)


class QuietRunner(Runner):
    """Checks fewer lookup points per step: the streams are long."""

    def lookup_points(self) -> list[float | None]:
        points = super().lookup_points()
        return points[:8] + points[-4:]


@FAST_SETTINGS
@given(
    lateness_s=st.sampled_from([3600.0, 1800.5]),
    chunk_rows=st.sampled_from([3, 16, 128]),
    stream=st.lists(busy_steps, min_size=_BIG_FROM + 20, max_size=_BIG_FROM + 60),
    jump=jumps,
    after=st.lists(busy_steps, min_size=1, max_size=20),
)
def test_big_windows_match_the_oracle(
    lateness_s: float, chunk_rows: int, stream: list[Step], jump: tuple[str, float], after: list[Step]
) -> None:
    """Grow a big window, then jump ahead (evicting most or all of it) and go on."""
    runner = QuietRunner(lateness_s, chunk_rows, BASE_TS_S)
    big = False
    jump_step = Step(None, jump, 1.0, "m0", "grocery", False, False)
    for step in [*stream, jump_step, *after]:
        runner.step(step)
        big = big or runner.window._big
    event(f"big structures used: {big}")


@FAST_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    pool=st.lists(st.one_of(st.sampled_from(SPECIAL_AMOUNTS + NEAR_ONE), amounts), min_size=1, max_size=6),
)
def test_long_run_with_evictions_matches_the_oracle(seed: int, pool: list[float]) -> None:
    """Hundreds of transactions over days (so the arrays are compacted many times), few amounts."""
    rng = random.Random(seed)
    runner = QuietRunner(3600.0, 8, BASE_TS_S)
    for i in range(250):
        r = rng.random()
        if r < 0.03:
            move: tuple[str, object] = ("back", rng.uniform(0.0, 120.0))
        elif r < 0.05:
            move = ("tie", rng.randrange(1000))
        elif r < 0.06:
            move = ("forward", 90_000.0)
        else:
            move = ("forward", rng.choice([0.0, 900.0, 1800.0, rng.uniform(0.0, 2000.0)]))
        step = Step(
            id_choice=rng.choice(["a", "b"]) if rng.random() < 0.05 else None,
            move=move,
            amount=rng.choice(pool),
            merchant_id=f"m{rng.randrange(5)}",
            merchant_category="c",
            is_online=False,
            reload=i % 97 == 0,
        )
        if i % 25:
            # Skip the decode-and-lookup checks on most steps: only records and verdicts.
            txn = runner.txn_for(step)
            want_verdict, want_record = runner.oracle.process(txn)
            outcome = runner.window.apply(
                tx(txn["transaction_id"], txn["timestamp"], txn["amount"], txn["merchant_id"], "c", False),
                COMPUTED_AT_S,
            )
            assert outcome.verdict == want_verdict
            if want_record is not None:
                assert outcome.features is not None
                assert_record_matches(outcome.features, want_record)
            if outcome.verdict == "accepted":
                runner.accepted_ts.append(txn["timestamp"])
            runner.table.write(outcome.writes)
        else:
            runner.step(step)


def test_sums_do_not_drift_over_many_evictions() -> None:
    """A steady user for a week: the exact sums stay exact, whatever entered and left."""
    rng = random.Random(7)
    window = UserWindow(USER, 3600.0, 32)
    ts = BASE_TS_S
    kept: list[tuple[float, float, str]] = []
    for i in range(3000):
        ts += rng.uniform(0.0, 400.0)
        amount = rng.choice([0.1, 0.2, 0.3, 1e11, 1e-7, 12.34, math.nextafter(1.0, 2.0)])
        out = window.apply(tx(f"t{i}", ts, amount, f"m{i % 40}", "c", False), COMPUTED_AT_S)
        assert out.verdict == "accepted"
        kept.append((ts, amount, f"m{i % 40}"))
        if i % 250 == 0 or i > 2990:
            day = [(a, m) for t, a, m in kept if ts - 86_400.0 < t]
            hour = [a for t, a, _ in kept if ts - 3600.0 < t]
            f = out.features
            assert f is not None
            assert f["total_amount_24h"] == float(sum(map(Fraction, (a for a, _ in day)), Fraction(0)))
            assert f["total_amount_1h"] == math.fsum(hour)
            assert f["max_amount_24h"] == max(a for a, _ in day)
            assert f["unique_merchants_24h"] == len({m for _, m in day})
            assert f["tx_count_24h"] == len(day)


def test_head_format_is_unchanged() -> None:
    """The cached tail rows and chunk index encode exactly as the plain structures would."""
    window = UserWindow(USER, 3600.0, 4)
    table = Table()
    ts = BASE_TS_S
    accepted: list[tuple[int, Transaction]] = []  # (acceptance order, transaction)
    for i in range(200):
        ts += 1000.0 if i % 7 else -500.0
        txn = tx(f"t{i}", ts, 1.5 * i, "m", "c", i % 2 == 0)
        out = window.apply(txn, COMPUTED_AT_S)
        if out.verdict == "accepted":
            accepted.append((len(accepted), txn))
        table.write(out.writes)
        in_tail = {t.transaction_id for t in window.tail}
        head = table.values[None]
        expected = orjson.dumps(
            {
                "v": 1,
                "latest_ts_s": window.latest_ts_s,
                "evicted_ts_s": window.evicted_ts_s,
                "next_seq": window.next_seq,
                "next_chunk": window.next_chunk,
                "chunks": [[no, max_ts] for no, max_ts in window.chunks.items()],
                "tail": [_row(t, seq) for seq, t in accepted if t.transaction_id in in_tail],
            }
        )
        assert head == expected
        for w in out.writes:
            if w.chunk_no is not None and w.value is not None:
                assert [_from_row("u", r) for r in orjson.loads(w.value)]  # rows decode
    rebuilt = table.decode(3600.0, 4)
    assert rebuilt.encode_head() == window.encode_head()
    assert rebuilt.retained == window.retained
