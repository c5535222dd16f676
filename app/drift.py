"""Drift and online model quality (SPEC 10): what the workers observe, and the one aggregator. Pure.

Every worker observes the feature records it publishes and the scores it
gives (:class:`DriftObserver`, on the hot path: one tuple appended per record,
folded into :class:`app.sketch.Sketch` es a few thousand at a time with numpy)
in windows of ``DRIFT_WINDOW_S`` of processing time. When a window ends, each
worker sends its *partial* (mergeable sketches) to the internal monitoring
topic, one partition, so one worker aggregates (:class:`DriftAggregator`, on
a Faust table): it merges the partials of a window, and publishes the
window's records once the first partial of a later window arrives, a window
after every worker sent its own. Each record compares the window with a
reference: the previous ``DRIFT_REFERENCE_S`` period (default: the previous
day) merged from the windows before it, or a frozen profile (a file written
by ``faust -A app train --profile``). PSI at or above ``DRIFT_PSI_WARN`` on a
window of at least ``DRIFT_MIN_COUNT`` values is a warning.

Labels joined with their predictions (records/label.py) reach the same
aggregator, which keeps per model version and hour of the prediction the
scores of labelled predictions (:class:`app.sketch.ScoreQuality`) for
``LABEL_WAIT_S``, and publishes online precision, recall and AUC with each
score record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from operator import itemgetter
from typing import Any

import orjson

from app.sketch import ScoreQuality, Sketch, psi
from records.errors import SettingsError

log = logging.getLogger(__name__)

HOUR_S = 3600.0
#: How many hours of per-hour quality a score record lists (the totals cover all of LABEL_WAIT_S).
HOURS_LISTED = 24


def window_start(t: float, window_s: float, back: int = 0) -> float:
    """Start of the window holding ``t`` (``back`` windows earlier): one formula, so starts compare equal."""
    return (math.floor(t / window_s) - back) * window_s


class DriftObserver:
    """One worker's values of the current window, and the partials of windows that ended."""

    FOLD_AT = 4096

    def __init__(self, features: tuple[str, ...], window_s: float) -> None:
        self.features = features
        self.window_s = window_s
        self._get = itemgetter(*features) if len(features) > 1 else (lambda r: (r[features[0]],))
        self._window: float | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._scores: dict[str, list[float]] = {}
        self._sketches: dict[str, Sketch] = {}
        self._score_sketches: dict[str, Sketch] = {}
        self._finished: list[dict[str, Any]] = []
        self._last_sent: float | None = None

    def observe(self, record: Mapping[str, Any], score: float | None, model_version: str | None) -> None:
        """A published feature record (at its ``computed_at``), and its score if it got one."""
        start = window_start(record["computed_at"], self.window_s)
        if start != self._window:
            self._close(start)
        rows = self._rows
        rows.append(self._get(record))
        if score is not None and model_version is not None:
            scores = self._scores.get(model_version)
            if scores is None:
                scores = self._scores[model_version] = []
            scores.append(score)
        if len(rows) >= self.FOLD_AT:
            self._fold()

    def take_finished(self, now: float) -> list[dict[str, Any]]:
        """Partials of the windows that ended by ``now``; an empty one for the last ended window if none.

        An empty partial still tells the aggregator that time moved on (and that this worker saw nothing).
        """
        current = window_start(now, self.window_s)
        if self._window is not None and self._window < current:
            self._close(None)
        out, self._finished = self._finished, []
        last_ended = window_start(now, self.window_s, back=1)
        if not any(p["window_start"] == last_ended for p in out) and (
            self._last_sent is None or self._last_sent < last_ended
        ):
            out.append(self._partial(last_ended, {}, {}, 0))
        for partial in out:
            if self._last_sent is None or partial["window_start"] > self._last_sent:
                self._last_sent = partial["window_start"]
        return out

    def _fold(self) -> None:
        rows, self._rows = self._rows, []
        if rows:
            columns = list(zip(*rows, strict=True))
            for name, values in zip(self.features, columns, strict=True):
                sketch = self._sketches.get(name)
                if sketch is None:
                    sketch = self._sketches[name] = Sketch()
                sketch.add_many(values)
        scores, self._scores = self._scores, {}
        for version, given in scores.items():
            sketch = self._score_sketches.get(version)
            if sketch is None:
                sketch = self._score_sketches[version] = Sketch()
            sketch.add_many(given)

    def _close(self, next_window: float | None) -> None:
        if self._window is not None:
            self._fold()
            count = sum(s.count + s.nulls for s in self._sketches.values()) // max(len(self.features), 1)
            self._finished.append(self._partial(self._window, self._sketches, self._score_sketches, count))
        self._window = next_window
        self._sketches, self._score_sketches = {}, {}

    def _partial(
        self, start: float, sketches: Mapping[str, Sketch], scores: Mapping[str, Sketch], count: int
    ) -> dict[str, Any]:
        return {
            "kind": "partial",
            "window_start": start,
            "window_s": self.window_s,
            "count": count,
            "features": {name: s.to_dict() for name, s in sketches.items()},
            "scores": {version: s.to_dict() for version, s in scores.items()},
        }


