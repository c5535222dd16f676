"""Metrics, stats, health logs, the health topic and the live page, against a known stream."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import TopicReader, Topics, produce, wait_for
from tests.integration.streams import H, Stream, invalid_messages

pytestmark = pytest.mark.integration


def metrics(worker: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = worker.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def known_stream(partitions: int) -> tuple[Stream, Counter[str], int, int]:
    """(stream, expected dead letters by type, accepted, duplicates)."""
    now = time.time()
    stream = Stream()
    accepted = duplicates = 0
    for u in range(7):
        user = f"h-user-{u}"
        for k in range(5):
            stream.add_tx(user, "direct", partitions, f"{user}-{k}", now - 900 + 60 * k, 10.0 + k, f"m{k}")
            accepted += 1
        stream.add_tx(user, "direct", partitions, f"{user}-0", now - 900, 10.0, "m0")  # duplicate
        duplicates += 1
        stream.add_tx(user, "unkeyed", partitions, f"{user}-late", now - 900 + 240 - H - 1, 1.0, "m0")  # late
    invalid_messages(stream, partitions, now)
    letters = Counter(m.invalid for m in stream.messages if m.invalid)
    letters["LateEvent"] += 7
    return stream, letters, accepted, duplicates


async def test_metrics_stats_logs_and_health_topic_tell_the_truth(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]
) -> None:
    features, dlq = readers
    health_topic = f"health-{uuid.uuid4().hex[:8]}"
    worker = spawn(
        HEALTH_LOG_INTERVAL_S="1", LAG_WARN_MESSAGES="50", FRESHNESS_WARN_S="0", HEALTH_TOPIC=health_topic
    )
    worker.wait_ready()
    before = metrics(worker)
    assert before[("velocity_transactions_processed_total", ())] == 0
    assert before[("velocity_table_users", ())] == 0

    stream, letters, accepted, duplicates = known_stream(topics.partitions)
    await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    await features.until(lambda ms: len(ms) >= accepted + duplicates, 90, "all feature records")
    await dlq.until(lambda ms: len(ms) >= sum(letters.values()), 60, "all dead letters")

    def settled() -> dict[Any, float] | None:
        m = metrics(worker)
        lags = [v for (name, _), v in m.items() if name == "velocity_consumer_lag"]
        return m if lags and all(v == 0 for v in lags) else None

    m = wait_for(settled, 60, "consumer lag to reach 0 after catch-up")
    assert m[("velocity_transactions_processed_total", ())] == accepted
    assert m[("velocity_duplicates_total", ())] == duplicates
    for error_type in ("DecodeError", "ValidationError", "LateEvent", "ProcessingError"):
        assert m[("velocity_dead_letters_total", (("error_type", error_type),))] == letters[error_type], (
            error_type
        )
    assert m[("velocity_table_users", ())] == 7
    assert m[("velocity_feature_freshness_seconds_count", ())] == accepted + duplicates
    lag_labels = {dict(labels)["topic"] for (name, labels) in m if name == "velocity_consumer_lag"}
    assert topics.transactions in lag_labels
    assert {
        int(dict(labels)["partition"])
        for (name, labels) in m
        if name == "velocity_consumer_lag" and dict(labels)["topic"] == topics.transactions
    } == set(range(topics.partitions))

    status, _, mine = worker.get("/stats?scope=worker")
    assert status == 200
    assert (mine["processed_total"], mine["duplicates_total"], mine["users"]) == (accepted, duplicates, 7)
    assert mine["dead_letters"] == {k: letters[k] for k in mine["dead_letters"]}
    assert mine["freshness_p50_s"] is not None and 0 <= mine["freshness_p50_s"] <= mine["freshness_p99_s"]
    assert mine["lag_total"] == 0 and mine["partitions"] == list(range(topics.partitions))
    status, _, cluster = worker.get("/stats")
    assert status == 200 and cluster["cluster"]["workers"] == 1
    assert cluster["cluster"]["processed_total"] == accepted
    assert cluster["cluster"]["dead_letters_total"] == sum(letters.values())
    assert worker.get("/stats?scope=galaxy")[0] == 400

    # Timers: one health line per interval, warnings past the thresholds.
    log = wait_for(
        lambda: (t := worker.log_path.read_text()).count("health: rate=") >= 2 and t, 30, "health lines"
    )
    assert f"processed={accepted}" in log or "processed=" in log
    assert "FRESHNESS_WARN_S=0" in log

    # The leader publishes the cluster view to the health topic.
    async with TopicReader(health_topic) as reader:
        records = await reader.until(
            lambda ms: any(v["cluster"]["processed_total"] == accepted for _, v, _ in ms),
            30,
            "a health record with every transaction counted",
        )
    record = records[-1][1]
    assert record["app_id"] == worker.env["APP_ID"] and record["workers"][0]["ready"] is True


async def test_lag_is_visible_while_the_worker_is_behind(topics: Topics, spawn: Any) -> None:
    worker = spawn(HEALTH_LOG_INTERVAL_S="1", LAG_WARN_MESSAGES="100")
    worker.wait_ready()
    now = time.time()
    stream = Stream()
    for k in range(4000):
        user = f"lag-user-{k % 50}"
        stream.add_tx(user, "direct", topics.partitions, f"lag-{k}", now - 600 + k * 0.1, 5.0, "m1")
    await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    seen = wait_for(
        lambda: (s := worker.get("/stats?scope=worker")[2])["lag_total"] > 0 and s,
        60,
        "lag > 0 while the worker catches up",
    )
    assert seen["lag_total"] <= 4000
    wait_for(lambda: worker.get("/stats?scope=worker")[2]["processed_total"] == 4000, 120, "catch-up")
    wait_for(lambda: worker.get("/stats?scope=worker")[2]["lag_total"] == 0, 60, "lag back to 0")
    assert "LAG_WARN_MESSAGES=100" in worker.log_path.read_text()


async def test_live_page_in_a_real_browser(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    features, _ = readers
    worker = spawn()
    worker.wait_ready()
    stream, _, accepted, duplicates = known_stream(topics.partitions)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto(worker.url + "/")
            await page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
            await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
            await features.until(lambda ms: len(ms) >= accepted + duplicates, 90, "all feature records")
            await page.wait_for_function(
                f"document.getElementById('k-processed').textContent === '{accepted}'", timeout=30000
            )
            await page.wait_for_function(
                "parseFloat(document.getElementById('k-rate').textContent) > 0", timeout=30000
            )
            await page.fill("#lookup-user", "h-user-3")
            await page.click("#lookup-form button")
            await page.wait_for_selector("#lookup-features", timeout=10000)
            text = await page.inner_text("#lookup-features")
            _, _, body = worker.get("/features/h-user-3")
            assert body["transaction_id"] in text and f"tx_count_1h\n{body['tx_count_1h']}" in text.replace(
                "\t", "\n"
            )
            assert problems == [], problems
            # An unknown user: the page shows the 404 (Chromium logs the failed fetch itself).
            await page.fill("#lookup-user", "nobody-here")
            await page.click("#lookup-form button")
            await page.wait_for_function(
                "document.getElementById('lookup-result').textContent.startsWith('404')"
            )
            await page.screenshot(path=str(tmp_path / "dashboard.png"))
            assert all("404" in p for p in problems), problems
        finally:
            await browser.close()


def chromium_path() -> str:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
