"""The Faust App. A leaf: it imports only ``app.settings`` and helpers of its own package.

Agents, views and commands are found by Faust's autodiscovery when a worker or
command starts, so nothing here imports them.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import faust

from app import codecs as _orjson_codec  # noqa: F401  (registers the "orjson" codec)
from app import faust_fixes
from app.kafka_admin import TopicMismatchError, TopicSpec, ensure_topics
from app.settings import Settings, SettingsError, load_settings
from app.web_errors import json_errors

log = logging.getLogger(__name__)

try:
    settings: Settings = load_settings()
except SettingsError as exc:  # one clear line, no traceback
    raise SystemExit(f"velocity: bad configuration: {exc}") from None


faust_fixes.apply()

# Full (generation 2) garbage collections walk every object the worker holds
# -- the cached windows are about a million objects at 100,000 users -- and
# took 280-380 ms each, 21 times in 3 minutes of a full-size run, finding
# almost nothing to free (nothing on the hot path builds reference cycles):
# each one stalled the event loop, so lookups and the stream with it. Make
# them 100x rarer (Python's default third threshold is 10), freeze what
# exists once the worker is up, and log any full collection over 100 ms.
gc.set_threshold(700, 10, 1000)
_gc_started = [0.0]


def _watch_full_collections(phase: str, info: dict[str, int]) -> None:
    if info.get("generation") != 2:
        return
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    elif (took := time.perf_counter() - _gc_started[0]) > 0.1:
        log.warning("full garbage collection took %.0f ms (freed %s)", took * 1000, info.get("collected"))


gc.callbacks.append(_watch_full_collections)


class VelocityApp(faust.App):
    """``faust.App`` that creates and checks its topics before anything subscribes."""

    async def on_first_start(self) -> None:
        try:
            await ensure_topics(settings.broker_url, topic_specs(settings))
        except TopicMismatchError as exc:
            # One line and a clean exit code: nothing has started yet.
            sys.stderr.write(f"velocity: refusing to start: {exc}\n")
            sys.stderr.flush()
            os._exit(78)
        Path(settings.datadir).mkdir(parents=True, exist_ok=True)
        self._drop_state_of_an_unclean_stop()
        await super().on_first_start()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        _clean_stop_marker().touch()

    def _drop_state_of_an_unclean_stop(self) -> None:
        """Under exactly_once, start from the changelog after a crash or a kill.

        The local RocksDB holds the writes of transactions that were open when
        the worker died; they were aborted, and replaying the changelog from
        the last committed offset does not undo them. A worker that stopped
        cleanly committed (or aborted and rolled back nothing local) first.
        Kafka Streams does the same (it wipes a task's state after an unclean
        shutdown under exactly-once).
        """
        marker = _clean_stop_marker()
        tabledir = Path(self.conf.tabledir)
        if (
            settings.processing_guarantee == "exactly_once"
            and not marker.exists()
            and tabledir.is_dir()
            and any(tabledir.iterdir())
        ):
            log.warning(
                "the last run did not stop cleanly: removing the local table state in %s; "
                "it is restored from the changelog",
                tabledir,
            )
            shutil.rmtree(tabledir)
        marker.unlink(missing_ok=True)


def _clean_stop_marker() -> Path:
    return Path(settings.datadir) / "clean-stop"


def topic_specs(s: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(s.transactions_topic, s.topic_partitions, must_match=True),
        TopicSpec(s.rekey_topic, s.topic_partitions, must_match=True),
        TopicSpec(s.features_topic, s.topic_partitions, must_match=False),
        TopicSpec(s.dlq_topic, s.topic_partitions, must_match=False),
        TopicSpec(s.health_topic, 1, must_match=False),
    ]


app = VelocityApp(
    settings.app_id,
    broker=settings.broker_url,
    store=settings.store,
    datadir=settings.datadir,
    processing_guarantee=settings.processing_guarantee,
    topic_partitions=settings.topic_partitions,
    table_standby_replicas=settings.table_standby_replicas,
    web_port=settings.web_port,
    web_bind=settings.web_bind,
    web_host=settings.web_host,
    autodiscover=["agents", "app.views", "app.monitoring", "app.commands"],
    # Our own pages live at / and /stats; Faust's table browser would expose raw state.
    web_stats_enabled=False,
    web_tables_enabled=False,
    web_application_options={"middlewares": [json_errors]},
    origin="app",
    # Faust's consumer group for a brand-new app id starts from the beginning.
    consumer_auto_offset_reset="earliest",
    # Commit every second (Faust: 2.8 s): consumer lag is measured from the
    # committed offset, so this bounds what lag shows for work already done.
    broker_commit_interval=1.0,
    # Batch produce requests (features, changelog): fewer, larger requests.
    # Measured side by side on a 30,000-message catch-up: 5 ms -> 20 ms gave
    # +15-20% (2,090-2,123 -> 2,415-2,547 tx/s); records leave at most this
    # much later. PRODUCER_LINGER_MS trades one for the other.
    producer_linger=settings.producer_linger_ms / 1000.0,
    # Larger producer batches (Faust: 16 KiB, about three state heads) and
    # larger fetches (Faust: 1 MiB per partition, no poll limit tuned). Side
    # by side on a 30,000-message catch-up: 2,288 / 2,389 tx/s with Faust's
    # values, 2,838 / 2,827 with these (Faust's names, set from the
    # environment under the same names, validated in app/settings.py).
    producer_max_batch_size=settings.producer_max_batch_size,
    consumer_max_fetch_size=settings.consumer_max_fetch_size,
    broker_max_poll_records=settings.broker_max_poll_records,
)


async def _freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()


app.on_startup_finished = _freeze_startup_objects

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
#: What the agent consumes: the input topic and the internal re-keying hop.
inbound_topic = app.topic(
    settings.transactions_topic, settings.rekey_topic, partitions=settings.topic_partitions, **raw
)
rekey_topic = app.topic(settings.rekey_topic, partitions=settings.topic_partitions, **raw)
features_topic = app.topic(settings.features_topic, **raw)
dlq_topic = app.topic(settings.dlq_topic, **raw)
health_topic = app.topic(settings.health_topic, **raw)