class Reference:
    """Where a window's reference comes from: the previous period, or a frozen profile."""

    def __init__(self, spec: str, period_s: float, load: Callable[[str], bytes] | None = None) -> None:
        self.spec = spec
        self.period_s = period_s
        self.profile: dict[str, Sketch] | None = None
        if spec != "previous":
            raw = (load or _read_file)(spec)
            obj = orjson.loads(raw)
            sketches = obj.get("features", {})
            self.profile = {name: Sketch.from_dict(d) for name, d in sketches.items()}
            if obj.get("score") is not None:
                self.profile["score"] = Sketch.from_dict(obj["score"])

    def describe(self, name: str, start: float, ref: Sketch | None) -> dict[str, Any] | None:
        if ref is None:
            return None
        if self.profile is not None:
            return {"kind": "profile", "path": self.spec, "count": ref.count}
        period = window_start(start, self.period_s)
        return {"kind": "previous", "start": period - self.period_s, "end": period, "count": ref.count}


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_reference(spec: str, period_s: float) -> Reference:
    """``DRIFT_REFERENCE``: ``previous``, or a profile file; a bad file is one :class:`SettingsError` line."""
    try:
        return Reference(spec, period_s)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"DRIFT_REFERENCE={spec!r} is not a readable profile: {exc}") from None


