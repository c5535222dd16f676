"""Before Faust restores the state table's partitions: drop uncommitted state, restore in bulk.

Both run when ``app/faust_ext.py``'s ``Recovery`` sends ``app.on_before_restore``,
before Faust reads where each partition's local store is.

**Uncommitted state.** A partition whose RocksDB carries the uncommitted mark
(``tables/user_state.py``) was written by a worker that died before
committing: its local state holds writes of an aborted transaction
(exactly_once) or writes whose changelog records may never have been
delivered (at_least_once). It is emptied, so that it is restored from the
changelog (read_committed under exactly_once). Other partitions keep their state.

**Bulk restore.** Faust restores a changelog one event at a time (a queue, a
task per get, per-event bookkeeping): a few thousand records/s. This reads each
active changelog partition
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
from app.kafka_admin import client_options
from app.main import app, settings
from tables.expiry import stream_time_key
from tables.user_state import UNCOMMITTED_KEY, user_state

log = logging.getLogger(__name__)

MIN_RECORDS = 1000
FETCH_RECORDS = 20_000
#: Every key of the table sorts below this (UTF-8 user ids and Faust's offset key), except the mark.
_KEYS_END = b"\xff"


async def before_restore(
    sender: Any, tps: set[Any], highwaters: Mapping[Any, int], title: str, **kwargs: Any
) -> None:
    if not uses_rocksdict(user_state):
        return  # memory store (unit tests): leave it to Faust
    changelog = user_state.changelog_topic.get_topic_name()
    ours = {tp for tp in tps if tp.topic == changelog}
    drop_uncommitted_state(ours, title)
    if title == "active":  # standbys follow the changelog continuously; Faust does them
        await bulk_restore(ours, highwaters)


def drop_uncommitted_state(tps: set[Any], title: str) -> None:
    for tp in tps:
        db = partition_db(user_state, tp.partition)
        if db.get(UNCOMMITTED_KEY) is None:
            continue
        log.warning(
            "%s partition %s of the state table holds writes no committed transaction covers "
            "(the worker stopped before committing): emptying it to restore it from the changelog",
            title,
            tp.partition,
        )
        db.delete_range(b"", _KEYS_END)  # every head and chunk, and the persisted offset
        db.delete(stream_time_key(tp.partition))  # as uncommitted as the rest: the changelog's is restored
        db.delete(UNCOMMITTED_KEY)
        app.metrics.on_uncommitted_state_dropped()


async def bulk_restore(tps: set[Any], highwaters: Mapping[Any, int]) -> None:
    todo: dict[TopicPartition, tuple[int, int]] = {}
    for tp in tps:
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
        **client_options(settings.broker_url),
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


connect(app.on_before_restore, before_restore)
