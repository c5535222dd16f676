"""The catch-up figure of /stats (a backfill, a restart after downtime): per worker and merged."""

from __future__ import annotations

from app.metrics import PipelineMetrics, _merge_catch_up, catch_up


def test_catching_up_needs_both_a_backlog_and_old_input() -> None:
    assert catch_up(500, 100.0, 3600.0, 5.0) == {
        "catching_up": True,
        "lag": 500,
        "behind_s": 3600.0,
        "eta_s": 5.0,
    }
    assert catch_up(500, 100.0, 0.01, 5.0)["catching_up"] is False  # a burst of live traffic
    assert catch_up(0, 100.0, 3600.0, 5.0) == {
        "catching_up": False,
        "lag": 0,
        "behind_s": 3600.0,
        "eta_s": 0.0,
    }
    assert catch_up(10, 0.0, None, 5.0) == {"catching_up": False, "lag": 10, "behind_s": None, "eta_s": None}


def test_the_cluster_catches_up_while_any_worker_does() -> None:
    merged = _merge_catch_up([catch_up(0, 50.0, 1.0, 5.0), catch_up(300, 100.0, 90.0, 5.0)])
    assert merged == {"catching_up": True, "lag": 300, "behind_s": 90.0, "eta_s": 3.0}
    assert _merge_catch_up([catch_up(5, 0.0, 9.0, 5.0), catch_up(0, 1.0, 1.0, 5.0)])["eta_s"] is None
    assert _merge_catch_up([]) == {"catching_up": False, "lag": 0, "behind_s": None, "eta_s": 0.0}


def test_the_snapshot_reports_how_old_the_last_input_was() -> None:
    metrics = PipelineMetrics(behind_after_s=5.0)
    metrics.on_feature(computed_at_s=1000.0, input_timestamp_s=400.0)
    metrics.set_lag({("tx", 0): 7}, [0])
    assert metrics.snapshot()["catch_up"]["catching_up"] is True
    assert metrics.snapshot()["catch_up"]["behind_s"] == 600.0
    metrics.on_feature(computed_at_s=1000.0, input_timestamp_s=999.99)
    assert metrics.snapshot()["catch_up"]["catching_up"] is False
