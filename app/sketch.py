"""Mergeable summaries for drift monitoring and online model quality. Pure (stdlib, numpy, orjson).

:class:`Sketch` summarises a stream of numbers (a feature, a score) in a few
hundred counters, whatever the stream's length. It is a DDSketch-style
quantile sketch: each value falls into a bucket whose bounds grow by a
constant factor ``GAMMA``, so any quantile it answers is within a relative
error of ``ALPHA`` (2 %) of the true one, for tiny and huge values alike.
Positive and negative values have their own buckets (negatives by their
magnitude), values within 1e-9 of zero share one counter, and missing values
(None, NaN, and the infinities, which no bucket can hold) are counted as
nulls rather than dropped. Two sketches merge by adding their counters, so a
sketch per worker, per partition or per hour adds up to the sketch of the
whole, and a sketch travels as plain JSON.

:func:`psi` compares a current sketch with a reference one (the training
data, say) by the Population Stability Index over bins that are the
reference's deciles, plus a bin for nulls. Both sides are binned from their
buckets by the same rule, so identical sketches give exactly 0.

:class:`ScoreQuality` keeps, for labelled predictions, one histogram of
scores for the frauds and one for the rest, over 200 equal bins on [0, 1].
Precision, recall and AUC follow from the two histograms at bin resolution,
and two of them merge by adding the histograms.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

#: The relative accuracy of Sketch's quantiles.
ALPHA = 0.02
#: The ratio of a bucket's upper bound to its lower bound.
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
#: Values whose magnitude is below this count as zero (one counter, no buckets).
ZERO_THRESHOLD = 1e-9
#: Quantiles reported by Sketch.summary, key -> q.
SUMMARY_QUANTILES: dict[str, float] = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.50,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}

_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.int64]


def _count_buckets(magnitudes: _FloatArray, into: dict[int, int]) -> None:
    """Add the bucket counts of positive magnitudes into ``into`` (bucket i holds (GAMMA^(i-1), GAMMA^i])."""
    if magnitudes.size == 0:
        return
    indices = np.ceil(np.log(magnitudes) / LOG_GAMMA).astype(np.int64)
    keys, counts = np.unique(indices, return_counts=True)
    for key, n in zip(keys.tolist(), counts.tolist(), strict=True):
        into[key] = into.get(key, 0) + n


def _representatives(indices: _IntArray) -> _FloatArray:
    """2 * GAMMA^i / (GAMMA + 1) per bucket index: within ALPHA of anything in the bucket; finite."""
    with np.errstate(over="ignore"):
        reps = 2.0 * np.power(GAMMA, indices.astype(np.float64)) / (GAMMA + 1.0)
    return np.minimum(reps, sys.float_info.max)


def _buckets(sketch: Sketch) -> tuple[_FloatArray, _IntArray]:
    """Every non-empty bucket's representative (unclamped, ascending) and count."""
    neg_keys = np.array(sorted(sketch.neg, reverse=True), dtype=np.int64)
    pos_keys = np.array(sorted(sketch.pos), dtype=np.int64)
    reps = np.concatenate(
        [-_representatives(neg_keys), np.zeros(1 if sketch.zero else 0), _representatives(pos_keys)]
    )
    counts = np.array(
        [sketch.neg[k] for k in neg_keys.tolist()]
        + ([sketch.zero] if sketch.zero else [])
        + [sketch.pos[k] for k in pos_keys.tolist()],
        dtype=np.int64,
    )
    return reps, counts


def _quantiles(sketch: Sketch, qs: Sequence[float], clamp: bool = True) -> list[float | None]:
    """The values of rank ceil(q * count) (at least 1), as numpy's method="inverted_cdf": each its
    bucket's representative, clamped to [min, max] if ``clamp``. None for all if there are no values."""
    if sketch.count == 0 or sketch.min is None or sketch.max is None:
        return [None] * len(qs)
    reps, counts = _buckets(sketch)
    cumulative = np.cumsum(counts)
    out: list[float | None] = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} is not in [0, 1]")
        rank = min(sketch.count, max(1, math.ceil(q * sketch.count)))
        rep = float(reps[int(np.searchsorted(cumulative, rank, side="left"))])
        out.append(min(max(rep, sketch.min), sketch.max) if clamp else rep)
    return out


