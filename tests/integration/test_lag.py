"""``faust -A app lag`` against the real broker and a real worker: offsets, lag, freshness, exit status."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest

from tests.integration.conftest import FAUST, REPO, Topics, Worker, produce, wait_for
from tests.integration.streams import Stream

pytestmark = pytest.mark.integration


def run_lag(worker: Worker, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FAUST, "-A", "app", "lag", *args],
        cwd=REPO,
        env={**worker.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(output: str, topic: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.split()[:1] == [topic]]


def test_lag_reports_each_partition_and_fails_above_max_lag(topics: Topics, spawn: Any) -> None:
    worker = spawn()
    worker.wait_ready()
    stream = Stream()
    now = time.time()
    for i in range(200):
        user = f"lag-user-{i % 20}"
        stream.add_tx(user, "direct", topics.partitions, f"lag-{i}", now - 600 + i, 3.0, "m1")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions))
    wait_for(lambda: worker.stats()["processed_total"] == 200, 120, "every transaction")
    # The worker commits every few seconds: lag answers 0 once it has.
    last: list[subprocess.CompletedProcess[str]] = []

    def caught_up() -> bool:
        last[:] = [run_lag(worker, "--max-lag", "0", "--url", worker.url)]
        return last[0].returncode == 0

    wait_for(caught_up, 120, "faust -A app lag --max-lag 0 to succeed")
    done = last[0]
    input_rows = rows(done.stdout, topics.transactions)
    assert len(input_rows) == topics.partitions
    assert sum(int(r[3]) for r in input_rows) == 200  # end offsets
    assert all(r[2] == r[3] and r[4] == "0" for r in input_rows)  # committed == end
    assert "workers: 1/1 answering" in done.stdout and "freshness p50" in done.stdout

    worker.stop()
    more = Stream()
    for i in range(50):
        more.add_tx("lag-user-0", "direct", topics.partitions, f"lag-more-{i}", now - 100 + i, 3.0, "m1")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in more.messages], topics.transactions))
    behind = run_lag(worker, "--max-lag", "10")
    assert behind.returncode == 1, behind.stdout + behind.stderr
    assert rows(behind.stdout, "total") == [["total", "50"]]
    assert "no answer from" in behind.stdout and "above --max-lag 10" in behind.stdout


def test_an_unknown_topic_is_one_line_not_a_traceback(topics: Topics, spawn: Any) -> None:
    worker = spawn()  # only for its environment; lag reads the broker
    worker.stop()
    missing = run_lag(worker, TRANSACTIONS_TOPIC="no-such-topic-for-lag")
    assert missing.returncode != 0
    assert "topic 'no-such-topic-for-lag' does not exist" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr
