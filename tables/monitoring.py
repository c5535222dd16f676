"""Drift and model-quality state of this worker (SPEC 10; the logic is app/drift.py).

* :data:`observer`: the values of the records this worker publishes, per
  window (fed by the hot path, sent as partials by agents/monitoring.py);
* :data:`monitoring_state`: the aggregator's Faust table, one partition
  (as the internal monitoring topic), in the app's store (RocksDB) with a
  changelog that compaction keeps small: windows being merged, the
  reference periods, the labelled scores per model and hour;
* :data:`aggregator`: the :class:`DriftAggregator` over that table.
"""

from __future__ import annotations

import faust

from app.drift import DriftAggregator, DriftObserver
from app.main import app, drift_reference, settings

observer = DriftObserver(settings.drift_features, settings.drift_window_s)

monitoring_state = app.Table(
    "monitoring-state",
    key_type=str,
    value_type=bytes,
    schema=faust.Schema(key_type=str, value_type=bytes, key_serializer="raw", value_serializer="raw"),
    partitions=1,
    # A few hundred small keys: Faust's RocksDB defaults (3 x 64 MiB memtables, 2 GiB cache) are far too big.
    options={"write_buffer_size": 1 << 20, "max_write_buffer_number": 2, "block_cache_size": 1 << 20},
    help="Drift windows being merged, reference periods, labelled scores (app/drift.py).",
)

aggregator = DriftAggregator(
    monitoring_state,
    drift_reference,
    psi_warn=settings.drift_psi_warn,
    min_count=settings.drift_min_count,
    label_wait_s=settings.label_wait_s,
    threshold=settings.prediction_threshold,
)
