"""The fraud model: its arithmetic against scikit-learn, its file, its loading, training on an export."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression

from app.drift import DriftAggregator, load_reference
from app.scoring import INPUTS, LogisticModel, ModelError, load_scorer, model_inputs, prediction_value
from app.train import TrainError, fit, profile
from records.errors import SettingsError


def record(rng: random.Random, fraud: bool) -> dict[str, Any]:
    """A SPEC 4 record: fraud is bursty (many merchants in the hour, large amounts, seconds apart)."""
    n1 = rng.randint(3, 15) if fraud else rng.randint(1, 3)
    amount = rng.uniform(200, 900) if fraud else rng.uniform(5, 120)
    return {
        "user_id": f"u{rng.randrange(50)}",
        "transaction_id": f"t{rng.randrange(10**9)}",
        "event_time": rng.uniform(0, 1e6),
        "computed_at": 5.0,
        "current_amount": amount,
        "tx_count_1h": n1,
        "tx_count_24h": n1 + rng.randint(0, 10),
        "total_amount_1h": amount * n1,
        "total_amount_24h": amount * n1 + rng.uniform(0, 500),
        "avg_amount_24h": amount,
        "max_amount_24h": amount * 1.2,
        "unique_merchants_1h": n1 if fraud else 1,
        "unique_merchants_24h": n1 + 1,
        "seconds_since_last_tx": rng.uniform(1, 60)
        if fraud
        else (None if rng.random() < 0.1 else rng.uniform(600, 86400)),
        "amount_zscore_24h": None if rng.random() < 0.2 else rng.gauss(2.0 if fraud else 0.0, 1.0),
        "is_online": rng.random() < (0.8 if fraud else 0.3),
    }


def test_scores_are_scikit_learns_probabilities() -> None:
    rng = random.Random(3)
    rows = [record(rng, rng.random() < 0.1) for _ in range(600)]
    x = np.array([[0.0 if v is None else v for v in model_inputs(r)] for r in rows])
    y = np.array([1 if r["tx_count_1h"] > 3 or r["current_amount"] > 150 else 0 for r in rows])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    clf = LogisticRegression(max_iter=1000).fit((x - mean) / scale, y)
    model = LogisticModel(
        "t",
        tuple(INPUTS),
        tuple(INPUTS.values()),
        tuple(map(float, mean)),
        tuple(map(float, scale)),
        tuple(map(float, clf.coef_[0])),
        float(clf.intercept_[0]),
    )
    want = clf.predict_proba((x - mean) / scale)[:, 1]
    complete = [r | {k: (0.0 if v is None else v) for k, v in r.items()} for r in rows]
    got = [model.score(r) for r in complete]
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 1e-12
    # A missing input counts as the mean: no contribution.
    assert model.score({}) == pytest.approx(1 / (1 + math.exp(-model.intercept)), abs=1e-15)
    # The file round trip keeps every score.
    again = LogisticModel.from_json(model.to_json(), "test")
    assert [again.score(r) for r in complete] == got


def test_extreme_inputs_stay_probabilities() -> None:
    model = LogisticModel("t", ("current_amount",), ("log1p",), (0.0,), (1e-3,), (50.0,), 0.0)
    assert model.score({"current_amount": 1e12}) == 1.0
    assert 0.0 <= model.score({"current_amount": -5.0}) <= 1.0
    negative = LogisticModel("t", ("current_amount",), ("log1p",), (30.0,), (1e-3,), (50.0,), 0.0)
    assert negative.score({"current_amount": 0.0}) == 0.0


def test_training_on_an_export_learns_the_fraud(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(3000):
        fraud = rng.random() < 0.05
        r = record(rng, fraud)
        r["label"] = 1 if fraud else (None if rng.random() < 0.9 else 0)  # mostly unlabelled: legitimate
        rows.append(r)
    model, figures = fit(rows, test_share=0.25)
    assert figures["train_rows"] + figures["test_rows"] == 3000
    assert figures["test_auc"] > 0.95, figures
    path = tmp_path / "m.json"
    path.write_bytes(model.to_json(figures=figures))
    scorer = load_scorer(str(path))
    assert scorer.version == model.version and scorer.version.startswith("logreg-")
    fraud_scores = [scorer.score(r) for r in rows if r["label"] == 1]
    other_scores = [scorer.score(r) for r in rows if r["label"] != 1]
    assert sum(fraud_scores) / len(fraud_scores) > 0.8 > 0.2 > sum(other_scores) / len(other_scores)
    with pytest.raises(TrainError, match="both labels"):
        fit([r | {"label": None} for r in rows], test_share=0.2)


def test_the_bundled_model_loads_and_scores() -> None:
    scorer = load_scorer("bundled")
    rng = random.Random(9)
    assert 0.0 <= scorer.score(record(rng, True)) <= 1.0
    assert scorer.score(record(rng, True)) > scorer.score(record(rng, False))


def scale_by_two(features: dict[str, Any]) -> float:
    return 0.25


scale_by_two.model_version = "quarter-v1"  # type: ignore[attr-defined]


def test_models_by_name_and_their_errors(tmp_path: Path) -> None:
    scorer = load_scorer("tests.agent.test_scoring:scale_by_two")
    assert (scorer.version, scorer.score({})) == ("quarter-v1", 0.25)
    bad = tmp_path / "bad.json"
    for content in (b"{", b"[]", b'{"format": "other"}', b'{"format": "velocity-logistic-v1"}'):
        bad.write_bytes(content)
        with pytest.raises(ModelError) as err:
            load_scorer(str(bad))
        assert "\n" not in str(err.value) and "bad.json" in str(err.value)
    for spec, words in (
        ("no/such/file.json", "cannot read"),
        ("no_such_module:f", "cannot import"),
        ("math:pi", "not callable"),
    ):
        with pytest.raises(ModelError, match=words):
            load_scorer(spec)


def test_the_prediction_record() -> None:
    features = {"transaction_id": "t1", "user_id": "u1", "computed_at": 10.5, "tx_count_1h": 1}
    assert prediction_value(features, 0.25, "v1", 11.0) == {
        "transaction_id": "t1",
        "user_id": "u1",
        "score": 0.25,
        "model_version": "v1",
        "features_at": 10.5,
        "scored_at": 11.0,
    }


def test_a_training_profile_is_a_frozen_drift_reference(tmp_path: Path) -> None:
    """``train --profile``: the training rows' sketches, which DRIFT_REFERENCE=<file> compares with."""
    rng = random.Random(9)
    rows = [record(rng, rng.random() < 0.05) | {"label": None} for _ in range(4000)]
    for r in rows[:200]:
        r["label"] = 1 if r["unique_merchants_1h"] > 1 else 0
    rows[0]["label"] = 1
    model, _ = fit(rows, test_share=0.0)
    path = tmp_path / "profile.json"
    path.write_bytes(orjson.dumps(profile(rows, model, "export.parquet")))
    reference = load_reference(str(path), 86400)
    assert reference.profile is not None
    assert reference.profile["current_amount"].count == len(rows)
    assert reference.profile["seconds_since_last_tx"].nulls == sum(
        r["seconds_since_last_tx"] is None for r in rows
    )
    assert reference.profile["score"].count == len(rows)
    aggregator = DriftAggregator({}, reference, psi_warn=0.2, min_count=100, label_wait_s=1e6, threshold=0.5)

    def window(start: float, factor: float) -> dict[str, Any]:
        fresh = [record(rng, rng.random() < 0.05) for _ in range(2000)]
        from app.sketch import Sketch

        amounts = Sketch()
        amounts.add_many([r["current_amount"] * factor for r in fresh])
        return {
            "window_start": start,
            "window_s": 60.0,
            "features": {"current_amount": amounts.to_dict()},
            "scores": {},
        }

    assert aggregator.on_partial(window(0.0, 1.0)) == []  # published when a later window begins
    ((_, _, same),) = aggregator.on_partial(window(60.0, 3.0))  # window 0
    ((_, _, shifted),) = aggregator.on_partial(window(120.0, 1.0))  # window 60
    assert same["reference"] == {"kind": "profile", "path": str(path), "count": len(rows)}
    assert same["psi"] < 0.1 and not same["warning"]
    assert shifted["psi"] > 0.25 and shifted["warning"]
    with pytest.raises(SettingsError, match="DRIFT_REFERENCE"):
        load_reference(str(tmp_path / "missing.json"), 86400)
