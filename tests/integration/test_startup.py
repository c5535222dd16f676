"""A worker refuses bad configuration with one clear line, before doing anything."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Topics, create_topics, wait_for

pytestmark = pytest.mark.integration


def exited(worker: Any) -> int | None:
    return None if worker.alive() else worker.proc.returncode


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOPIC_PARTITIONS", "eight"),
        ("WEB_PORT", "70000"),
        ("PROCESSING_GUARANTEE", "maybe"),
        ("ALLOWED_LATENESS_S", "-1"),
    ],
)
def test_bad_setting_fails_fast_naming_the_variable(spawn: Any, variable: str, value: str) -> None:
    worker = spawn(**{variable: value})
    wait_for(lambda: not worker.alive(), 60, "the worker to exit")
    assert worker.proc.returncode != 0
    log = worker.log_path.read_text()
    assert variable in log and "Traceback" not in log, log
    assert len([line for line in log.splitlines() if line.strip()]) == 1, log


def test_input_topic_with_another_partition_count_is_refused(topics: Topics, spawn: Any) -> None:
    other = f"tx-other-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics([other], topics.partitions + 2))
    worker = spawn(TRANSACTIONS_TOPIC=other)
    wait_for(lambda: not worker.alive(), 90, "the worker to refuse to start")
    assert worker.proc.returncode != 0
    refusal = [line for line in worker.log_path.read_text().splitlines() if "refusing to start" in line]
    assert len(refusal) == 1, worker.tail()
    assert f"{topics.partitions + 2} partitions" in refusal[0]
    assert f"TOPIC_PARTITIONS={topics.partitions}" in refusal[0]


def test_missing_topics_are_created_with_topic_partitions(spawn: Any, kafka: str) -> None:
    tag = uuid.uuid4().hex[:8]
    names = {
        "TRANSACTIONS_TOPIC": f"new-tx-{tag}",
        "FEATURES_TOPIC": f"new-f-{tag}",
        "DLQ_TOPIC": f"new-d-{tag}",
    }
    worker = spawn(TOPIC_PARTITIONS="3", **names)
    worker.wait_ready()
    counts = asyncio.run(partition_counts(kafka, list(names.values())))
    assert counts == {name: 3 for name in names.values()}


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {m["topic"]: len(m["partitions"]) for m in await admin.describe_topics(names)}
    finally:
        await admin.close()
