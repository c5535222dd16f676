"""The rest of the fraud loop (SPEC 10): labels to their predictions, drift and model quality out.

* ``velocity-labels`` reads ``LABELS_TOPIC`` (few records: Faust's own
  per-message path). A bad label is a dead letter; a good one goes over the
  re-keying topic to the partition that logged its prediction (its user's;
  every partition when it has no key), where the hot path joins it
  (agents/features.py, ``join_label``).
* Every worker sends its drift partial when a window ends (a timer).
* ``velocity-monitoring`` reads the internal monitoring topic (one
  partition: one worker aggregates) and publishes the drift records and the
  online model quality (app/drift.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agents.features import (
    Origin,
    TransactionOf,
    publish,
    send_dead_letter,
    transactional_id,
)
from app.faust_ext import kafka_producer, timer
from app.main import (
    app,
    feature_drift_topic,
    label_join,
    labels_topic,
    monitoring_topic,
    pred_drift_topic,
    rekey_topic,
    settings,
)
from app.readiness import is_ready
from records.errors import ProcessingError, RejectedMessage
from records.label import LABEL_KEY, carried_label, parse_label
from tables.monitoring import aggregator, observer
from tables.user_state import owner_partition

log = logging.getLogger(__name__)

MONITORING = monitoring_topic.get_topic_name()
#: How often a worker looks for an ended window to send (seconds).
PARTIAL_EVERY_S = min(1.0, settings.drift_window_s / 4)


async def each_message(stream: Any, handle: Callable[[TransactionOf, Any], Awaitable[None]]) -> None:
    """Faust's per-message path for the loop's small topics: each message under the processing
    boundary (no commit between its outputs and its ack), skipped if stale, its outputs in its
    input partition's transaction."""
    async for event in stream.events():
        message = event.message
        async with app.message_boundary:
            if app.is_stale(message):
                continue
            await handle(TransactionOf(transactional_id(message.tp)), message)
            app.processed(message)
            event.ack()


async def route_label(
    work: TransactionOf, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> None:
    """One message of LABELS_TOPIC: a dead letter, or carried to where its prediction may be logged."""
    origin = Origin(topic, partition, offset, key, None, value)
    try:
        label = parse_label(value)
    except RejectedMessage as exc:
        await send_dead_letter(work, origin, exc.error_type, exc.message)
        app.metrics.on_label("invalid")
        return
    except Exception as exc:
        log.exception("label %s[%s]@%s could not be read", topic, partition, offset)
        await send_dead_letter(work, origin, ProcessingError.error_type, f"{type(exc).__name__}: {exc}")
        app.metrics.on_label("invalid")
        return
    if key:
        target = owner_partition(key, settings.topic_partitions)
        await publish(work, rekey_topic, LABEL_KEY, carried_label(label, probe=False), partition=target)
        return
    carried = carried_label(label, probe=True)
    for target in range(settings.topic_partitions):
        await publish(work, rekey_topic, LABEL_KEY, carried, partition=target)


if label_join(settings):

    @app.agent(labels_topic, name="velocity-labels")
    async def route_labels(stream: Any) -> None:
        """Labels to the partitions of their predictions (see the module doc)."""

        async def handle(work: TransactionOf, message: Any) -> None:
            await route_label(
                work, message.topic, message.partition, message.offset, message.key, message.value
            )

        await each_message(stream, handle)


async def aggregate(work: TransactionOf, key: bytes | None, value: bytes | None) -> None:
    """One message of the monitoring topic: a worker's partial, or a joined label."""
    try:
        message = orjson.loads(value or b"")
        if message.get("kind") == "label":
            aggregator.on_label(message)
            return
        outputs = aggregator.on_partial(message)
    except Exception:
        log.exception("monitoring message %r could not be aggregated", (value or b"")[:200])
        return
    for kind, out_key, record in outputs:
        topic = pred_drift_topic if kind == "pred" else feature_drift_topic
        await publish(work, topic, out_key.encode("utf-8"), orjson.dumps(record))
        app.metrics.on_drift(record)
        if record["warning"]:
            log.warning(
                "drift: %s PSI %.3f >= %.3f in the window from %s (%d values; reference %s)",
                record["feature"] if kind == "feature" else f"score of {out_key}",
                record["psi"],
                record["threshold"],
                time.strftime("%H:%M:%S", time.localtime(record["window_start"])),
                record["count"] + record["nulls"],
                record["reference"],
            )


@app.agent(monitoring_topic, name="velocity-monitoring")
async def monitor(stream: Any) -> None:
    """The one aggregator of drift partials and joined labels (app/drift.py)."""

    async def handle(work: TransactionOf, message: Any) -> None:
        await aggregate(work, message.key, message.value)

    await each_message(stream, handle)


@timer(app, PARTIAL_EVERY_S)
async def send_drift_partials() -> None:
    """This worker's partials of the windows that ended (an empty one says it saw nothing)."""
    if not is_ready():
        return
    source = str(app.conf.canonical_url)
    for partial in observer.take_finished(time.time()):
        partial["source"] = source
        try:
            # Outside any transaction (tid None): under exactly_once, Faust's own send would put it in
            # the transaction of the monitoring partition, which commits only when the aggregator
            # consumes something, and the aggregator consumes only partials: none would ever show.
            # The producer itself, not agents.features.send: an undelivered partial must not stop
            # the worker (a feature record's does).
            producer = kafka_producer(app, None)
            if producer is None:
                raise RuntimeError("the producer is not running")
            await producer.send(MONITORING, orjson.dumps(partial), key=source.encode("utf-8"), partition=0)
        except Exception as exc:  # noqa: BLE001 - a lost partial is a thinner window, never a stop
            log.warning("could not send the drift partial of %s: %r", partial["window_start"], exc)
