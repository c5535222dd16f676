"""app/drift.py: the workers' observer and the one aggregator of drift partials and joined labels.

Expectations are derived from the inputs alone: counts, nulls, min and max by
direct counting; PSI only by its properties (identical windows give 0, a
shifted window is far above the warning level, nothing is compared before there
is a reference); online quality by direct counts at a bin-aligned threshold and a
brute-force pairwise AUC on scores at score-bin centres (where binning loses nothing).
Times are realistic epochs (BASE is a multiple of an hour), windows of 60 s,
reference periods of 600 s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.drift import HOUR_S, DriftAggregator, DriftObserver, Reference, load_reference, window_start
from app.sketch import SCORE_BINS, Sketch
from records.errors import SettingsError
from records.label import Label, LoggedPrediction, joined_label

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)

WINDOW_S = 60.0
PERIOD_S = 600.0
BASE = 1_699_999_200.0  # a multiple of HOUR_S (so of PERIOD_S and WINDOW_S too)
FEATURES = ("amount", "count_1h")
PSI_WARN = 0.25
THRESHOLD = 0.5

Output = list[tuple[str, str, dict[str, Any]]]


def w(k: int) -> float:
    """The start of the k-th window after BASE."""
    return BASE + k * WINDOW_S


def sketch_of(xs: Sequence[float | None]) -> Sketch:
    sketch = Sketch()
    sketch.add_many(xs)
    return sketch


def partial(
    start: float,
    features: Mapping[str, Sequence[float | None]] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """A partial as a worker sends it (JSON round trip included)."""
    out: dict[str, Any] = {
        "kind": "partial",
        "window_start": start,
        "window_s": WINDOW_S,
        "count": 0,
        "features": {name: sketch_of(xs).to_dict() for name, xs in (features or {}).items()},
        "scores": {version: sketch_of(xs).to_dict() for version, xs in (scores or {}).items()},
    }
    if source is not None:
        out["source"] = source
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(out))
    return decoded


def aggregator(
    state: MutableMapping[str, bytes] | None = None,
    reference: Reference | None = None,
    min_count: int = 1,
    label_wait_s: float = 2 * 86400.0,
) -> DriftAggregator:
    return DriftAggregator(
        {} if state is None else state,
        Reference("previous", PERIOD_S) if reference is None else reference,
        psi_warn=PSI_WARN,
        min_count=min_count,
        label_wait_s=label_wait_s,
        threshold=THRESHOLD,
    )


def by_key(outputs: Output) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Outputs by (kind, key, window_start); fails on a duplicate."""
    out: dict[tuple[str, str, float], dict[str, Any]] = {}
    for kind, key, record in outputs:
        ident = (kind, key, record["window_start"])
        assert ident not in out, f"published twice: {ident}"
        out[ident] = record
    return out


def feed(agg: DriftAggregator, partials: Sequence[dict[str, Any]]) -> Output:
    out: Output = []
    for p in partials:
        out.extend(agg.on_partial(p))
    return out


def uniform(seed: int, low: float, high: float, n: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).uniform(low, high, n)]


# --------------------------------------------------------------------------- window_start


@PROPERTY_SETTINGS
@given(st.integers(min_value=-(10**6), max_value=10**8), st.integers(min_value=0, max_value=5999))
def test_window_start_is_the_multiple_of_the_window_at_or_below(k: int, hundredths: int) -> None:
    t = k * WINDOW_S + hundredths / 100
    assert window_start(t, WINDOW_S) == k * WINDOW_S
    assert window_start(k * WINDOW_S, WINDOW_S) == k * WINDOW_S


# --------------------------------------------------------------------------- observer

values = st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.none(), st.just(math.nan))
observations = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=5999), values, values
    ),
    max_size=80,
)


@PROPERTY_SETTINGS
@given(observations)
def test_observer_puts_each_record_in_its_window(rows: list[tuple[int, int, Any, Any]]) -> None:
    observer = DriftObserver(features=FEATURES, window_s=WINDOW_S)
    rows = sorted(rows, key=lambda r: (r[0], r[1]))  # processing time only moves on
    for k, hundredths, amount, count in rows:
        observer.observe(
            {"computed_at": w(k) + hundredths / 100, "amount": amount, "count_1h": count}, None, None
        )
    partials = observer.take_finished(w(7) + 1.0)

    windows = sorted({k for k, *_ in rows})
    # Every window with records, then an empty one for the last ended window (6: nothing observed there).
    assert [p["window_start"] for p in partials] == [w(k) for k in windows] + [w(6)]
    for k, p in zip(windows, partials, strict=False):
        mine = [r for r in rows if r[0] == k]
        assert p["count"] == len(mine)
        assert p["window_s"] == WINDOW_S and p["kind"] == "partial"
        assert p["scores"] == {}
        for i, name in enumerate(FEATURES):
            xs = [r[2 + i] for r in mine]
            finite = [x for x in xs if x is not None and math.isfinite(x)]
            sketch = Sketch.from_dict(p["features"][name])
            assert (sketch.count, sketch.nulls) == (len(finite), len(xs) - len(finite))
            assert (sketch.min, sketch.max) == ((min(finite), max(finite)) if finite else (None, None))
    empty = partials[-1]
    assert (empty["count"], empty["features"], empty["scores"]) == (0, {}, {})


