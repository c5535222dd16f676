"""HistoryState (the export's state) against the brute-force oracle, expiry included.

A tiny decoded-window cache and write batch make every few transactions go
through RocksDB and the stored encoding, as a long export does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tables.replay
from records.transaction import Transaction
from tables.replay import HistoryState
from tests.oracle import Oracle, assert_record_matches

BASE = 1_700_000_000.0
USERS = ["ann", "bob", "cyd", "dee"]
PARTITION = {"ann": 0, "bob": 0, "cyd": 1, "dee": 1}

steps = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.integers(min_value=0, max_value=11),  # transaction id (repeats are duplicates)
        st.sampled_from([0.0, 0.5, 600.0, 3600.0, 3600.5, 86_400.0, 2 * 86_400.0, 3 * 86_400.0 + 1]),
        st.booleans(),  # forward from the stream's clock, or back
        st.sampled_from([1.0, 2.5, 100.0, 0.0, 1e11]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, cache=st.sampled_from([1, 2, 1000]))
def test_history_state_decides_like_the_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[str, int, float, bool, float]],
    cache: int,
) -> None:
    monkeypatch.setattr(tables.replay, "FLUSH_EVERY", 3)
    ttl = 2 * 86_400.0
    state = HistoryState(
        tmp_path_factory.mktemp("replay") / "db", lateness_s=3600.0, chunk_rows=2, ttl_s=ttl, cache_size=cache
    )
    oracle = Oracle(lateness_s=3600.0, ttl_s=ttl, partition_of=PARTITION.__getitem__)
    clock = BASE
    try:
        for user, n, step, forward, amount in steps:
            clock = clock + step if forward else clock - step
            txn = Transaction(f"{user}-{n}", user, amount, f"m{n % 3}", "grocery", clock, n % 2 == 0)
            outcome = state.apply(txn, PARTITION[user], computed_at_s=5.0)
            verdict, record = oracle.process(
                {
                    "transaction_id": txn.transaction_id,
                    "user_id": user,
                    "amount": amount,
                    "merchant_id": txn.merchant_id,
                    "merchant_category": "grocery",
                    "timestamp": clock,
                    "is_online": txn.is_online,
                }
            )
            assert outcome.verdict == verdict
            if record is not None:
                assert outcome.features is not None
                assert_record_matches(outcome.features, record)
        assert state.users_expired == len(oracle.expired)
    finally:
        state.close()


def test_state_lives_in_rocksdb_not_in_memory(tmp_path: Path) -> None:
    """With a cache of 10 windows, 2,000 users are read back from the database, exactly."""
    state = HistoryState(tmp_path / "db", lateness_s=3600.0, chunk_rows=4, ttl_s=0.0, cache_size=10)
    try:
        for rnd in range(3):
            for u in range(2000):
                txn = Transaction(f"t{u}-{rnd}", f"user-{u}", 1.0 + rnd, "m", "c", BASE + rnd * 60 + u, False)
                outcome = state.apply(txn, 0, computed_at_s=0.0)
                assert outcome.verdict == "accepted" and outcome.features is not None
                assert outcome.features["tx_count_1h"] == rnd + 1
                assert outcome.features["total_amount_1h"] == sum(1.0 + r for r in range(rnd + 1))
        assert len(state._cache) == 10
    finally:
        state.close()
