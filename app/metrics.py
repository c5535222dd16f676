"""The worker's figures: Prometheus metrics and the JSON behind ``/stats``.

One :class:`PipelineMetrics` per worker (``app.metrics``). The agent calls the
``on_*`` hooks (cheap: a counter increment, a histogram observation, a deque
append); timers (``app/timers.py``) refresh the lag and the rate history; the
web views read :meth:`PipelineMetrics.snapshot`. Everything a worker reports
is about its own active partitions (standbys are not counted). Nothing here
knows Faust.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from records.errors import ERROR_TYPES, ErrorType

FRESHNESS_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: What happens to a fraud label (SPEC 10): joined with its logged prediction, or not.
LABEL_OUTCOMES = ("joined", "unmatched", "invalid")
QUALITY_FIELDS = ("labelled", "positives", "precision", "recall", "auc", "prediction_threshold")
RATE_WINDOW_S = 60.0
FRESHNESS_WINDOW_S = 60.0
#: The freshness p50/p99 of /stats and the health line are over a sample of the last minute's
#: records, at most this many a second (every n-th record, n from the last second's count). Before,
#: the newest 20,000 records: 10 s at 2,000 tx/s, not a minute, and 2.4 ms of the event loop to sort
#: every second (6,000: 0.8 ms), plus a tuple kept per record.
FRESHNESS_SAMPLES_PER_S = 100
MAX_FRESHNESS_SAMPLES = int(FRESHNESS_SAMPLES_PER_S * FRESHNESS_WINDOW_S)
HISTORY_POINTS = 300


def quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of an already sorted list (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


class PipelineMetrics:
    def __init__(self, behind_after_s: float = 5.0) -> None:
        self.behind_after_s = behind_after_s  # FRESHNESS_WARN_S: input older than this is being caught up on
        self.registry = CollectorRegistry()
        r = self.registry
        self._processed = Counter("velocity_transactions_processed", "Accepted transactions", registry=r)
        self._duplicates = Counter("velocity_duplicates", "Duplicate transactions re-published", registry=r)
        self._dead = Counter(
            "velocity_dead_letters", "Messages sent to the dead-letter topic", ["error_type"], registry=r
        )
        self._lag = Gauge(
            "velocity_consumer_lag",
            "High watermark minus committed offset, owned partitions",
            ["topic", "partition"],
            registry=r,
        )
        self._users = Gauge(
            "velocity_table_users", "Users with state in this worker's active partitions", registry=r
        )
        self._freshness = PlainHistogram(
            "velocity_feature_freshness_seconds",
            "Feature computed_at minus the Kafka timestamp of the input message",
            FRESHNESS_BUCKETS_S,
        )
        r.register(self._freshness)
        self._expired = Counter(
            "velocity_users_expired",
            "Users forgotten after USER_TTL_S of stream time without a transaction (SPEC 4, Expiry)",
            registry=r,
        )
        self._sweep_seconds = Gauge(
            "velocity_expiry_last_sweep_seconds",
            "Duration of the last complete expiry sweep over this worker's active partitions",
            registry=r,
        )
        self._ready = Gauge(
            "velocity_ready", "1 when partitions are assigned and tables restored", registry=r
        )
        for error_type in ERROR_TYPES:
            self._dead.labels(error_type=error_type)
        self.processed_total = 0
        self.predictions_total = 0
        self._predictions_exported = 0
        self._processed_exported = 0
        self.scoring_failures_total = 0
        self._predictions = Counter(
            "velocity_predictions", "Fraud scores published to the predictions topic", registry=r
        )
        self._scoring_failures = Counter(
            "velocity_scoring_failures", "Feature records the model failed to score", registry=r
        )
        self.labels: dict[str, int] = dict.fromkeys(LABEL_OUTCOMES, 0)
        self._labels = Counter(
            "velocity_labels",
            "Fraud labels by outcome: joined with their prediction, unmatched (no logged prediction), "
            "invalid (dead letter)",
            ["outcome"],
            registry=r,
        )
        for outcome in LABEL_OUTCOMES:
            self._labels.labels(outcome=outcome)
        self.predictions_expired_total = 0
        self._predictions_expired = Counter(
            "velocity_predictions_expired",
            "Logged predictions deleted unlabelled after LABEL_WAIT_S of stream time",
            registry=r,
        )
        self._psi = Gauge(
            "velocity_drift_psi",
            "PSI of the last published window against its reference (feature, or score@model)",
            ["feature"],
            registry=r,
        )
        self._drift_warnings = Counter(
            "velocity_drift_warnings", "Windows whose PSI reached DRIFT_PSI_WARN", ["feature"], registry=r
        )
        self._quality = Gauge(
            "velocity_model_quality",
            "Online precision, recall and AUC of labelled predictions (LABEL_WAIT_S), per model version",
            ["model_version", "measure"],
            registry=r,
        )
        self._labelled = Gauge(
            "velocity_model_labelled_predictions",
            "Labelled predictions per model version",
            ["model_version"],
            registry=r,
        )
        #: The aggregating worker's last published drift records, by feature (SPEC 10).
        self.drift: dict[str, dict[str, Any]] = {}
        self.drift_warnings_total = 0
        self.quality: dict[str, dict[str, Any]] = {}
        self.duplicates_total = 0
        self.users_expired_total = 0
        self.last_sweep: dict[str, float] | None = None
        self.dead_letters: dict[str, int] = dict.fromkeys(ERROR_TYPES, 0)
        self.users = 0
        self.lag: dict[tuple[str, int], int] = {}
        self.partitions: list[int] = []
        self.last_input_age_s: float | None = None  # how old the last input message was when processed
        self._recent_freshness: deque[tuple[float, float]] = deque(maxlen=MAX_FRESHNESS_SAMPLES)
        self._freshness_stride = 1  # keep every n-th record's freshness in _recent_freshness
        self._freshness_skipped = 0
        # Seeded with the start, so that work done before the first sample
        # (a burst right after start-up) counts towards the rate.
        self._rate_samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self.started_at_s = time.time()
        self._restored = Counter(
            "velocity_changelog_records_restored",
            "Changelog records applied while restoring active partitions",
            registry=r,
        )
        self._standby = Counter(
            "velocity_changelog_records_standby",
            "Changelog records applied to standby partitions",
            registry=r,
        )
        self._dropped = Counter(
            "velocity_uncommitted_partitions_dropped",
            "Table partitions emptied before a restore because they held uncommitted writes",
            registry=r,
        )
        self.uncommitted_partitions_dropped = 0
        self._episode: dict[str, float] | None = None  # the restore in progress
        self.last_recovery: dict[str, float | None] | None = None
        self.startup_to_ready_s: float | None = None
        self.ready = False

    # ---------------------------------------------------------------- hot path
    def on_processed(self) -> None:
        self.processed_total += 1  # exported by _export(): no Prometheus lock per record

    def on_prediction(self) -> None:
        self.predictions_total += 1  # exported by _export(): no Prometheus lock per record

    def on_scoring_failed(self) -> None:
        self.scoring_failures_total += 1
        self._scoring_failures.inc()

    def on_duplicate(self) -> None:
        self.duplicates_total += 1
        self._duplicates.inc()

    def on_label(self, outcome: str) -> None:
        self.labels[outcome] = self.labels.get(outcome, 0) + 1
        self._labels.labels(outcome=outcome).inc()

    def on_prediction_expired(self) -> None:
        self.predictions_expired_total += 1
        self._predictions_expired.inc()

    def on_drift(self, record: Mapping[str, Any]) -> None:
        """A published drift record (this worker aggregates): kept for /stats, exported."""
        name = str(record["feature"])
        if record.get("model_version"):
            name = f"score@{record['model_version']}"
        if record["psi"] is not None:
            self._psi.labels(feature=name).set(record["psi"])
        if record["warning"]:
            self.drift_warnings_total += 1
            self._drift_warnings.labels(feature=name).inc()
        kept = {k: v for k, v in record.items() if k not in ("sketch", "quality_by_hour")}
        kept["warnings_total"] = self.drift.get(name, {}).get("warnings_total", 0) + int(
            bool(record["warning"])
        )
        self.drift[name] = kept
        version = record.get("model_version")
        if version:
            quality = {k: record.get(k) for k in QUALITY_FIELDS}
            quality["quality_by_hour"] = record.get("quality_by_hour", [])
            self.quality[str(version)] = quality
            self._labelled.labels(model_version=version).set(record.get("labelled") or 0)
            for measure in ("precision", "recall", "auc"):
                value = record.get(measure)
                if value is not None:
                    self._quality.labels(model_version=version, measure=measure).set(value)

    def on_user_expired(self) -> None:
        self.users_expired_total += 1
        self._expired.inc()

    def on_sweep(self, seconds: float, keys: int) -> None:
        self.last_sweep = {"seconds": seconds, "keys": keys, "at": time.time()}
        self._sweep_seconds.set(seconds)

    def on_dead_letter(self, error_type: ErrorType) -> None:
        self.dead_letters[error_type] = self.dead_letters.get(error_type, 0) + 1
        self._dead.labels(error_type=error_type).inc()

    def on_feature(self, computed_at_s: float, input_timestamp_s: float | None) -> None:
        if input_timestamp_s is None:
            return
        freshness_s = max(0.0, computed_at_s - input_timestamp_s)
        self._freshness.observe(freshness_s)
        self.last_input_age_s = freshness_s
        self._freshness_skipped += 1
        if self._freshness_skipped >= self._freshness_stride:
            self._freshness_skipped = 0
            self._recent_freshness.append((time.monotonic(), freshness_s))

    def on_changelog_event(self, restoring_active: bool) -> None:
        if not restoring_active:
            self._standby.inc()
            return
        self._restored.inc()
        now = time.monotonic()
        if self._episode is None:
            self._episode = {"records": 0, "bulk_records": 0, "first": now, "last": now}
        self._episode["records"] += 1
        self._episode["last"] = now

    def on_uncommitted_state_dropped(self) -> None:
        self.uncommitted_partitions_dropped += 1
        self._dropped.inc()

    # ------------------------------------------------------------- from timers
    def on_bulk_restore(self, records: int, started: float) -> None:
        """``records`` changelog records applied by tables/restore.py, which started at ``started``."""
        self._restored.inc(records)
        if self._episode is None:
            self._episode = {"records": 0, "bulk_records": 0, "first": started, "last": started}
        self._episode["first"] = min(self._episode["first"], started)
        self._episode["records"] += records
        self._episode["bulk_records"] += records
        self._episode["last"] = time.monotonic()

    def on_ready(self) -> None:
        """Called when the worker is (again) ready: closes the restore episode, if any."""
        if self.startup_to_ready_s is None:
            self.startup_to_ready_s = time.time() - self.started_at_s
        episode, self._episode = self._episode, None
        if episode is not None:
            seconds = episode["last"] - episode["first"]
            self.last_recovery = {
                "records": episode["records"],
                "bulk_records": episode["bulk_records"],
                "seconds": seconds,
                "records_per_s": episode["records"] / seconds if seconds > 0 else None,
                "finished_at": time.time(),
            }

    def set_users(self, users: int) -> None:
        self.users = users
        self._users.set(users)

    def set_ready(self, ready: bool) -> None:
        """Called every second or so; becoming ready closes the restore episode, if any."""
        if ready and not self.ready:
            self.on_ready()
        self.ready = ready
        self._ready.set(1 if ready else 0)

    def set_lag(self, lag: Mapping[tuple[str, int], int], partitions: Iterable[int]) -> None:
        for topic, partition in set(self.lag) - set(lag):
            self._lag.remove(topic, str(partition))  # partition no longer ours
        for (topic, partition), value in lag.items():
            self._lag.labels(topic=topic, partition=str(partition)).set(value)
        self.lag = dict(lag)
        self.partitions = sorted(partitions)

    def _export(self) -> None:
        """Bring the Prometheus counters the hot path counts in plain integers up to date."""
        if self.predictions_total > self._predictions_exported:
            self._predictions.inc(self.predictions_total - self._predictions_exported)
            self._predictions_exported = self.predictions_total
        if self.processed_total > self._processed_exported:
            self._processed.inc(self.processed_total - self._processed_exported)
            self._processed_exported = self.processed_total

    def sample(self) -> None:
        """Record one point of the rate history (called every second or so)."""
        self._export()
        now = time.monotonic()
        last_second = self.processed_total - self._rate_samples[-1][1]  # since the previous sample
        self._freshness_stride = max(1, -(-last_second // FRESHNESS_SAMPLES_PER_S))  # ceil
        self._rate_samples.append((now, self.processed_total))
        # Keep the newest sample at least RATE_WINDOW_S old as the baseline, so
        # the window always spans a full minute once the worker has run that long.
        while len(self._rate_samples) > 2 and now - self._rate_samples[1][0] >= RATE_WINDOW_S:
            self._rate_samples.popleft()
        p50, p99 = self.freshness_quantiles()
        self.history.append(
            {
                "t": time.time(),
                "rate_tx_s": self.rate_tx_s(),
                "lag": self.total_lag(),
                "freshness_p50_s": p50,
                "freshness_p99_s": p99,
            }
        )

    # ------------------------------------------------------------------- reads
    def rate_tx_s(self) -> float:
        """Accepted transactions per second over the last minute (or since start).

        Measured from the oldest kept sample to now (the newest counter value),
        so work done between two samples counts as soon as it is done.
        """
        t0, n0 = self._rate_samples[0]
        elapsed = time.monotonic() - t0
        return (self.processed_total - n0) / elapsed if elapsed > 0 else 0.0

    def freshness_quantiles(self) -> tuple[float | None, float | None]:
        horizon = time.monotonic() - FRESHNESS_WINDOW_S
        values = sorted(v for t, v in self._recent_freshness if t >= horizon)
        return quantile(values, 0.5), quantile(values, 0.99)

    def total_lag(self) -> int:
        return sum(self.lag.values())

    def snapshot(self) -> dict[str, Any]:
        p50, p99 = self.freshness_quantiles()
        return {
            "processed_total": self.processed_total,
            "duplicates_total": self.duplicates_total,
            "predictions_total": self.predictions_total,
            "scoring_failures_total": self.scoring_failures_total,
            "users_expired_total": self.users_expired_total,
            "labels": dict(self.labels),
            "predictions_expired_total": self.predictions_expired_total,
            "drift": dict(self.drift),
            "drift_warnings_total": self.drift_warnings_total,
            "model_quality": dict(self.quality),
            "last_expiry_sweep": self.last_sweep,
            "dead_letters": dict(self.dead_letters),
            "dead_letters_total": sum(self.dead_letters.values()),
            "users": self.users,
            "rate_tx_s": self.rate_tx_s(),
            "freshness_p50_s": p50,
            "freshness_p99_s": p99,
            "lag": [{"topic": t, "partition": p, "messages": n} for (t, p), n in sorted(self.lag.items())],
            "lag_total": self.total_lag(),
            "catch_up": catch_up(
                self.total_lag(), self.rate_tx_s(), self.last_input_age_s, self.behind_after_s
            ),
            "partitions": self.partitions,
            "uptime_s": time.time() - self.started_at_s,
            "startup_to_ready_s": self.startup_to_ready_s,
            "last_recovery": self.last_recovery,
            "uncommitted_partitions_dropped": self.uncommitted_partitions_dropped,
            "history": list(self.history),
        }

    def prometheus_text(self) -> bytes:
        self._export()
        return generate_latest(self.registry)


class PlainHistogram:
    """A Prometheus histogram counted in plain integers, read when the registry is collected.

    prometheus_client's ``Histogram.observe`` takes a lock twice and walks
    the bucket bounds in Python; the hot path observes every record's
    freshness, on one thread (the event loop's, as ``/metrics``), so a
    bisection and two additions do. The exposition is the same: cumulative
    ``_bucket{le=...}``, ``_count``, ``_sum``.
    """

    def __init__(self, name: str, documentation: str, bounds: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' le
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        buckets.append(("+Inf", cumulative + self.counts[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


def catch_up(lag: int, rate_tx_s: float, behind_s: float | None, behind_after_s: float) -> dict[str, Any]:
    """Whether the worker is catching up on history (a backfill, a restart after downtime), and its ETA.

    Catching up: messages are waiting (``lag``) and the last one processed
    had waited more than ``behind_after_s`` (FRESHNESS_WARN_S). ``behind_s``
    is how old that message was when processed; ``eta_s`` the lag at the
    last minute's rate (None when nothing was processed in that minute).
    """
    catching_up = lag > 0 and behind_s is not None and behind_s > behind_after_s
    eta = None if rate_tx_s <= 0 else lag / rate_tx_s
    return {"catching_up": catching_up, "lag": lag, "behind_s": behind_s, "eta_s": eta if lag else 0.0}


def merge_snapshots(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The cluster view: figures summed over workers; freshness is the worst worker's."""
    alive = [w for w in workers if "error" not in w]
    dead_letters = dict.fromkeys(ERROR_TYPES, 0)
    for w in alive:
        for k, v in w["dead_letters"].items():
            dead_letters[k] = dead_letters.get(k, 0) + v
    p50s = [w["freshness_p50_s"] for w in alive if w["freshness_p50_s"] is not None]
    p99s = [w["freshness_p99_s"] for w in alive if w["freshness_p99_s"] is not None]
    return {
        "workers": len(workers),
        "workers_answering": len(alive),
        "processed_total": sum(w["processed_total"] for w in alive),
        "duplicates_total": sum(w["duplicates_total"] for w in alive),
        "predictions_total": sum(w.get("predictions_total", 0) for w in alive),
        "scoring_failures_total": sum(w.get("scoring_failures_total", 0) for w in alive),
        "model_versions": sorted({w["model_version"] for w in alive if w.get("model_version")}),
        "users_expired_total": sum(w.get("users_expired_total", 0) for w in alive),
        "labels": _sum_dicts(w.get("labels", {}) for w in alive),
        "predictions_expired_total": sum(w.get("predictions_expired_total", 0) for w in alive),
        # One worker aggregates drift; after a move the newest window of each name wins.
        "drift": _newest(w.get("drift", {}) for w in alive),
        "drift_warnings_total": sum(w.get("drift_warnings_total", 0) for w in alive),
        "model_quality": _newest_quality(alive),
        "dead_letters": dead_letters,
        "dead_letters_total": sum(dead_letters.values()),
        "users": sum(w["users"] for w in alive),
        "rate_tx_s": sum(w["rate_tx_s"] for w in alive),
        "freshness_p50_s": max(p50s) if p50s else None,
        "freshness_p99_s": max(p99s) if p99s else None,
        "lag": sorted((lag for w in alive for lag in w["lag"]), key=lambda x: (x["topic"], x["partition"])),
        "lag_total": sum(w["lag_total"] for w in alive),
        "catch_up": _merge_catch_up([w["catch_up"] for w in alive if "catch_up" in w]),
        "partitions": sorted(p for w in alive for p in w["partitions"]),
    }


def _sum_dicts(each: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out = dict.fromkeys(LABEL_OUTCOMES, 0)
    for d in each:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _newest(each: Iterable[Mapping[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in each:
        for name, record in d.items():
            if name not in out or record["window_end"] > out[name]["window_end"]:
                out[name] = record
    return dict(sorted(out.items()))


def _newest_quality(workers: list[dict[str, Any]]) -> dict[str, Any]:
    newest_drift = _newest(w.get("drift", {}) for w in workers)
    out: dict[str, Any] = {}
    for w in workers:
        for version, quality in w.get("model_quality", {}).items():
            record = newest_drift.get(f"score@{version}")
            mine = w.get("drift", {}).get(f"score@{version}")
            if version not in out or (record is not None and mine is record):
                out[version] = quality
    return out


def _merge_catch_up(each: list[dict[str, Any]]) -> dict[str, Any]:
    """The cluster catches up while any worker does; its ETA is the slowest worker's."""
    behind = [c["behind_s"] for c in each if c["behind_s"] is not None]
    etas = [c["eta_s"] for c in each]
    return {
        "catching_up": any(c["catching_up"] for c in each),
        "lag": sum(c["lag"] for c in each),
        "behind_s": max(behind) if behind else None,
        "eta_s": None if any(e is None for e in etas) else max(etas, default=0.0),
    }