def test_observer_folds_many_records_of_one_window() -> None:
    observer = DriftObserver(features=FEATURES, window_s=WINDOW_S)
    n = DriftObserver.FOLD_AT * 2 + 17
    amounts = uniform(1, 0.0, 100.0, n)
    for i, amount in enumerate(amounts):
        observer.observe({"computed_at": w(0) + i * 50.0 / n, "amount": amount, "count_1h": i}, 0.5, "v1")
    (p, empty) = observer.take_finished(w(2))
    assert p["window_start"] == w(0) and p["count"] == n
    sketch = Sketch.from_dict(p["features"]["amount"])
    assert (sketch.count, sketch.min, sketch.max) == (n, min(amounts), max(amounts))
    assert Sketch.from_dict(p["features"]["count_1h"]).max == n - 1
    assert Sketch.from_dict(p["scores"]["v1"]).count == n
    assert (empty["window_start"], empty["count"]) == (w(1), 0)


def test_scores_go_into_per_model_version_sketches() -> None:
    observer = DriftObserver(features=("amount",), window_s=WINDOW_S)
    given_scores: list[tuple[float | None, str | None]] = [
        (0.1, "v1"),
        (0.9, "v1"),
        (0.3, "model 2 with spaces"),
        (None, "v1"),  # not scored
        (0.7, None),  # no model: not counted
        (0.2, "v1"),
        (0.0, "model 2 with spaces"),
    ]
    for i, (score, version) in enumerate(given_scores):
        observer.observe({"computed_at": w(0) + i, "amount": 10.0 * i}, score, version)
    p = observer.take_finished(w(1) + 5.0)[0]
    assert p["count"] == len(given_scores)
    assert sorted(p["scores"]) == ["model 2 with spaces", "v1"]
    for version in ("v1", "model 2 with spaces"):
        scores = [s for s, v in given_scores if v == version and s is not None]
        sketch = Sketch.from_dict(p["scores"][version])
        assert (sketch.count, sketch.nulls, sketch.min, sketch.max) == (
            len(scores),
            0,
            min(scores),
            max(scores),
        )


def test_take_finished_sends_each_window_once_and_an_empty_partial_when_idle() -> None:
    observer = DriftObserver(features=("amount",), window_s=WINDOW_S)
    # Idle from the start: one empty partial for the window that just ended, then nothing new.
    first = observer.take_finished(w(2) + 5.0)
    assert [(p["window_start"], p["count"], p["features"], p["scores"]) for p in first] == [(w(1), 0, {}, {})]
    assert observer.take_finished(w(2) + 30.0) == []

    # Records in window 2: not sent while it is open.
    observer.observe({"computed_at": w(2) + 40.0, "amount": 1.0}, 0.4, "v")
    assert observer.take_finished(w(2) + 50.0) == []
    observer.observe({"computed_at": w(2) + 55.0, "amount": 2.0}, None, None)
    sent = observer.take_finished(w(3) + 1.0)
    assert [(p["window_start"], p["count"]) for p in sent] == [(w(2), 2)]
    assert observer.take_finished(w(3) + 2.0) == []
    assert observer.take_finished(w(3) + 59.0) == []

    # Window 3 saw nothing: an empty partial once it ended, once.
    idle = observer.take_finished(w(4))
    assert [(p["window_start"], p["count"], p["features"]) for p in idle] == [(w(3), 0, {})]
    assert observer.take_finished(w(4) + 10.0) == []


def test_a_window_closed_by_a_later_record_is_sent_with_the_last_ended_one() -> None:
    observer = DriftObserver(features=("amount",), window_s=WINDOW_S)
    observer.observe({"computed_at": w(0) + 1.0, "amount": 1.0}, None, None)
    observer.observe({"computed_at": w(1) + 1.0, "amount": 2.0}, None, None)
    observer.observe({"computed_at": w(1) + 2.0, "amount": 3.0}, None, None)
    # Both windows ended by w(5); windows 2-4 saw nothing, only the last ended one (4) gets an empty partial.
    sent = observer.take_finished(w(5) + 1.0)
    assert [(p["window_start"], p["count"]) for p in sent] == [(w(0), 1), (w(1), 2), (w(4), 0)]
    assert observer.take_finished(w(5) + 2.0) == []