class DriftAggregator:
    """Merges the workers' partials and the joined labels; decides what to publish.

    ``state`` is the aggregator's table (str key -> bytes), so all it keeps
    survives a restart or a move: ``w|<start>`` windows being merged,
    ``r|<name>|<period start>`` the reference periods, ``q|<model>|<hour>``
    the labelled scores, ``emitted`` the last window published.
    Outputs are ``(topic kind, key, record)`` with kind ``feature`` or ``pred``.
    """

    def __init__(
        self,
        state: MutableMapping[str, bytes],
        reference: Reference,
        psi_warn: float,
        min_count: int,
        label_wait_s: float,
        threshold: float,
    ) -> None:
        self.state = state
        self.reference = reference
        self.psi_warn = psi_warn
        self.min_count = min_count
        self.label_wait_s = label_wait_s
        self.threshold = threshold
        self.late_partials = 0

    def _get(self, key: str) -> Any:
        raw = self.state.get(key)
        return None if raw is None else orjson.loads(raw)

    def _put(self, key: str, value: Any) -> None:
        self.state[key] = orjson.dumps(value)

    def on_partial(self, partial: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        start = float(partial["window_start"])
        emitted = self._get("emitted")
        if emitted is not None and start <= emitted:
            self.late_partials += 1
            return []
        key = f"w|{start!r}"
        merged = self._get(key) or {
            "window_start": start,
            "window_s": partial["window_s"],
            "features": {},
            "scores": {},
            "sources": [],
        }
        source = partial.get("source")
        if source is not None:
            if source in merged["sources"]:
                return []  # sent again (the aggregator restarted after merging it): merged once
            merged["sources"].append(source)
        for section in ("features", "scores"):
            for name, d in partial.get(section, {}).items():
                sketch = Sketch.from_dict(d)
                if name in merged[section]:
                    sketch.merge(Sketch.from_dict(merged[section][name]))
                merged[section][name] = sketch.to_dict()
        self._put(key, merged)
        out: list[tuple[str, str, dict[str, Any]]] = []
        for older in sorted(self._open_windows()):
            if older < start:
                out.extend(self._emit(older))
        return out

    def on_label(self, joined: Mapping[str, Any]) -> None:
        version = str(joined["model_version"])
        hour = window_start(float(joined["scored_at"]), HOUR_S)
        key = f"q|{hour!r}|{version}"  # the version last: it may hold any character
        raw = self._get(key)
        quality = ScoreQuality() if raw is None else ScoreQuality.from_dict(raw)
        quality.add(float(joined["score"]), int(joined["label"]))
        self._put(key, quality.to_dict())

    def _open_windows(self) -> Iterable[float]:
        return [float(k[2:]) for k in list(self.state.keys()) if k.startswith("w|")]

    def _emit(self, start: float) -> list[tuple[str, str, dict[str, Any]]]:
        merged = self._get(f"w|{start!r}")
        del self.state[f"w|{start!r}"]
        self._put("emitted", start)
        end = start + float(merged["window_s"])
        out: list[tuple[str, str, dict[str, Any]]] = []
        for name, d in sorted(merged["features"].items()):
            out.append(("feature", name, self._record(name, name, start, end, Sketch.from_dict(d))))
        scores = dict(merged["scores"])
        for version in self.versions():  # labelled, scoring nothing this window: quality all the same
            scores.setdefault(version, Sketch().to_dict())
        for version, d in sorted(scores.items()):
            record = self._record("score", f"score@{version}", start, end, Sketch.from_dict(d))
            record["model_version"] = version
            record.update(self.quality(version, end))
            out.append(("pred", version, record))
        self._prune(start, end)
        return out

    def _record(self, feature: str, name: str, start: float, end: float, sketch: Sketch) -> dict[str, Any]:
        ref = self._reference(name, feature, start)
        # A reference thinner than DRIFT_MIN_COUNT (a first, partial period) compares with nothing: PSI
        # on a few values is noise, and a window would warn against it.
        if ref is not None and ref.count + ref.nulls < self.min_count:
            ref = None
        value = psi(sketch, ref) if ref is not None else None
        warning = (
            value is not None and value >= self.psi_warn and sketch.count + sketch.nulls >= self.min_count
        )
        period = window_start(start, self.reference.period_s)
        if self.reference.profile is None:  # the window joins its period's reference
            rkey = f"r|{name}|{period!r}"
            raw = self._get(rkey)
            into = sketch.copy() if raw is None else Sketch.from_dict(raw)
            if raw is not None:
                into.merge(sketch)
            self._put(rkey, into.to_dict())
        return {
            "feature": feature,
            "window_start": start,
            "window_end": end,
            "count": sketch.count,
            "nulls": sketch.nulls,
            "psi": None if value is None else round(value, 6),
            "warning": warning,
            "threshold": self.psi_warn,
            "quantiles": sketch.summary(),
            "reference": self.reference.describe(name, start, ref),
            "sketch": sketch.to_dict(),
        }

    def _reference(self, name: str, feature: str, start: float) -> Sketch | None:
        if self.reference.profile is not None:
            return self.reference.profile.get(feature)
        period = window_start(start, self.reference.period_s)
        raw = self._get(f"r|{name}|{period - self.reference.period_s!r}")
        return None if raw is None else Sketch.from_dict(raw)

    def quality(self, version: str, now: float) -> dict[str, Any]:
        """Online quality of a model version's labelled predictions: totals and the last hours."""
        total = ScoreQuality()
        hours: list[dict[str, Any]] = []
        for hour, key in sorted((h, k) for k, (h, v) in self._quality_keys().items() if v == version):
            q = ScoreQuality.from_dict(self._get(key))
            total.merge(q)
            if hour >= now - HOURS_LISTED * HOUR_S:
                hours.append({"hour_start": hour, **q.summary(self.threshold)})
        summary = total.summary(self.threshold)
        return {**summary, "prediction_threshold": self.threshold, "quality_by_hour": hours}

    def _prune(self, start: float, now: float) -> None:
        if self.reference.profile is None:
            keep_from = window_start(start, self.reference.period_s) - self.reference.period_s
            for key in [k for k in list(self.state.keys()) if k.startswith("r|")]:
                if float(key.rsplit("|", 1)[1]) < keep_from:
                    del self.state[key]
        oldest_hour = now - self.label_wait_s - HOUR_S
        for key, (hour, _) in self._quality_keys().items():
            if hour < oldest_hour:
                del self.state[key]

    def _quality_keys(self) -> dict[str, tuple[float, str]]:
        """``q|<hour>|<version>`` keys -> (hour, version); a key that is not one is dropped (logged)."""
        out: dict[str, tuple[float, str]] = {}
        for key in list(self.state.keys()):
            if not key.startswith("q|"):
                continue
            parts = key.split("|", 2)
            try:
                out[key] = (float(parts[1]), parts[2])
            except (IndexError, ValueError):
                log.warning("monitoring state: dropping %r, not a quality key (hour, model version)", key)
                del self.state[key]
        return out

    def versions(self) -> list[str]:
        return sorted({version for _, version in self._quality_keys().values()})
