"""Topic creation, the partition-count check done before a worker starts, and bounded topic reads."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from records.errors import TopicMismatchError, VelocityError

log = logging.getLogger(__name__)

#: Records fetched per partition at a time by :func:`read_merged`.
FETCH_RECORDS = 2_000
#: A partition read by :func:`read_merged` that makes no progress for this long is an error.
READ_STALL_S = 60.0


class ReadStalled(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """A bounded read made no progress (a broker gone, a stuck transaction)."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    must_match: bool  # co-partitioned with the tables: the count must be exact


#: Security options (app/kafka_security.py) of every client this process opens; set by :func:`configure`.
_security: dict[str, Any] = {"security_protocol": "PLAINTEXT"}


def configure(security_options: Mapping[str, Any]) -> None:
    """The process's Kafka security (done once at start by app.main, from the settings)."""
    _security.clear()
    _security.update(security_options)


def client_options(broker_url: str) -> dict[str, Any]:
    """``bootstrap_servers`` and the security options, for any aiokafka client."""
    return {"bootstrap_servers": bootstrap_servers(broker_url), **_security}


class ConnectFailed(VelocityError):
    """The first contact with the broker failed: wrong password, untrusted certificate, nothing there."""


async def preflight(
    broker_url: str, explain: Callable[[BaseException], str], timeout_s: float = 20.0
) -> None:
    """Connect (and authenticate) to the first bootstrap server that answers, once; else one clear error.

    aiokafka's clients log why each bootstrap server failed and raise "Unable to
    bootstrap"; this opens one connection with the same options itself, so the
    error names the cause (SASL authentication, certificate, refused).
    """
    from aiokafka.conn import create_conn

    errors: list[BaseException] = []
    for server in bootstrap_servers(broker_url):
        host, _, port = server.rpartition(":")
        try:
            connecting = create_conn(
                host.strip("[]"), int(port), request_timeout_ms=int(timeout_s * 1000), **_security
            )
            conn = await asyncio.wait_for(connecting, timeout_s)
        except (OSError, KafkaError, TimeoutError, ValueError) as exc:
            errors.append(exc)
            continue
        conn.close()
        return
    raise ConnectFailed(explain(errors[0] if errors else RuntimeError("no bootstrap server")))


def bootstrap_servers(broker_url: str) -> list[str]:
    """``kafka://a:9092;kafka://b:9092`` -> ``["a:9092", "b:9092"]``."""
    servers = []
    for part in broker_url.replace(",", ";").split(";"):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            servers.append(part)
    return servers


async def ensure_topics(broker_url: str, specs: list[TopicSpec], replication_factor: int = 1) -> list[str]:
    """Create the missing topics; raise :class:`TopicMismatchError` on a wrong count.

    Returns the names of the topics it created.
    """
    admin = AIOKafkaAdminClient(**client_options(broker_url))
    await admin.start()
    try:
        existing = await _partition_counts(admin, [s.name for s in specs])
        for spec in specs:
            have = existing.get(spec.name)
            if have is not None and spec.must_match and have != spec.partitions:
                raise TopicMismatchError(
                    f"topic {spec.name!r} has {have} partitions but TOPIC_PARTITIONS={spec.partitions}; "
                    "tables are co-partitioned with it, so the counts must be equal"
                )
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            try:
                await admin.create_topics([NewTopic(spec.name, spec.partitions, replication_factor)])
                created.append(spec.name)
                log.info("created topic %s with %s partitions", spec.name, spec.partitions)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
        return created
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for meta in await admin.describe_topics(names):
        if meta.get("error_code", 0) == 0 and meta.get("partitions"):
            counts[meta["topic"]] = len(meta["partitions"])
    return counts


async def partition_counts(broker_url: str, names: list[str]) -> dict[str, int]:
    """Partitions of each existing topic of ``names`` (a missing topic is left out)."""
    admin = AIOKafkaAdminClient(**client_options(broker_url))
    await admin.start()
    try:
        return await _partition_counts(admin, names)
    finally:
        await admin.close()


async def read_merged(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    ends: Mapping[TopicPartition, int],
    stall_s: float = READ_STALL_S,
) -> AsyncIterator[Any]:
    """The records of ``tps`` (assigned to ``consumer``) below ``ends``, without a consumer group.

    Each partition in offset order, the partitions merged by Kafka timestamp
    (ties: partition, offset). A partition whose position does not move for
    ``stall_s`` raises :class:`ReadStalled` (a broker gone, a stuck transaction).
    """
    buffers: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in tps}

    async def fill(tp: TopicPartition) -> None:
        buffer = buffers[tp]
        end = ends[tp]
        moved_at = time.monotonic()
        while not buffer:
            position = await consumer.position(tp)
            if position >= end:
                return
            got = await consumer.getmany(tp, timeout_ms=500, max_records=FETCH_RECORDS)
            buffer.extend(r for r in got.get(tp, ()) if r.offset < end)
            if await consumer.position(tp) > position:
                moved_at = time.monotonic()
            elif time.monotonic() - moved_at > stall_s:
                raise ReadStalled(
                    f"{tp.topic}[{tp.partition}] made no progress at offset {position} for {stall_s:.0f}s"
                )

    heap: list[tuple[int, int, int, TopicPartition]] = []

    def push(tp: TopicPartition) -> None:
        head = buffers[tp][0]
        timestamp = head.timestamp if head.timestamp is not None and head.timestamp >= 0 else 0
        heapq.heappush(heap, (timestamp, tp.partition, head.offset, tp))

    for tp in tps:
        await fill(tp)
        if buffers[tp]:
            push(tp)
    while heap:
        tp = heapq.heappop(heap)[3]
        buffer = buffers[tp]
        yield buffer.popleft()
        if not buffer:
            await fill(tp)
        if buffer:
            push(tp)


async def read_to_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], stall_s: float = READ_STALL_S
) -> AsyncIterator[Any]:
    """Every record of ``tps`` from the beginning to the end offsets as of now (see :func:`read_merged`)."""
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = {tp: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
    async for record in read_merged(consumer, tps, ends, stall_s):
        yield record