# --------------------------------------------------------------------------- aggregator: merging


def test_two_workers_partials_of_one_window_merge() -> None:
    a = DriftObserver(features=FEATURES, window_s=WINDOW_S)
    b = DriftObserver(features=FEATURES, window_s=WINDOW_S)
    amounts_a, amounts_b = uniform(2, 0.0, 50.0, 30), uniform(3, 20.0, 90.0, 45)
    for i, x in enumerate(amounts_a):
        a.observe({"computed_at": w(0) + i, "amount": x, "count_1h": None if i % 3 == 0 else i}, 0.25, "v")
    for i, x in enumerate(amounts_b):
        b.observe({"computed_at": w(0) + i, "amount": x, "count_1h": i}, 0.75, "v")
    agg = aggregator()
    out: Output = []
    for name, observer in (("worker-a", a), ("worker-b", b)):
        for p in observer.take_finished(w(1) + 1.0):
            p["source"] = name
            out.extend(agg.on_partial(orjson.loads(orjson.dumps(p))))
    assert out == []  # window 1 is still being merged: nothing later arrived
    records = by_key(agg.on_partial(partial(w(2), source="worker-a")))
    assert sorted(records) == [
        ("feature", "amount", w(0)),
        ("feature", "count_1h", w(0)),
        ("pred", "v", w(0)),
    ]
    amount = records["feature", "amount", w(0)]
    assert (amount["count"], amount["nulls"]) == (75, 0)
    assert (amount["window_start"], amount["window_end"]) == (w(0), w(1))
    assert (amount["quantiles"]["min"], amount["quantiles"]["max"]) == (
        min(amounts_a + amounts_b),
        max(amounts_a + amounts_b),
    )
    assert Sketch.from_dict(amount["sketch"]) == sketch_of(amounts_a + amounts_b)
    count = records["feature", "count_1h", w(0)]
    assert (count["count"], count["nulls"]) == (75 - 10, 10)
    score = records["pred", "v", w(0)]
    assert (score["feature"], score["model_version"], score["count"]) == ("score", "v", 75)
    assert (score["quantiles"]["min"], score["quantiles"]["max"]) == (0.25, 0.75)


def test_a_partial_sent_twice_is_merged_once_even_across_a_restart() -> None:
    state: dict[str, bytes] = {}
    agg = aggregator(state)
    once = partial(w(0), {"amount": [1.0, 2.0, 3.0]}, source="worker-a")
    assert agg.on_partial(once) == []
    assert agg.on_partial(once) == []
    restarted = aggregator(state)  # the table survives; the aggregator object does not
    assert restarted.on_partial(once) == []
    assert restarted.on_partial(partial(w(0), {"amount": [4.0]}, source="worker-b")) == []
    records = by_key(restarted.on_partial(partial(w(1), source="worker-a")))
    assert records["feature", "amount", w(0)]["count"] == 4


@PROPERTY_SETTINGS
@given(
    st.lists(st.lists(st.floats(min_value=-1e3, max_value=1e3), max_size=20), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=12),
)
def test_merged_counts_are_the_sum_over_distinct_sources(
    per_source: list[list[float]], sends: list[int]
) -> None:
    agg = aggregator()
    sent = [i % len(per_source) for i in sends]
    for i in sent:
        assert agg.on_partial(partial(w(0), {"amount": per_source[i]}, source=f"worker-{i}")) == []
    records = by_key(agg.on_partial(partial(w(1), source="worker-0")))
    distinct = sorted(set(sent))
    everything = [x for i in distinct for x in per_source[i]]
    if not everything:
        # Sketches of nothing still travel: the feature is published with no values, no psi.
        assert records["feature", "amount", w(0)]["count"] == 0
        assert records["feature", "amount", w(0)]["psi"] is None
        return
    record = records["feature", "amount", w(0)]
    assert record["count"] == len(everything)
    assert (record["quantiles"]["min"], record["quantiles"]["max"]) == (min(everything), max(everything))


def test_a_window_is_published_only_when_a_later_windows_partial_arrives() -> None:
    agg = aggregator()
    assert agg.on_partial(partial(w(0), {"amount": [1.0]}, source="a")) == []
    assert agg.on_partial(partial(w(0), {"amount": [2.0]}, source="b")) == []
    first = agg.on_partial(partial(w(1), {"amount": [5.0]}, source="a"))
    assert [(kind, key, r["window_start"], r["count"]) for kind, key, r in first] == [
        ("feature", "amount", w(0), 2)
    ]
    assert agg.on_partial(partial(w(1), {"amount": [6.0]}, source="b")) == []
    # A gap: windows 2-4 never had a partial; window 1 goes out when window 5's first partial arrives.
    second = agg.on_partial(partial(w(5), source="a"))
    assert [(kind, key, r["window_start"], r["window_end"], r["count"]) for kind, key, r in second] == [
        ("feature", "amount", w(1), w(2), 2)
    ]


