"""app/metrics.py: what the hot path counts without Prometheus locks reaches /metrics unchanged."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import FRESHNESS_BUCKETS_S, PipelineMetrics, PlainHistogram, quantile


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if not s.name.endswith("_created")  # prometheus_client's creation time; ours has none
    }


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), max_size=300))
def test_the_plain_histogram_exposes_what_prometheus_clients_would(values: list[float]) -> None:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("f_seconds", "doc", buckets=FRESHNESS_BUCKETS_S, registry=theirs_registry)
    ours = PlainHistogram("f_seconds", "doc", FRESHNESS_BUCKETS_S)
    ours_registry.register(ours)
    for v in [*values, *FRESHNESS_BUCKETS_S]:  # the bounds themselves: le is "less than or equal"
        theirs.observe(v)
        ours.observe(v)
    expected, got = _samples(generate_latest(theirs_registry)), _samples(generate_latest(ours_registry))
    assert got.keys() == expected.keys()
    sum_key = ("f_seconds_sum", ())
    for key, value in expected.items():
        if key != sum_key:
            assert got[key] == value, key
    assert abs(got[sum_key] - expected[sum_key]) <= 1e-9 * max(1.0, sum(values))


def test_metrics_count_every_record_at_any_time() -> None:
    m = PipelineMetrics(behind_after_s=30.0)
    rng = random.Random(7)
    for n in (1, 2, 500):
        for _ in range(n):
            m.on_processed()
            m.on_feature(computed_at_s=1000.0, input_timestamp_s=1000.0 - rng.random())
        text = _samples(m.prometheus_text())  # read between samples: nothing waits for the timer
        total = m.processed_total
        assert text[("velocity_transactions_processed_total", ())] == total
        assert text[("velocity_feature_freshness_seconds_count", ())] == total
    m.sample()  # the timer exports too; nothing is counted twice
    assert _samples(m.prometheus_text())[("velocity_transactions_processed_total", ())] == 503


def test_recent_freshness_is_every_record_at_low_rates() -> None:
    m = PipelineMetrics(behind_after_s=30.0)
    values = [random.Random(3).random() for _ in range(80)]
    for _second in range(3):
        for v in values:
            m.on_processed()
            m.on_feature(computed_at_s=1000.0 + v, input_timestamp_s=1000.0)
        m.sample()
    every = sorted(values * 3)
    p50, p99 = m.freshness_quantiles()
    assert p50 == pytest.approx(quantile(every, 0.5)) and p99 == pytest.approx(quantile(every, 0.99))


def test_recent_freshness_is_a_fair_sample_at_high_rates() -> None:
    m = PipelineMetrics(behind_after_s=30.0)
    rng = random.Random(11)
    for _second in range(4):  # 20,000 records a second, freshness uniform in [0, 1) s
        for _ in range(20_000):
            m.on_processed()
            m.on_feature(computed_at_s=1000.0 + rng.random(), input_timestamp_s=1000.0)
        m.sample()
    p50, p99 = m.freshness_quantiles()
    assert p50 is not None and p99 is not None
    assert abs(p50 - 0.5) < 0.05 and abs(p99 - 0.99) < 0.01, (p50, p99)


def test_recent_freshness_spans_the_minute_not_the_newest_records() -> None:
    # 30 "seconds" at 2,000 tx/s: 20 of them 1 s fresh, then 10 of them fresh at once. Over the
    # minute, two records of three took a second: the p50 is a second (the newest 20,000 records,
    # what was kept before, are the last 10 seconds only: p50 0).
    m = PipelineMetrics(behind_after_s=30.0)
    for second in range(30):
        late = 1.0 if second < 20 else 0.0
        for _ in range(2_000):
            m.on_processed()
            m.on_feature(computed_at_s=1000.0 + late, input_timestamp_s=1000.0)
        m.sample()
    assert m.freshness_quantiles() == (1.0, 1.0)
