"""Properties of app/sketch.py against exact answers: numpy's quantiles, scikit-learn's AUC, direct counts.

Sketch: quantiles within relative ALPHA of numpy's ``inverted_cdf`` quantiles, cdf
within the bucket bounds, merge equal to the sketch of the concatenation, exact JSON
round trips, nulls counted. psi: 0 for identical sketches, large for a shifted
sample, small for a second sample of the same distribution. ScoreQuality: AUC,
precision and recall exact on scores at bin centres, merge equal to adding both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from app.sketch import ALPHA, SCORE_BINS, ScoreQuality, Sketch, psi

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)
# Relative slack for float rounding: a value on a bucket boundary is exactly ALPHA away.
TOLERANCE = ALPHA * (1 + 1e-9)

magnitudes = st.floats(min_value=1e-3, max_value=1e9)
values = st.one_of(magnitudes, magnitudes.map(lambda x: -x), st.just(0.0))
# A few values repeated often, so that ranks fall inside runs of ties.
tied_values = st.sampled_from([-1e6, -3.5, 0.0, 1e-3, 1.0, 1.0001, 42.0, 1e9])
value_lists = st.lists(st.one_of(values, tied_values), min_size=1, max_size=300)
nullable_lists = st.lists(st.one_of(values, tied_values, st.none(), st.just(math.nan)), max_size=300)


def sketch_of(xs: Sequence[float | None]) -> Sketch:
    sketch = Sketch()
    sketch.add_many(xs)
    return sketch


def exact_quantile(xs: list[float], q: float) -> float:
    return float(np.quantile(np.array(xs, dtype=np.float64), q, method="inverted_cdf"))


@PROPERTY_SETTINGS
@given(value_lists, st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=10), st.data())
def test_quantiles_are_within_alpha_of_numpy(xs: list[float], qs: list[float], data: st.DataObject) -> None:
    nulls = data.draw(st.lists(st.sampled_from([None, math.nan]), max_size=5))
    sketch = sketch_of([*xs, *nulls])
    for q in [0.0, 1.0, *qs]:
        got = sketch.quantile(q)
        want = exact_quantile(xs, q)
        assert got is not None
        assert abs(got - want) <= TOLERANCE * abs(want), (q, got, want)
        assert min(xs) <= got <= max(xs)


def test_summary_quantiles_on_a_large_sample() -> None:
    rng = np.random.default_rng(20240501)
    xs = np.concatenate([rng.lognormal(2.0, 3.0, 50_000), -rng.lognormal(0.0, 1.0, 10_000), np.zeros(500)])
    sketch = sketch_of([*xs.tolist(), None, None])
    summary = sketch.summary()
    assert (summary["count"], summary["nulls"]) == (60_500, 2)
    assert (summary["min"], summary["max"]) == (float(xs.min()), float(xs.max()))
    for key, q in [("p01", 0.01), ("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95)]:
        want = exact_quantile(xs.tolist(), q)
        assert abs(summary[key] - want) <= TOLERANCE * abs(want), key
    assert summary["p99"] == sketch.quantile(0.99)


@PROPERTY_SETTINGS
@given(value_lists, st.one_of(values, tied_values), st.floats(min_value=0.0, max_value=1.0))
def test_cdf_is_within_the_bucket_bounds(xs: list[float], x: float, q: float) -> None:
    sketch = sketch_of(xs)
    arr = np.array(xs)
    got = sketch.cdf(x)
    assert got is not None
    # A value at least ALPHA * |v| below x is counted; one at least that far above is not.
    assert np.mean(arr + TOLERANCE * np.abs(arr) <= x) <= got <= np.mean(arr - TOLERANCE * np.abs(arr) <= x)
    assert sketch.cdf(max(xs)) == 1.0
    assert sketch.cdf(math.nextafter(min(xs), -math.inf)) == 0.0
    quantile = sketch.quantile(q)
    assert quantile is not None
    at_quantile = sketch.cdf(quantile)
    assert at_quantile is not None and at_quantile >= q - 1e-12


@PROPERTY_SETTINGS
@given(nullable_lists, nullable_lists)
def test_merge_is_the_sketch_of_the_concatenation(a: list[float | None], b: list[float | None]) -> None:
    left, right = sketch_of(a), sketch_of(b)
    merged = left.copy()
    merged.merge(right)
    whole = sketch_of(a + b)
    assert merged == whole
    assert (merged.pos, merged.neg) == (whole.pos, whole.neg)
    assert left == sketch_of(a), "copy() shares state with the original"
    other_way = right.copy()
    other_way.merge(left)
    assert other_way == whole


@PROPERTY_SETTINGS
@given(nullable_lists)
def test_json_round_trip_is_exact(xs: list[float | None]) -> None:
    sketch = sketch_of(xs)
    back = Sketch.from_dict(orjson.loads(orjson.dumps(sketch.to_dict())))
    assert back == sketch
    assert orjson.dumps(back.to_dict()) == orjson.dumps(sketch.to_dict())
    assert back.summary() == sketch.summary()


def test_from_dict_rejects_other_alphas_and_inconsistent_counts() -> None:
    good = sketch_of([1.0, 2.0, -3.0]).to_dict()
    with pytest.raises(ValueError, match="alpha"):
        Sketch.from_dict({**good, "alpha": 0.01})
    with pytest.raises(ValueError, match="count"):
        Sketch.from_dict({**good, "count": 4})
    with pytest.raises(ValueError, match="min/max"):
        Sketch.from_dict({**good, "min": None})


def test_none_nan_and_infinities_are_nulls_and_tiny_values_zero() -> None:
    sketch = sketch_of([None, math.nan, 1.0, 0.0, -2.0, 5e-10, math.inf, -math.inf])
    assert (sketch.count, sketch.nulls, sketch.zero) == (4, 4, 2)
    assert (sum(sketch.pos.values()), sum(sketch.neg.values())) == (1, 1)
    assert (sketch.min, sketch.max) == (-2.0, 1.0)
    summary = sketch.summary()
    assert (summary["count"], summary["nulls"], summary["min"], summary["max"]) == (4, 4, -2.0, 1.0)
    assert sketch.quantile(0.5) == 0.0


def test_empty_and_all_null_sketches_have_no_quantiles() -> None:
    for sketch in (Sketch(), sketch_of([]), sketch_of([None, math.nan])):
        assert sketch.quantile(0.5) is None
        assert sketch.cdf(0.0) is None
        assert sketch.count == 0
        summary = sketch.summary()
        assert all(summary[k] is None for k in ("min", "max", "p01", "p50", "p99"))
    assert sketch_of([None, math.nan]).nulls == 2
    with pytest.raises(ValueError, match="quantile"):
        sketch_of([1.0]).quantile(1.5)


@PROPERTY_SETTINGS
@given(nullable_lists, nullable_lists, st.integers(min_value=1, max_value=20))
def test_psi_is_zero_for_identical_sketches_and_never_negative(
    a: list[float | None], b: list[float | None], bins: int
) -> None:
    left, right = sketch_of(a), sketch_of(b)
    if not a:
        assert psi(left, left) is None
        return
    assert psi(left, left.copy(), bins=bins) == 0.0
    result = psi(left, right, bins=bins)
    if b:
        assert result is not None and result >= 0.0
    else:
        assert result is None


def lognormal_sketch(seed: int, scale: float = 1.0, n: int = 5000) -> Sketch:
    return sketch_of((np.random.default_rng(seed).lognormal(0.0, 1.0, n) * scale).tolist())


def test_psi_flags_a_threefold_shift() -> None:
    result = psi(lognormal_sketch(1, scale=3.0), lognormal_sketch(2))
    assert result is not None and result > 0.25


def test_psi_is_small_for_two_samples_of_one_distribution() -> None:
    for seed in range(3, 8):
        result = psi(lognormal_sketch(seed), lognormal_sketch(seed + 100))
        assert result is not None and result < 0.05


def test_psi_counts_nulls_in_a_bin_of_their_own() -> None:
    rng = np.random.default_rng(11)
    reference = sketch_of(rng.lognormal(0.0, 1.0, 5000).tolist())
    sample = rng.lognormal(0.0, 1.0, 5000).tolist()
    with_nulls = sketch_of([None if i % 5 == 0 else x for i, x in enumerate(sample)])
    without = psi(sketch_of(sample), reference)
    assert without is not None and without < 0.05
    result = psi(with_nulls, reference)
    assert result is not None and result > 0.25
    assert psi(sketch_of([None] * 10), sketch_of([None] * 3)) == 0.0
    assert psi(Sketch(), reference) is None
    with pytest.raises(ValueError, match="bins"):
        psi(reference, reference, bins=0)


labelled_bins = st.lists(
    st.tuples(
        st.one_of(st.integers(min_value=0, max_value=SCORE_BINS - 1), st.sampled_from([0, 99, 100, 199])),
        st.integers(min_value=0, max_value=1),
    ),
    max_size=300,
)


def centres(pairs: list[tuple[int, int]]) -> tuple[list[float], list[int]]:
    return [(b + 0.5) / SCORE_BINS for b, _ in pairs], [label for _, label in pairs]


def quality_of(scores: list[float], labels: list[int]) -> ScoreQuality:
    quality = ScoreQuality()
    for score, label in zip(scores, labels, strict=True):
        quality.add(score, label)
    return quality


@PROPERTY_SETTINGS
@given(labelled_bins)
def test_auc_matches_scikit_learn_on_bin_centres(pairs: list[tuple[int, int]]) -> None:
    scores, labels = centres(pairs)
    assume(0 in labels and 1 in labels)
    auc = quality_of(scores, labels).auc()
    assert auc is not None
    assert abs(auc - float(roc_auc_score(labels, scores))) <= 1e-9


@PROPERTY_SETTINGS
@given(labelled_bins, st.integers(min_value=0, max_value=SCORE_BINS))
def test_precision_and_recall_match_a_direct_count(pairs: list[tuple[int, int]], edge: int) -> None:
    scores, labels = centres(pairs)
    quality = quality_of(scores, labels)
    threshold = edge / SCORE_BINS
    flagged = [label for score, label in zip(scores, labels, strict=True) if score >= threshold]
    frauds = sum(labels)
    assert quality.precision(threshold) == (sum(flagged) / len(flagged) if flagged else None)
    assert quality.recall(threshold) == (sum(flagged) / frauds if frauds else None)
    counts = (quality.labelled, quality.positives, quality.negatives)
    assert counts == (len(labels), frauds, len(labels) - frauds)
    if edge > 0:  # a threshold between two bin edges is rounded up to the next edge
        below = threshold - 0.3 / SCORE_BINS
        assert (quality.precision(below), quality.recall(below)) == (
            quality.precision(threshold),
            quality.recall(threshold),
        )
    summary = quality.summary(threshold)
    assert summary == {
        "labelled": len(labels),
        "positives": frauds,
        "precision": quality.precision(threshold),
        "recall": quality.recall(threshold),
        "auc": quality.auc(),
    }


@PROPERTY_SETTINGS
@given(labelled_bins, labelled_bins)
def test_score_quality_merge_is_adding_both(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    left, right = quality_of(*centres(a)), quality_of(*centres(b))
    merged = ScoreQuality.from_dict(orjson.loads(orjson.dumps(left.to_dict())))
    assert merged == left
    merged.merge(right)
    assert merged == quality_of(*centres(a + b))
    assert left == quality_of(*centres(a)), "from_dict shares state with the original"


def test_score_quality_edges_and_invalid_input() -> None:
    quality = quality_of([0.0, 1.0, 1.0, 0.5], [0, 1, 1, 0])
    assert quality.negative[0] == 1 and quality.positive[SCORE_BINS - 1] == 2
    assert quality.negative[SCORE_BINS // 2] == 1
    assert quality.auc() == 1.0
    last_edge = (SCORE_BINS - 1) / SCORE_BINS
    assert quality.precision(last_edge) == 1.0 and quality.recall(last_edge) == 1.0
    assert quality.precision(1.0) is None and quality.recall(1.0) == 0.0  # no bin starts at 1.0
    assert quality.precision(1.5) is None and quality.recall(1.5) == 0.0
    assert quality.precision(0.0) == 0.5 and quality.recall(-1.0) == 1.0
    only_frauds = quality_of([0.2, 0.9], [1, 1])
    assert only_frauds.auc() is None and ScoreQuality().recall(0.5) is None
    for score, label in [(1.01, 1), (-0.01, 0), (math.nan, 1), (0.5, 2)]:
        with pytest.raises(ValueError):
            quality.add(score, label)
    with pytest.raises(ValueError, match="bins"):
        ScoreQuality.from_dict({"bins": 100, "positive": [0] * 100, "negative": [0] * 100})