def test_several_open_windows_are_published_in_order() -> None:
    agg = aggregator()
    assert agg.on_partial(partial(w(0), {"amount": [1.0]}, source="a")) == []
    # Worker b is behind: its window 0 and 1 arrive before anyone's window 2.
    assert feed(agg, [partial(w(0), {"amount": [2.0]}, source="b")]) == []
    out = feed(agg, [partial(w(1), {"amount": [3.0]}, source="b"), partial(w(3), source="a")])
    assert [(r["window_start"], r["count"]) for _, _, r in out] == [(w(0), 2), (w(1), 1)]


def test_late_partials_are_counted_and_ignored() -> None:
    state: dict[str, bytes] = {}
    agg = aggregator(state)
    feed(agg, [partial(w(0), {"amount": [1.0]}, source="a"), partial(w(1), {"amount": [1.0]}, source="a")])
    assert agg.late_partials == 0
    assert agg.on_partial(partial(w(0), {"amount": [100.0]}, source="b")) == []
    assert agg.on_partial(partial(w(-3), {"amount": [100.0]}, source="b")) == []
    assert agg.late_partials == 2
    assert not any(k.startswith("w|") and float(k[2:]) < w(1) for k in state)
    records = by_key(agg.on_partial(partial(w(2), source="a")))
    assert records["feature", "amount", w(1)]["count"] == 1
    assert agg.late_partials == 2


# --------------------------------------------------------------------------- aggregator: PSI and references


def test_the_first_period_has_no_reference_and_the_next_compares_against_it() -> None:
    agg = aggregator()
    xs0, xs1, xs2 = uniform(4, 10.0, 100.0, 300), uniform(5, 10.0, 100.0, 200), uniform(6, 10.0, 100.0, 400)
    period0 = feed(
        agg,
        [
            partial(w(0), {"amount": xs0}),
            partial(w(3), {"amount": xs1}),
            partial(w(9), {"amount": xs0}),  # the last window of period 0
            partial(w(10), {"amount": xs2}),  # the first of period 1
        ],
    )
    assert [r["window_start"] for _, _, r in period0] == [w(0), w(3), w(9)]
    for _, _, record in period0:
        assert (record["psi"], record["reference"], record["warning"]) == (None, None, False)
    records = by_key(agg.on_partial(partial(w(11))))
    record = records["feature", "amount", w(10)]
    assert record["reference"] == {"kind": "previous", "start": BASE, "end": BASE + PERIOD_S, "count": 800}
    assert record["psi"] is not None and 0.0 <= record["psi"] < 0.1  # the same distribution
    assert record["warning"] is False
    assert record["threshold"] == PSI_WARN


def test_an_identical_window_does_not_warn_and_a_shifted_one_does() -> None:
    xs = uniform(7, 10.0, 100.0, 500)
    identical = aggregator()
    feed(identical, [partial(w(0), {"amount": xs}), partial(w(10), {"amount": xs})])
    same = by_key(identical.on_partial(partial(w(11))))["feature", "amount", w(10)]
    assert (same["psi"], same["warning"]) == (0.0, False)

    shifted = aggregator()
    feed(shifted, [partial(w(0), {"amount": xs}), partial(w(10), {"amount": [x * 10 for x in xs]})])
    far = by_key(shifted.on_partial(partial(w(11))))["feature", "amount", w(10)]
    assert far["psi"] is not None and far["psi"] >= PSI_WARN
    assert far["warning"] is True


@PROPERTY_SETTINGS
@given(st.lists(st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.none()), min_size=1, max_size=60))
def test_a_window_like_its_reference_period_has_psi_zero(xs: list[float | None]) -> None:
    agg = aggregator()
    feed(agg, [partial(w(2), {"amount": xs}), partial(w(12), {"amount": xs})])
    record = by_key(agg.on_partial(partial(w(13))))["feature", "amount", w(12)]
    assert record["psi"] == 0.0
    assert record["warning"] is False


