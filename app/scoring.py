"""Fraud scores for feature records (SPEC 10): the model, its file, and the prediction record. Pure.

The default model is a logistic regression trained by ``faust -A app train``
(scikit-learn) and stored as JSON: per input, the transform, mean and scale
of the standardisation and the coefficient. Scoring is plain arithmetic on
the SPEC 4 record, a few microseconds, so it runs on the hot path next to
the feature computation, and :func:`model_inputs` is the one definition of
the inputs that training and scoring share. A model can also be any Python
callable (``MODEL=module:callable``) taking the record's dict and returning a
probability.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import exp, log1p
from pathlib import Path
from typing import Any

import orjson

from records.errors import VelocityError

MODEL_FORMAT = "velocity-logistic-v1"

#: The model's inputs: name in the SPEC 4 record -> transform. Amounts, counts and gaps are
#: heavy-tailed, so they enter as log1p; the z-score and the online flag as they are.
INPUTS: dict[str, str] = {
    "current_amount": "log1p",
    "tx_count_1h": "log1p",
    "tx_count_24h": "log1p",
    "total_amount_1h": "log1p",
    "total_amount_24h": "log1p",
    "avg_amount_24h": "log1p",
    "max_amount_24h": "log1p",
    "unique_merchants_1h": "log1p",
    "unique_merchants_24h": "log1p",
    "seconds_since_last_tx": "log1p",
    "amount_zscore_24h": "identity",
    "is_online": "identity",
}


class ModelError(VelocityError):
    """The model named by MODEL cannot be loaded: one line, at start."""


def _value(raw: Any, transform: str) -> float | None:
    if raw is None:
        return None
    x = float(raw)
    if transform == "log1p":
        return math.log1p(max(x, 0.0))
    return x


def model_inputs(features: Mapping[str, Any]) -> list[float | None]:
    """The model's input vector of one record (None where the record has no value)."""
    return [_value(features.get(name), transform) for name, transform in INPUTS.items()]


@dataclass(frozen=True, slots=True)
class LogisticModel:
    version: str
    names: tuple[str, ...]
    transforms: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    _terms: tuple[tuple[str, bool, float, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Per input: (name, log1p?, mean, coef / scale): the hot path's loop, computed once.
        terms = tuple(
            (name, transform == "log1p", mean, coef / scale)
            for name, transform, mean, scale, coef in zip(
                self.names, self.transforms, self.mean, self.scale, self.coef, strict=True
            )
        )
        object.__setattr__(self, "_terms", terms)

    def score(self, features: Mapping[str, Any]) -> float:
        """P(fraud) for one record; a missing input counts as the training mean."""
        z = self.intercept
        get = features.get
        for name, log, mean, weight in self._terms:
            raw = get(name)
            if raw is not None:
                x = float(raw)
                if log:
                    x = log1p(x if x > 0.0 else 0.0)
                z += weight * (x - mean)
        if z >= 0:
            return 1.0 / (1.0 + exp(-z))
        e = exp(z)
        return e / (1.0 + e)

    def to_json(self, **extra: Any) -> bytes:
        return orjson.dumps(
            {
                "format": MODEL_FORMAT,
                "model_version": self.version,
                "inputs": [
                    {"name": n, "transform": t, "mean": m, "scale": s, "coef": c}
                    for n, t, m, s, c in zip(
                        self.names, self.transforms, self.mean, self.scale, self.coef, strict=True
                    )
                ],
                "intercept": self.intercept,
                **extra,
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> LogisticModel:
        try:
            body = orjson.loads(raw)
            if body.get("format") != MODEL_FORMAT:
                raise ModelError(f"{where}: not a {MODEL_FORMAT} model file (format {body.get('format')!r})")
            inputs = body["inputs"]
            for item in inputs:
                if item["transform"] not in ("log1p", "identity") or not float(item["scale"]) > 0:
                    raise ModelError(f"{where}: input {item['name']!r} has a bad transform or scale")
            return cls(
                version=str(body["model_version"]),
                names=tuple(str(i["name"]) for i in inputs),
                transforms=tuple(str(i["transform"]) for i in inputs),
                mean=tuple(float(i["mean"]) for i in inputs),
                scale=tuple(float(i["scale"]) for i in inputs),
                coef=tuple(float(i["coef"]) for i in inputs),
                intercept=float(body["intercept"]),
            )
        except ModelError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{where}: unreadable model file ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True, slots=True)
class Scorer:
    """What the hot path calls: ``score(record) -> probability``, and the version it reports."""

    version: str
    score: Callable[[Mapping[str, Any]], float]


#: The model shipped with Velocity: trained by ``faust -A app train`` on simulated traffic.
BUNDLED_MODEL = Path(__file__).with_name("models") / "fraud-logreg.json"


def load_scorer(spec: str) -> Scorer:
    """``MODEL``: ``bundled``, a model file written by ``faust -A app train``, or ``module:callable``."""
    if spec == "bundled":
        path = BUNDLED_MODEL
    elif ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"MODEL={spec!r}: cannot import it ({exc})") from None
        if not callable(target):
            raise ModelError(f"MODEL={spec!r} is not callable")
        return Scorer(str(getattr(target, "model_version", spec)), target)
    else:
        path = Path(spec)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"MODEL={spec!r}: cannot read {str(path)!r} ({exc.strerror})") from None
    model = LogisticModel.from_json(raw, f"MODEL={spec!r}")
    return Scorer(model.version, model.score)


def prediction_value(
    features: Mapping[str, Any], score: float, model_version: str, scored_at_s: float
) -> dict[str, Any]:
    """The ``predictions.fraud`` record of one feature record (SPEC 10)."""
    return {
        "transaction_id": features["transaction_id"],
        "user_id": features["user_id"],
        "score": score,
        "model_version": model_version,
        "features_at": features["computed_at"],
        "scored_at": scored_at_s,
    }
