"""``faust -A app lag``'s table: per-partition lag, never-committed partitions, the total."""

from __future__ import annotations

from app.commands import lag_table


def test_lag_is_end_minus_committed_and_a_partition_never_committed_counts_from_zero() -> None:
    lines, total = lag_table([("tx", 1, None, 7), ("tx", 0, 40, 42), ("tx-rekeyed", 0, 5, 5)])
    assert total == 2 + 7
    rows = [line.split() for line in lines[1:-1]]
    assert rows == [
        ["tx", "0", "40", "42", "2"],
        ["tx", "1", "-", "7", "7"],
        ["tx-rekeyed", "0", "5", "5", "0"],
    ]
    assert lines[0].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    assert lines[-1].split() == ["total", "9"]


def test_a_committed_offset_past_the_end_is_no_negative_lag() -> None:
    _, total = lag_table([("tx", 0, 10, 8)])
    assert total == 0
