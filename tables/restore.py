"""Bulk restore of the state table's active partitions from their changelog.

Faust restores a changelog one event at a time (a queue, a task per get,
per-event bookkeeping): a few thousand records/s. Before Faust looks at where
to start (``app.on_before_active_restore``, sent by ``app/faust_ext.py``'s
``Recovery``), this reads each active changelog partition
from the offset the local RocksDB already has up to the high watermark
Faust just measured, with a plain consumer (large fetches,
``read_committed`` under exactly_once), and writes RocksDB write batches,
recording the persisted offset after each. Faust then starts from there and
reads only what was written since (nothing, usually).

Only partitions with at least ``MIN_RECORDS`` records to read are done here;
standby partitions stay with Faust (they follow the changelog continuously).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.faust_ext import connect, partition_db, persisted_offset, set_persisted_offset, uses_rocksdict
from app.kafka_admin import bootstrap_servers
from app.main import app, settings
from tables.user_state import user_state

log = logging.getLogger(__name__)

MIN_RECORDS = 1000
FETCH_RECORDS = 20_000


async def bulk_restore(sender: Any, tps: set[Any], highwaters: Mapping[Any, int], **kwargs: Any) -> None:
    if not uses_rocksdict(user_state):
        return  # memory store (unit tests): leave it to Faust
    changelog = user_state.changelog_topic.get_topic_name()
    todo: dict[TopicPartition, tuple[int, int]] = {}
    for tp in tps:
        if tp.topic != changelog:
            continue
        last = highwaters.get(tp)  # offset of the last record (Faust's "highwater" is end - 1)
        persisted = persisted_offset(user_state, tp)
        start = 0 if persisted is None else persisted + 1
        if last is not None and last + 1 - start >= MIN_RECORDS:
            todo[TopicPartition(tp.topic, tp.partition)] = (start, last + 1)
    if not todo:
        return
    started = time.monotonic()
    exactly_once = settings.processing_guarantee == "exactly_once"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.broker_url),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if exactly_once else "read_uncommitted",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    applied = 0
    try:
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        pending = dict(todo)
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=FETCH_RECORDS)
            for tp, records in batches.items():
                if not records:
                    continue
                batch = rocksdict.WriteBatch(raw_mode=True)
                for r in records:
                    if r.value is None:
                        batch.delete(r.key)
                    else:
                        batch.put(r.key, r.value)
                partition_db(user_state, tp.partition).write(batch)
                set_persisted_offset(user_state, tp, records[-1].offset)
                applied += len(records)
            for tp in list(pending):
                # Transaction markers and compacted gaps take offsets too: done by position.
                if await consumer.position(tp) >= pending[tp][1]:
                    del pending[tp]
    finally:
        await consumer.stop()
    seconds = time.monotonic() - started
    app.metrics.on_bulk_restore(applied, started)
    log.info(
        "bulk restore: %d changelog records for %d partitions in %.2fs (%.0f records/s)",
        applied,
        len(todo),
        seconds,
        applied / seconds if seconds > 0 else 0.0,
    )


connect(app.on_before_active_restore, bulk_restore)
