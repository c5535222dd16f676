"""Topic creation and the partition-count check done before a worker starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from records.errors import TopicMismatchError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    must_match: bool  # co-partitioned with the tables: the count must be exact


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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(broker_url))
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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(broker_url))
    await admin.start()
    try:
        return await _partition_counts(admin, names)
    finally:
        await admin.close()