def test_min_count_suppresses_warnings_and_counts_nulls() -> None:
    reference = uniform(8, 10.0, 100.0, 400)
    shifted: list[float | None] = [
        *uniform(9, 1000.0, 5000.0, 40),
        *[None] * 10,
    ]  # 50 values, 10 of them null
    for min_count, warns in ((51, False), (50, True), (1, True)):
        agg = aggregator(min_count=min_count)
        feed(agg, [partial(w(0), {"amount": reference}), partial(w(10), {"amount": shifted})])
        record = by_key(agg.on_partial(partial(w(11))))["feature", "amount", w(10)]
        assert (record["count"], record["nulls"]) == (40, 10)
        assert record["psi"] is not None and record["psi"] >= PSI_WARN
        assert record["warning"] is warns, min_count


def test_each_period_compares_with_the_one_before_and_old_periods_are_dropped() -> None:
    state: dict[str, bytes] = {}
    agg = aggregator(state)
    low, high = uniform(10, 10.0, 100.0, 300), uniform(11, 1000.0, 10000.0, 300)
    out = feed(
        agg,
        [
            partial(w(0), {"amount": low}),
            partial(w(10), {"amount": high}),  # period 1: shifted from period 0
            partial(w(20), {"amount": high}),  # period 2: like period 1
            partial(w(21)),
        ],
    )
    records = by_key(out)
    p1, p2 = records["feature", "amount", w(10)], records["feature", "amount", w(20)]
    assert p1["warning"] is True and p1["reference"]["start"] == BASE
    assert (p2["psi"], p2["warning"]) == (0.0, False)
    assert p2["reference"] == {"kind": "previous", "start": w(10), "end": w(20), "count": 300}
    # Periods 1 and 2 are kept (2 is the next window's reference), period 0 is gone.
    assert sorted(k for k in state if k.startswith("r|")) == [f"r|amount|{w(10)!r}", f"r|amount|{w(20)!r}"]


def test_a_period_without_windows_leaves_the_next_without_reference() -> None:
    agg = aggregator()
    out = feed(
        agg, [partial(w(0), {"amount": [1.0, 2.0]}), partial(w(25), {"amount": [1.0, 2.0]}), partial(w(26))]
    )
    record = by_key(out)["feature", "amount", w(25)]  # period 2; period 1 saw nothing
    assert (record["psi"], record["reference"], record["warning"]) == (None, None, False)


def test_scores_are_compared_per_model_version() -> None:
    agg = aggregator()
    low, high = uniform(12, 0.0, 0.2, 300), uniform(13, 0.8, 1.0, 300)
    out = feed(
        agg,
        [
            partial(w(0), scores={"v1": low, "v2": low}),
            partial(w(10), scores={"v1": low, "v2": high}),
            partial(w(11)),
        ],
    )
    records = by_key(out)
    v1, v2 = records["pred", "v1", w(10)], records["pred", "v2", w(10)]
    assert (v1["psi"], v1["warning"]) == (0.0, False)
    assert v2["warning"] is True
    assert v2["reference"] == {"kind": "previous", "start": BASE, "end": BASE + PERIOD_S, "count": 300}
    assert (v1["model_version"], v2["model_version"], v2["feature"]) == ("v1", "v2", "score")
    assert (records["pred", "v1", w(0)]["psi"], records["pred", "v1", w(0)]["reference"]) == (None, None)


# --------------------------------------------------------------------------- profile reference


def write_profile(tmp_path: Path, amounts: Sequence[float], scores: Sequence[float]) -> Path:
    path = tmp_path / "profile.json"
    profile = {"features": {"amount": sketch_of(amounts).to_dict()}, "score": sketch_of(scores).to_dict()}
    path.write_bytes(orjson.dumps(profile))
    return path


def test_a_profile_is_the_reference_of_every_window(tmp_path: Path) -> None:
    amounts, scores = uniform(14, 10.0, 100.0, 500), uniform(15, 0.0, 0.3, 500)
    path = write_profile(tmp_path, amounts, scores)
    reference = load_reference(str(path), PERIOD_S)
    assert reference.profile is not None
    state: dict[str, bytes] = {}
    agg = aggregator(state, reference)
    out = feed(
        agg,
        [
            partial(
                w(0),
                {"amount": amounts, "count_1h": [1.0, 2.0]},
                {"v1": scores, "v2": uniform(16, 0.7, 1, 99)},
            ),
            partial(w(1), {"amount": [x * 10 for x in amounts]}),
            partial(w(2)),
        ],
    )
    records = by_key(out)
    profile_ref = {"kind": "profile", "path": str(path), "count": 500}
    # The very first window already has a reference: the profile, not a previous period.
    first = records["feature", "amount", w(0)]
    assert (first["psi"], first["warning"], first["reference"]) == (0.0, False, profile_ref)
    shifted = records["feature", "amount", w(1)]
    assert shifted["warning"] is True and shifted["reference"] == profile_ref
    # A feature the profile does not have: nothing to compare with.
    unprofiled = records["feature", "count_1h", w(0)]
    assert (unprofiled["psi"], unprofiled["reference"], unprofiled["warning"]) == (None, None, False)
    # Every model version's scores compare with the profile's score.
    v1, v2 = records["pred", "v1", w(0)], records["pred", "v2", w(0)]
    assert (v1["psi"], v1["warning"], v1["reference"]) == (0.0, False, profile_ref)
    assert v2["warning"] is True and v2["reference"] == profile_ref
    # No previous periods are kept with a profile.
    assert not any(k.startswith("r|") for k in state)