@dataclass(slots=True)
class Sketch:
    """A mergeable quantile sketch with relative accuracy ALPHA; see the module docstring.

    ``pos`` and ``neg`` map a bucket index to a count (``neg`` by magnitude), ``zero``
    counts the values within ZERO_THRESHOLD of zero, ``nulls`` the None, NaN and
    infinite values, ``count`` the others; ``min`` and ``max`` are theirs (None if none).
    """

    pos: dict[int, int] = field(default_factory=dict)
    neg: dict[int, int] = field(default_factory=dict)
    zero: int = 0
    nulls: int = 0
    count: int = 0
    min: float | None = None
    max: float | None = None

    def add_many(self, values: Sequence[float | None]) -> None:
        """Add values (None, NaN and +-inf count as nulls), in one pass of numpy."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        finite = arr[np.isfinite(arr)]
        self.nulls += int(arr.size - finite.size)
        if finite.size == 0:
            return
        self.count += int(finite.size)
        low, high = float(finite.min()), float(finite.max())
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        positive = finite[finite >= ZERO_THRESHOLD]
        negative = -finite[finite <= -ZERO_THRESHOLD]
        self.zero += int(finite.size - positive.size - negative.size)
        _count_buckets(positive, self.pos)
        _count_buckets(negative, self.neg)

    def merge(self, other: Sketch) -> None:
        """Add ``other``'s counts to this sketch, in place."""
        for mine, theirs in ((self.pos, other.pos), (self.neg, other.neg)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        self.zero += other.zero
        self.nulls += other.nulls
        self.count += other.count
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
        if other.max is not None:
            self.max = other.max if self.max is None else max(self.max, other.max)

    def copy(self) -> Sketch:
        return Sketch(dict(self.pos), dict(self.neg), self.zero, self.nulls, self.count, self.min, self.max)

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the non-null values (None if there are none), within relative ALPHA.

        It is the value of rank ceil(q * count) (at least 1) in ascending order, as
        ``numpy.quantile(values, q, method="inverted_cdf")``, approximated by its bucket's
        representative clamped to [min, max]. Values within ZERO_THRESHOLD of zero come back as 0.
        """
        return _quantiles(self, [q])[0]

    def cdf(self, x: float) -> float | None:
        """The fraction of the non-null values <= x (None if there are none), at bucket resolution:
        a bucket counts when its representative, clamped to [min, max], is <= x."""
        if self.count == 0 or self.min is None or self.max is None:
            return None
        reps, counts = _buckets(self)
        below = np.clip(reps, self.min, self.max) <= x
        return int(counts[below].sum()) / self.count

    def summary(self) -> dict[str, Any]:
        """count, nulls, min, max and the SUMMARY_QUANTILES (None where there are no values)."""
        quantiles = _quantiles(self, list(SUMMARY_QUANTILES.values()))
        return {
            "count": self.count,
            "nulls": self.nulls,
            "min": self.min,
            "max": self.max,
            **dict(zip(SUMMARY_QUANTILES, quantiles, strict=True)),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (bucket indices as strings) that from_dict reads back exactly."""
        return {
            "alpha": ALPHA,
            "count": self.count,
            "nulls": self.nulls,
            "zero": self.zero,
            "min": self.min,
            "max": self.max,
            "pos": {str(k): n for k, n in self.pos.items()},
            "neg": {str(k): n for k, n in self.neg.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sketch:
        """The sketch of a to_dict dict. ValueError if it was made with another ALPHA or is inconsistent."""
        if d.get("alpha") != ALPHA:
            raise ValueError(f"sketch made with alpha {d.get('alpha')!r}, this module uses {ALPHA}")
        sketch = cls(
            pos={int(k): int(n) for k, n in d["pos"].items()},
            neg={int(k): int(n) for k, n in d["neg"].items()},
            zero=int(d["zero"]),
            nulls=int(d["nulls"]),
            count=int(d["count"]),
            min=None if d["min"] is None else float(d["min"]),
            max=None if d["max"] is None else float(d["max"]),
        )
        if sketch.count != sketch.zero + sum(sketch.pos.values()) + sum(sketch.neg.values()):
            raise ValueError("sketch count does not match its buckets")
        if (sketch.count == 0) != (sketch.min is None) or (sketch.count == 0) != (sketch.max is None):
            raise ValueError("sketch min/max do not match its count")
        return sketch


def _bin_proportions(sketch: Sketch, edges: _FloatArray, null_bin: bool) -> _FloatArray:
    """The fraction of ``sketch``'s values per bin: bin j holds edges[j-1] < v <= edges[j] by bucket
    representative (unclamped, so the same bucket lands in the same bin on both sides); then nulls."""
    reps, counts = _buckets(sketch)
    bins = np.searchsorted(edges, reps, side="left")
    values = np.bincount(bins, weights=counts.astype(np.float64), minlength=edges.size + 1)
    totals = np.append(values, float(sketch.nulls)) if null_bin else values
    return totals / float(sketch.count + sketch.nulls)


def psi(current: Sketch, reference: Sketch, bins: int = 10, epsilon: float = 1e-4) -> float | None:
    """The Population Stability Index of ``current`` against ``reference``; None if either has no values.

    The bins are cut at the reference's quantiles 1/bins, ..., (bins-1)/bins (bucket representatives,
    duplicates merged), plus a bin for nulls when either side has some. With p the reference's
    and q the current's proportions per bin, both floored at ``epsilon``,
    PSI = sum((q - p) * ln(q / p)). Rule of thumb: < 0.1 stable, 0.1-0.25 some shift, > 0.25 a shift.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    if current.count + current.nulls == 0 or reference.count + reference.nulls == 0:
        return None
    cuts = [i / bins for i in range(1, bins)]
    edge_values = [e for e in _quantiles(reference, cuts, clamp=False) if e is not None]
    edges = np.unique(np.array(edge_values, dtype=np.float64))
    null_bin = current.nulls > 0 or reference.nulls > 0
    p = np.maximum(_bin_proportions(reference, edges, null_bin), epsilon)
    q = np.maximum(_bin_proportions(current, edges, null_bin), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


#: The number of equal-width score bins of ScoreQuality on [0, 1].
SCORE_BINS = 200
_LOWER_EDGES = [b / SCORE_BINS for b in range(SCORE_BINS)]


def _score_bin(score: float) -> int:
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score {score!r} is not in [0, 1]")
    return min(int(score * SCORE_BINS), SCORE_BINS - 1)


@dataclass(slots=True)
class ScoreQuality:
    """Histograms of the scores of labelled predictions, frauds (label 1) and the rest (label 0).

    Bin b holds the scores in [b / SCORE_BINS, (b + 1) / SCORE_BINS), the last one also 1.0.
    Thresholds work at bin resolution: a bin counts as predicted fraud when its lower
    edge is >= the threshold, so a threshold is in effect rounded up to the bin grid
    (0.5 and 0.4999 both mean "score >= 0.5"; 0.501 means "score >= 0.505"), and a
    threshold above the last bin's lower edge, 1.0 included, flags nothing.
    """

    positive: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    negative: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)

    def add(self, score: float, label: int) -> None:
        """One prediction's score (in [0, 1]) and its label (0 or 1)."""
        b = _score_bin(score)
        if label == 1:
            self.positive[b] += 1
        elif label == 0:
            self.negative[b] += 1
        else:
            raise ValueError(f"label {label!r} is not 0 or 1")

    def merge(self, other: ScoreQuality) -> None:
        """Add ``other``'s histograms to this one, in place."""
        for b in range(SCORE_BINS):
            self.positive[b] += other.positive[b]
            self.negative[b] += other.negative[b]

    @property
    def positives(self) -> int:
        return sum(self.positive)

    @property
    def negatives(self) -> int:
        return sum(self.negative)

    @property
    def labelled(self) -> int:
        return self.positives + self.negatives

    def _flagged(self, threshold: float) -> tuple[int, int]:
        """(true positives, false positives) for "fraud when score >= threshold", at bin resolution."""
        first = bisect_left(_LOWER_EDGES, threshold)
        return sum(self.positive[first:]), sum(self.negative[first:])

    def precision(self, threshold: float) -> float | None:
        """Frauds among the predictions flagged at ``threshold``; None if none is flagged."""
        tp, fp = self._flagged(threshold)
        return tp / (tp + fp) if tp + fp else None

    def recall(self, threshold: float) -> float | None:
        """Flagged at ``threshold`` among the frauds; None if there are no frauds."""
        tp, _ = self._flagged(threshold)
        positives = self.positives
        return tp / positives if positives else None

    def auc(self) -> float | None:
        """The chance a random fraud scores above a random non-fraud, ties (same bin) counting 1/2:
        the Mann-Whitney statistic of the binned scores. None unless both labels are present."""
        positives, negatives = self.positives, self.negatives
        if not positives or not negatives:
            return None
        twice_u = 0  # exact integer arithmetic, one division at the end
        negatives_below = 0
        for pos, neg in zip(self.positive, self.negative, strict=True):
            twice_u += pos * (2 * negatives_below + neg)
            negatives_below += neg
        return twice_u / (2 * positives * negatives)

    def summary(self, threshold: float) -> dict[str, Any]:
        """labelled, positives, precision and recall at ``threshold``, and auc."""
        return {
            "labelled": self.labelled,
            "positives": self.positives,
            "precision": self.precision(threshold),
            "recall": self.recall(threshold),
            "auc": self.auc(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"bins": SCORE_BINS, "positive": list(self.positive), "negative": list(self.negative)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreQuality:
        """The ScoreQuality of a to_dict dict; ValueError if it has another number of bins."""
        positive = [int(n) for n in d["positive"]]
        negative = [int(n) for n in d["negative"]]
        if d.get("bins") != SCORE_BINS or len(positive) != SCORE_BINS or len(negative) != SCORE_BINS:
            raise ValueError(f"score histograms of {d.get('bins')!r} bins, this module uses {SCORE_BINS}")
        return cls(positive, negative)
