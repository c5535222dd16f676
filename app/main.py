"""Builds the Faust App and declares its topics; the one module with import-time effects.

It imports only settings, the Faust extensions and helpers below it: tables,
agents, web views, timers and commands import it, and Faust's autodiscovery
finds them when a worker or command starts.
"""

from __future__ import annotations

import gc
import logging
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from app.drift import Reference, load_reference
from app.faust_ext import ExtendedApp, FaustVersionError
from app.kafka_admin import ConnectFailed, TopicSpec, ensure_topics, preflight
from app.kafka_admin import configure as configure_kafka
from app.kafka_security import aiokafka_options, explain, faust_credentials
from app.metrics import PipelineMetrics
from app.scoring import ModelError, Scorer, load_scorer
from app.settings import Settings, load_settings
from app.web_auth import auth_middleware, web_access
from app.web_errors import json_errors, request_timeout, server_options
from records.errors import SettingsError, TopicMismatchError

log = logging.getLogger(__name__)

#: Full garbage collections happen this many times rarer than Python's default.
GC_FULL_THRESHOLD = 1000
#: A full collection slower than this is logged.
GC_SLOW_S = 0.1


class VelocityApp(ExtendedApp):
    """The Velocity worker's App: its settings, its metrics, its topics checked before anything subscribes."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings.app_id, **kwargs)
        self.settings = settings
        self.metrics = PipelineMetrics(behind_after_s=settings.freshness_warn_s)
        self._gc_started_s = 0.0

    async def on_first_start(self) -> None:
        try:
            # One connection first: a wrong password or certificate is one line here, not a retry loop.
            await preflight(self.settings.broker_url, lambda exc: explain(exc, self.settings))
            await ensure_topics(self.settings.broker_url, topic_specs(self.settings))
        except (TopicMismatchError, ConnectFailed) as exc:
            # One line and a clean exit code: nothing has started yet.
            sys.stderr.write(f"velocity: refusing to start: {exc}\n")
            sys.stderr.flush()
            os._exit(78)
        Path(self.settings.datadir).mkdir(parents=True, exist_ok=True)
        self._tune_garbage_collection()
        await super().on_first_start()

    def _tune_garbage_collection(self) -> None:
        # Full (generation 2) collections walk every object the worker holds
        # -- the cached windows are about ten objects per retained transaction
        # -- and find almost nothing to free (nothing on the hot path builds
        # reference cycles), while each one stalls the event loop. Make them
        # rarer, freeze what exists once the worker is up, log slow ones.
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, GC_FULL_THRESHOLD)
        gc.callbacks.append(self._watch_full_collections)

    def _watch_full_collections(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started_s = time.perf_counter()
        elif (took := time.perf_counter() - self._gc_started_s) > GC_SLOW_S:
            log.warning("full garbage collection took %.0f ms (freed %s)", took * 1000, info.get("collected"))


def topic_specs(s: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(s.transactions_topic, s.topic_partitions, must_match=True),
        TopicSpec(s.rekey_topic, s.topic_partitions, must_match=True),
        TopicSpec(s.features_topic, s.topic_partitions, must_match=False),
        TopicSpec(s.dlq_topic, s.topic_partitions, must_match=False),
        TopicSpec(s.health_topic, 1, must_match=False),
        *([TopicSpec(s.predictions_topic, s.topic_partitions, must_match=False)] if s.scoring else []),
        *([TopicSpec(s.labels_topic, s.topic_partitions, must_match=False)] if label_join(s) else []),
        TopicSpec(s.monitoring_topic, 1, must_match=True),
        TopicSpec(s.feature_drift_topic, 1, must_match=False),
        TopicSpec(s.pred_drift_topic, 1, must_match=False),
    ]


def label_join(s: Settings) -> bool:
    """Whether predictions are logged and labels joined with them (SPEC 10)."""
    return s.scoring and s.label_wait_s > 0


def build_app(settings: Settings) -> VelocityApp:
    # Tokens, peer credentials, TLS (app/web_auth.py): a bad tokens file or certificate is a
    # SettingsError here, one line at start.
    access = web_access(settings)
    tls: dict[str, Any] = {}
    if access.server_ssl is not None:
        # Other workers reach this one (the canonical URL the assignor shares) over https.
        tls = {
            "web_ssl_context": access.server_ssl,
            "canonical_url": f"https://{settings.web_host}:{settings.web_port}",
        }
    return VelocityApp(
        settings,
        broker=settings.broker_url,
        store=settings.store,
        datadir=settings.datadir,
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.topic_partitions,
        table_standby_replicas=settings.table_standby_replicas,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        autodiscover=[
            "agents",
            "app.web",
            "app.timers",
            "app.commands",
            "app.export",
            "app.dlq",
            "app.train",
        ],
        # Our own pages live at / and /stats; Faust's table browser would expose raw state.
        web_stats_enabled=False,
        web_tables_enabled=False,
        web_application_options={
            "middlewares": [
                json_errors,
                auth_middleware(access),
                request_timeout(settings.http_request_timeout_s),
            ],
            "handler_args": server_options(settings.http_request_timeout_s),
        },
        **tls,
        origin="app",
        # Faust's consumer group for a brand-new app id starts from the beginning.
        consumer_auto_offset_reset="earliest",
        # Commit every second (Faust: 2.8 s): consumer lag is measured from the
        # committed offset, so this bounds what lag shows for work already done.
        broker_commit_interval=1.0,
        # Batch produce requests (features, changelog): fewer, larger requests;
        # records leave at most this much later (README, "Performance").
        producer_linger=settings.producer_linger_ms / 1000.0,
        # Larger producer batches and fetches than Faust's defaults (16 KiB
        # batches, 1 MiB per partition): Faust's names, set from the
        # environment under the same names, validated in app/settings.py.
        producer_max_batch_size=settings.producer_max_batch_size,
        consumer_max_fetch_size=settings.consumer_max_fetch_size,
        broker_max_poll_records=settings.broker_max_poll_records,
        # How long the broker may hold a fetch that finds too little (Faust fixes 1,500 ms; ours).
        consumer_fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        # How long the group waits for a silent worker before its partitions move (Faust: 60 s).
        broker_session_timeout=settings.broker_session_timeout_s,
        # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (app/kafka_security.py); None: PLAINTEXT.
        broker_credentials=faust_credentials(settings),
    )


try:
    settings: Settings = load_settings()
    #: The fraud model (SPEC 10): scores every feature record on the hot path; None with SCORING=off.
    scorer: Scorer | None = load_scorer(settings.model) if settings.scoring else None
    #: What drift is measured against (SPEC 10): the previous period, or a frozen profile.
    drift_reference: Reference = load_reference(settings.drift_reference, settings.drift_reference_s)
    configure_kafka(aiokafka_options(settings))  # every aiokafka client of this process
    app = build_app(settings)
except (SettingsError, FaustVersionError, ModelError) as exc:  # one clear line, no traceback
    raise SystemExit(f"velocity: cannot start: {exc}") from None
except (ssl.SSLError, OSError) as exc:  # the TLS files exist (settings checked) but do not load
    raise SystemExit(f"velocity: cannot start: KAFKA_SSL_CAFILE/CERTFILE/KEYFILE: {exc}") from None


async def _freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()


app.on_startup_finished = _freeze_startup_objects


_raw: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
#: What the agent consumes: the input topic and the internal re-keying hop.
inbound_topic = app.topic(
    settings.transactions_topic, settings.rekey_topic, partitions=settings.topic_partitions, **_raw
)
rekey_topic = app.topic(settings.rekey_topic, partitions=settings.topic_partitions, **_raw)
features_topic = app.topic(settings.features_topic, **_raw)
dlq_topic = app.topic(settings.dlq_topic, **_raw)
health_topic = app.topic(settings.health_topic, **_raw)
predictions_topic = app.topic(settings.predictions_topic, **_raw)
labels_topic = app.topic(settings.labels_topic, **_raw)
#: Partial drift sketches of every worker and joined labels, to the one aggregator (app/drift.py).
monitoring_topic = app.topic(settings.monitoring_topic, partitions=1, **_raw)
feature_drift_topic = app.topic(settings.feature_drift_topic, **_raw)
pred_drift_topic = app.topic(settings.pred_drift_topic, **_raw)