def test_a_profile_without_a_score_has_no_score_reference(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_bytes(orjson.dumps({"features": {"amount": sketch_of([1.0, 2.0]).to_dict()}, "score": None}))
    agg = aggregator(reference=load_reference(str(path), PERIOD_S))
    records = by_key(feed(agg, [partial(w(0), {"amount": [1.0, 2.0]}, {"v": [0.5]}), partial(w(1))]))
    assert records["feature", "amount", w(0)]["psi"] == 0.0
    assert (records["pred", "v", w(0)]["psi"], records["pred", "v", w(0)]["reference"]) == (None, None)


def test_previous_is_not_a_file() -> None:
    reference = load_reference("previous", PERIOD_S)
    assert (reference.profile, reference.period_s) == (None, PERIOD_S)


def test_a_loader_reads_the_profile() -> None:
    raw = orjson.dumps({"features": {"amount": sketch_of([3.0]).to_dict()}})
    reference = Reference("s3://somewhere/profile.json", PERIOD_S, load=lambda spec: raw)
    assert reference.profile == {"amount": sketch_of([3.0])}


GOOD_SKETCH = sketch_of([1.0, 2.0]).to_dict()
BAD_PROFILES: list[bytes] = [
    b"",
    b"not json",
    b"\xff\xfe\x00",
    b"[]",
    b'"features"',
    b"null",
    b'{"features": []}',
    b'{"features": null}',
    b'{"features": {"amount": 5}}',
    b'{"features": {"amount": {}}}',
    orjson.dumps({"features": {"amount": {**GOOD_SKETCH, "alpha": 0.05}}}),
    orjson.dumps({"features": {"amount": {**GOOD_SKETCH, "count": 7}}}),
    orjson.dumps({"features": {"amount": {**GOOD_SKETCH, "pos": {"x": 1}}}}),
    orjson.dumps({"features": {"amount": {**GOOD_SKETCH, "min": []}}}),
    orjson.dumps({"features": {}, "score": "x"}),
    orjson.dumps({"features": {}, "score": {**GOOD_SKETCH, "min": None}}),
]


@pytest.mark.parametrize("raw", BAD_PROFILES)
def test_a_bad_profile_is_a_settings_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "profile.json"
    path.write_bytes(raw)
    with pytest.raises(SettingsError, match="DRIFT_REFERENCE="):
        load_reference(str(path), PERIOD_S)


def test_a_missing_or_unreadable_profile_is_a_settings_error(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "missing.json"), str(tmp_path), ""):
        with pytest.raises(SettingsError, match="DRIFT_REFERENCE="):
            load_reference(spec, PERIOD_S)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
sketch_like = st.fixed_dictionaries(
    {k: json_values for k in ("count", "nulls", "zero", "min", "max", "pos", "neg")},
    optional={"alpha": st.sampled_from([0.02, 0.05])},
)


