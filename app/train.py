"""``faust -A app train``: a logistic fraud model from a training-set export (SPEC 10).

Reads a file written by ``faust -A app export`` with labels, builds each
row's inputs with :func:`app.scoring.model_inputs` (the very function the hot
path scores with), fits scikit-learn's ``LogisticRegression`` on
standardised inputs (class-balanced: fraud is rare), and writes a model file
that ``MODEL=<file>`` loads; the hot path then scores with plain arithmetic.
A missing input is imputed with the training mean, as scoring does. A share
of the rows (``--test-share``, the latest by event time, so the test is
"the future") is held out: its AUC, precision and recall are printed and
stored in the file.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faust.cli import option

from app.main import app
from app.scoring import INPUTS, LogisticModel, model_inputs
from app.settings import DRIFT_FEATURES
from app.sketch import Sketch

PROFILE_FORMAT = "velocity-drift-profile-v1"

#: Rows without a label are legitimate: a chargeback-driven feed reports fraud only.
UNLABELLED_AS = 0


class TrainError(Exception):
    """A problem with the training input: one line for the operator."""


def read_rows(path: str) -> list[dict[str, Any]]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    file = Path(path)
    try:
        if file.suffix == ".parquet":
            table = pq.read_table(file)
        elif file.suffix == ".csv":
            table = pcsv.read_csv(file)
        else:
            raise TrainError(f"--input {path!r}: the name must end in .parquet or .csv (an export)")
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise TrainError(f"cannot read {path!r}: {exc}") from None
    missing = sorted({*INPUTS, "label", "event_time"} - set(table.column_names))
    if missing:
        raise TrainError(f"{path!r} is not an export with labels: no column {missing[0]!r}")
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def fit(rows: list[dict[str, Any]], test_share: float, seed: int = 7) -> tuple[LogisticModel, dict[str, Any]]:
    """The model and its figures (on the held-out latest rows)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    rows = sorted(rows, key=lambda r: r["event_time"])
    labels = np.array([UNLABELLED_AS if r["label"] is None else int(r["label"]) for r in rows], dtype=float)
    raw = np.array([[math.nan if v is None else v for v in model_inputs(r)] for r in rows], dtype=float)
    cut = int(len(rows) * (1.0 - test_share))
    train_x, train_y = raw[:cut], labels[:cut]
    positives = int(train_y.sum())
    if positives == 0 or positives == len(train_y):
        raise TrainError(f"the training rows need both labels: {positives} fraud of {len(train_y)}")
    mean = np.nanmean(train_x, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    filled = np.where(np.isnan(raw), mean, raw)
    scale = filled[:cut].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    standard = (filled - mean) / scale
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(standard[:cut], train_y)
    figures: dict[str, Any] = {
        "rows": len(rows),
        "train_rows": cut,
        "train_fraud": positives,
        "test_rows": len(rows) - cut,
        "test_fraud": int(labels[cut:].sum()),
    }
    if cut < len(rows) and 0 < labels[cut:].sum() < len(rows) - cut:
        proba = clf.predict_proba(standard[cut:])[:, 1]
        predicted = proba >= 0.5
        figures["test_auc"] = round(float(roc_auc_score(labels[cut:], proba)), 4)
        figures["test_precision_at_0.5"] = round(float(precision_score(labels[cut:], predicted)), 4)
        figures["test_recall_at_0.5"] = round(float(recall_score(labels[cut:], predicted)), 4)
    coef = [float(c) for c in clf.coef_[0]]
    digest = hashlib.sha256(repr((coef, float(clf.intercept_[0]))).encode()).hexdigest()[:8]
    version = f"logreg-{datetime.now(UTC):%Y%m%d}-{digest}"
    model = LogisticModel(
        version=version,
        names=tuple(INPUTS),
        transforms=tuple(INPUTS.values()),
        mean=tuple(float(m) for m in mean),
        scale=tuple(float(s) for s in scale),
        coef=tuple(coef),
        intercept=float(clf.intercept_[0]),
    )
    return model, figures


def profile(rows: list[dict[str, Any]], model: LogisticModel, source: str) -> dict[str, Any]:
    """A frozen drift reference (``DRIFT_REFERENCE=<file>``): sketches of the features and score."""
    features: dict[str, Any] = {}
    for name in DRIFT_FEATURES:
        sketch = Sketch()
        sketch.add_many([r.get(name) for r in rows])
        features[name] = sketch.to_dict()
    score = Sketch()
    score.add_many([model.score(r) for r in rows])
    return {
        "format": PROFILE_FORMAT,
        "source": source,
        "rows": len(rows),
        "model_version": model.version,
        "features": features,
        "score": score.to_dict(),
    }


def _write_atomically(path: str, body: bytes) -> None:
    out = Path(path)
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_bytes(body)
        partial.replace(out)
    except OSError as exc:
        raise SystemExit(f"train: cannot write {path!r}: {exc.strerror}") from None


@app.command(
    option("--input", "input_path", type=str, required=True, help="An export with labels (.parquet/.csv)."),
    option("--output", type=str, required=True, help="The model file to write (JSON); MODEL=<it> loads it."),
    option(
        "--test-share",
        type=float,
        default=0.2,
        show_default=True,
        help="Latest share of the rows held out for the printed figures.",
    ),
    option(
        "--profile",
        "profile_path",
        type=str,
        default=None,
        help="Also write a drift profile of the rows (features and score; DRIFT_REFERENCE=<it> uses it).",
    ),
)
async def train(self: Any, input_path: str, output: str, test_share: float, profile_path: str | None) -> None:
    """Train the logistic fraud model on a training-set export (unlabelled rows count as legitimate)."""
    started = time.monotonic()
    if not 0.0 <= test_share < 1.0:
        raise SystemExit("train: --test-share must be in [0, 1)")
    try:
        rows = read_rows(input_path)
        if not rows:
            raise TrainError(f"{input_path!r} has no rows")
        model, figures = fit(rows, test_share)
    except TrainError as exc:
        raise SystemExit(f"train: {exc}") from None
    _write_atomically(output, model.to_json(trained_on=input_path, figures=figures))
    if profile_path:
        import orjson

        _write_atomically(profile_path, orjson.dumps(profile(rows, model, input_path)))
    shown = ", ".join(f"{k} {v}" for k, v in figures.items())
    also = f" and its drift profile to {profile_path}" if profile_path else ""
    self.say(f"train: model {model.version} to {output}{also} in {time.monotonic() - started:.1f}s; {shown}")