@PROPERTY_SETTINGS
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries({"features": st.dictionaries(st.text(max_size=3), sketch_like | json_values)}),
        st.fixed_dictionaries({"features": st.just({}), "score": sketch_like | json_values}),
    )
)
def test_any_json_profile_loads_or_is_a_settings_error(obj: Any) -> None:
    raw = orjson.dumps(obj)
    try:
        reference = Reference("profile.json", PERIOD_S, load=lambda spec: raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # what load_reference turns into a SettingsError; anything else escapes it
    else:
        assert reference.profile is not None


# --------------------------------------------------------------------------- label quality


def bin_centre(b: int) -> float:
    return (b + 0.5) / SCORE_BINS


def labelled_predictions(seed: int, n: int) -> list[tuple[float, int]]:
    """(score at a bin centre, label): frauds score higher on the whole."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    bins = np.clip(rng.normal(60 + 80 * labels, 40), 0, SCORE_BINS - 1).astype(int)
    return [(bin_centre(int(b)), int(y)) for b, y in zip(bins, labels, strict=True)]


def pairwise_auc(pairs: Sequence[tuple[float, int]]) -> float:
    """P(a fraud scores above a non-fraud), ties 1/2: over every (fraud, non-fraud) pair, by brute force."""
    frauds = np.array([s for s, y in pairs if y == 1])[:, None]
    others = np.array([s for s, y in pairs if y == 0])[None, :]
    return float(np.mean((frauds > others) + 0.5 * (frauds == others)))


def expected_quality(pairs: Sequence[tuple[float, int]]) -> dict[str, Any]:
    flagged = [y for s, y in pairs if s >= THRESHOLD]
    positives = sum(y for _, y in pairs)
    labels = {y for _, y in pairs}
    return {
        "labelled": len(pairs),
        "positives": positives,
        "precision": sum(flagged) / len(flagged) if flagged else None,
        "recall": sum(flagged) / positives if positives else None,
        "auc": pairwise_auc(pairs) if len(labels) == 2 else None,
    }


def assert_quality(record: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    assert (record["labelled"], record["positives"]) == (want["labelled"], want["positives"])
    for measure in ("precision", "recall", "auc"):
        if want[measure] is None:
            assert record[measure] is None, measure
        else:
            assert record[measure] == pytest.approx(want[measure], abs=1e-12), measure


def label_for(version: str, scored_at: float, score: float, label: int) -> dict[str, Any]:
    """What a partition sends the aggregator for a joined label (through the real record functions)."""
    prediction = LoggedPrediction(
        score=score, model_version=version, event_time=scored_at - 1, scored_at=scored_at
    )
    joined: dict[str, Any] = orjson.loads(
        orjson.dumps(joined_label(Label("t", label, scored_at + 600), prediction, "t"))
    )
    return joined


def test_online_quality_per_model_version_and_hour() -> None:
    agg = aggregator()
    versions = {"v1": labelled_predictions(17, 400), "model 2": labelled_predictions(18, 150)}
    hours: dict[str, list[list[tuple[float, int]]]] = {}
    for version, pairs in versions.items():
        hours[version] = [[], [], []]
        for i, (score, label) in enumerate(pairs):
            hour = i % 3
            hours[version][hour].append((score, label))
            agg.on_label(label_for(version, BASE + hour * HOUR_S + (i * 7) % 3600, score, label))
    window = BASE + 3 * HOUR_S
    scored = uniform(19, 0.0, 1.0, 25)
    out = feed(agg, [partial(window, {"amount": [1.0]}, {"v1": scored}), partial(window + WINDOW_S)])
    records = by_key(out)
    assert sorted(k for k in records if k[0] == "pred") == [
        ("pred", "model 2", window),
        ("pred", "v1", window),
    ]
    for version, pairs in versions.items():
        record = records["pred", version, window]
        assert record["model_version"] == version
        assert record["prediction_threshold"] == THRESHOLD
        assert_quality(record, expected_quality(pairs))
        assert [h["hour_start"] for h in record["quality_by_hour"]] == [BASE + h * HOUR_S for h in range(3)]
        for by_hour, pairs_of_hour in zip(record["quality_by_hour"], hours[version], strict=True):
            assert_quality(by_hour, expected_quality(pairs_of_hour))
        assert_quality(agg.quality(version, window + WINDOW_S), expected_quality(pairs))
    # The version with labels but no scores in the window still gets its record, with no values.
    unscored = records["pred", "model 2", window]
    assert (unscored["count"], unscored["nulls"], unscored["psi"], unscored["warning"]) == (0, 0, None, False)
    assert records["pred", "v1", window]["count"] == 25


def test_quality_at_a_threshold_between_bins_rounds_up_to_the_bin_grid() -> None:
    agg = DriftAggregator(
        {},
        Reference("previous", PERIOD_S),
        psi_warn=PSI_WARN,
        min_count=1,
        label_wait_s=86400.0,
        threshold=0.501,
    )
    pairs = [(bin_centre(100), 1), (bin_centre(100), 0), (bin_centre(101), 1), (bin_centre(150), 0)]
    for score, label in pairs:  # bin 100 is [0.5, 0.505): below a threshold of 0.501 at bin resolution
        agg.on_label(label_for("v", BASE, score, label))
    quality = agg.quality("v", BASE + HOUR_S)
    assert (quality["precision"], quality["recall"]) == (1 / 2, 1 / 2)


def test_quality_of_a_version_without_labels() -> None:
    agg = aggregator()
    agg.on_label(label_for("other", BASE, 0.9, 1))
    quality = agg.quality("v", BASE + HOUR_S)
    assert quality == {
        "labelled": 0,
        "positives": 0,
        "precision": None,
        "recall": None,
        "auc": None,
        "prediction_threshold": THRESHOLD,
        "quality_by_hour": [],
    }
    assert agg.versions() == ["other"]


def test_quality_by_hour_lists_the_last_day_and_the_totals_cover_label_wait() -> None:
    agg = aggregator(label_wait_s=3 * 86400.0)
    agg.on_label(label_for("v", BASE + 10.0, 0.9, 1))  # hour 0
    agg.on_label(label_for("v", BASE + 5 * HOUR_S, 0.1, 0))  # hour 5
    agg.on_label(label_for("v", BASE + 20 * HOUR_S + 1.0, 0.8, 1))  # hour 20
    quality = agg.quality("v", BASE + 28 * HOUR_S + 120.0)  # hour 0 is more than 24 h ago, hour 5 is not
    assert (quality["labelled"], quality["positives"]) == (3, 2)
    assert [(h["hour_start"], h["labelled"]) for h in quality["quality_by_hour"]] == [
        (BASE + 5 * HOUR_S, 1),
        (BASE + 20 * HOUR_S, 1),
    ]


def test_quality_older_than_label_wait_is_pruned() -> None:
    label_wait_s = 2 * HOUR_S
    state: dict[str, bytes] = {}
    agg = aggregator(state, label_wait_s=label_wait_s)
    agg.on_label(label_for("old", BASE + 100.0, 0.9, 1))  # hour 0: labels may come until hour 3
    agg.on_label(label_for("new", BASE + HOUR_S + 100.0, 0.2, 0))  # hour 1: until hour 4
    kept_until = BASE + HOUR_S + label_wait_s  # the end of hour 0 plus LABEL_WAIT_S
    # Windows ending a minute before hour 3 and at hour 3: both hours are kept.
    feed(agg, [partial(kept_until - 2 * WINDOW_S), partial(kept_until - WINDOW_S)])
    assert agg.versions() == ["new", "old"]
    assert agg.quality("old", kept_until)["labelled"] == 1
    feed(agg, [partial(kept_until)])
    assert agg.versions() == ["new", "old"]
    # A window ending a minute after hour 3: hour 0 is gone, hour 1 stays.
    feed(agg, [partial(kept_until + WINDOW_S)])
    assert agg.versions() == ["new"]
    assert agg.quality("old", kept_until + WINDOW_S)["labelled"] == 0
    assert agg.quality("new", kept_until + WINDOW_S)["labelled"] == 1
    # With nothing labelled left for it, a version gets no record of a window it did not score.
    out = feed(agg, [partial(kept_until + 2 * WINDOW_S)])
    assert [(kind, key) for kind, key, _ in out] == [("pred", "new")]


def test_labels_keep_counting_across_a_restart() -> None:
    state: dict[str, bytes] = {}
    pairs = labelled_predictions(20, 60)
    for i, (score, label) in enumerate(pairs):
        agg = aggregator(state)  # a new aggregator object (as after a restart) on the same table
        agg.on_label(label_for("v", BASE + i, score, label))
    assert_quality(aggregator(state).quality("v", BASE + HOUR_S), expected_quality(pairs))


def test_label_counts_add_up_per_hour() -> None:
    agg = aggregator()
    scored_at = [BASE + s for s in (0.0, 3599.0, 3600.0, 7199.5, 7200.0, 10.0)]
    for t in scored_at:
        agg.on_label(label_for("v", t, 0.6, 1))
    hours = Counter(BASE + HOUR_S * ((t - BASE) // HOUR_S) for t in scored_at)
    quality = agg.quality("v", BASE + 3 * HOUR_S)
    assert [(h["hour_start"], h["labelled"]) for h in quality["quality_by_hour"]] == sorted(hours.items())


def test_a_fractional_window_gets_one_partial_per_ended_window() -> None:
    observer = DriftObserver(features=("amount",), window_s=0.1)
    observer.observe({"computed_at": 0.25, "amount": 1.0}, None, None)
    partials = observer.take_finished(0.35)
    assert [(p["window_start"], p["count"]) for p in partials] == [(window_start(0.25, 0.1), 1)]


def test_a_model_version_with_a_bar_gets_its_quality() -> None:
    agg = DriftAggregator(
        {}, Reference("previous", PERIOD_S), psi_warn=0.25, min_count=1, label_wait_s=86400.0, threshold=0.5
    )
    agg.on_label({"kind": "label", "model_version": "fraud|v2", "scored_at": BASE, "score": 0.9, "label": 1})
    window = {"kind": "partial", "window_s": WINDOW_S, "features": {}, "scores": {}}
    assert agg.on_partial({**window, "window_start": BASE + WINDOW_S}) == []
    out = agg.on_partial({**window, "window_start": BASE + 2 * WINDOW_S})
    assert [(kind, key, record["labelled"]) for kind, key, record in out] == [("pred", "fraud|v2", 1)]
