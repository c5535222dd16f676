"""The rest of the fraud loop on the real broker (SPEC 10): labels joined, model quality, drift alerts."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from tests.integration.conftest import BOOTSTRAP, TopicReader, Topics, produce, wait_for

pytestmark = pytest.mark.integration

SCORE_BINS = 200  # the resolution of online quality (README): scores are compared bin by bin


def partition_of(user: str, partitions: int) -> int:
    return int(murmur2(user.encode()) & 0x7FFFFFFF) % partitions


def transaction(user: str, amount: float, ts: float | None = None) -> bytes:
    return orjson.dumps(
        {
            "transaction_id": f"tx-{uuid.uuid4().hex[:12]}",
            "user_id": user,
            "amount": round(amount, 2),
            "merchant_id": "m-1",
            "merchant_category": "grocery",
            "timestamp": time.time() if ts is None else ts,
            "is_online": False,
        }
    )


async def paced(topic: str, seconds: float, per_tick: int, amount_factor: float, rng: random.Random) -> None:
    """Steady traffic for ``seconds``: ``per_tick`` transactions every 0.25 s, each of a new user.

    New users only: every feature of every record has the same distribution from the first
    record on (counts 1, no gap, sums = the amount), so stable traffic is stable from the start.
    """
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < seconds:
            for _ in range(per_tick):
                user = f"u-{uuid.uuid4().hex[:10]}"
                amount = min(rng.lognormvariate(3.5, 0.8) * amount_factor, 99_999.0)
                await producer.send(topic, value=transaction(user, amount), key=user.encode())
            await producer.flush()
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * 0.25 - time.monotonic()))
    finally:
        await producer.stop()


async def test_a_drift_alert_on_a_shift_and_none_on_stable_traffic(topics: Topics, spawn: Any) -> None:
    # Windows of ~480 values (3 s at ~160 tx/s); a window needs 250 to warn: PSI is noisy on few values.
    worker = spawn(DRIFT_WINDOW_S="3", DRIFT_REFERENCE_S="9", DRIFT_MIN_COUNT="250")
    worker.wait_ready()
    rng = random.Random(5)
    await paced(topics.transactions, 24.0, 40, 1.0, rng)
    shifted_at = time.time()
    await paced(topics.transactions, 9.0, 40, 3.0, rng)  # every amount x3

    def alert_after_shift(ms: list[tuple[bytes | None, dict[str, Any], int]]) -> bool:
        return any(
            r["feature"] == "current_amount" and r["warning"] and r["window_start"] >= shifted_at
            for _, r, _ in ms
        )

    async with TopicReader(topics.feature_drift) as drift:
        records = [
            r for _, r, _ in await drift.until(alert_after_shift, 90, "a drift warning after the shift")
        ]
    stable = [r for r in records if r["window_end"] <= shifted_at]
    compared = [
        r for r in stable if r["feature"] == "current_amount" and r["psi"] is not None and r["count"] >= 250
    ]
    assert len(compared) >= 2, stable  # stable windows that had a reference and enough values
    assert not [r for r in stable if r["warning"]], [
        (r["feature"], r["psi"], r["count"]) for r in stable if r["warning"]
    ]
    # The first warning of a window wholly after the shift (the window the shift fell in is a mix).
    alert = next(
        r
        for r in records
        if r["feature"] == "current_amount" and r["warning"] and r["window_start"] >= shifted_at
    )
    assert alert["psi"] >= alert["threshold"] == 0.2
    assert alert["reference"]["kind"] == "previous" and alert["reference"]["count"] >= 250
    # The quantile summary shows the shift: the median of the window is about 3x the reference's.
    before = [r for r in compared if r["window_end"] <= shifted_at][-1]
    assert alert["quantiles"]["p50"] > 2 * before["quantiles"]["p50"]
    stats = worker.stats()
    assert stats["drift_warnings_total"] >= 1
    assert stats["drift"]["current_amount"]["feature"] == "current_amount"
    status, _, metrics = worker.get("/metrics")
    assert status == 200 and 'velocity_drift_warnings_total{feature="current_amount"}' in metrics


def binned_quality(pairs: list[tuple[float, int]], threshold: float) -> dict[str, float]:
    """Precision, recall and AUC of (score, label) pairs, written out here on the quality bins."""

    def bin_of(score: float) -> int:
        return min(int(score * SCORE_BINS), SCORE_BINS - 1)

    flagged = [(s, y) for s, y in pairs if bin_of(s) >= threshold * SCORE_BINS]
    positives = [bin_of(s) for s, y in pairs if y == 1]
    negatives = [bin_of(s) for s, y in pairs if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return {
        "precision": sum(y for _, y in flagged) / len(flagged),
        "recall": sum(1 for s, y in flagged if y == 1) / len(positives),
        "auc": wins / (len(positives) * len(negatives)),
    }


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_labels_join_their_predictions_keyed_or_not(topics: Topics, spawn: Any, guarantee: str) -> None:
    worker = spawn(DRIFT_WINDOW_S="1", PREDICTION_THRESHOLD="0.5", PROCESSING_GUARANTEE=guarantee)
    worker.wait_ready()
    rng = random.Random(3)
    users = [f"lab-{i:03d}" for i in range(40)]
    messages: list[tuple[bytes | None, bytes, int | None]] = []
    now = time.time()
    for i in range(80):
        user = users[i % len(users)]
        amount = rng.lognormvariate(3.0, 1.5) * (20 if i % 7 == 0 else 1)
        messages.append((user.encode(), transaction(user, amount, ts=now - 600 + i), None))
    await produce(messages, topics.transactions)
    async with TopicReader(topics.predictions) as reader:
        predictions = [p for _, p, _ in await reader.until(lambda ms: len(ms) >= 80, 120, "80 predictions")]
    labels: list[tuple[bytes | None, bytes, int | None]] = []
    truth: list[tuple[float, int]] = []
    for i, p in enumerate(predictions):
        label = 1 if p["score"] > 0.3 or i % 5 == 0 else 0
        truth.append((p["score"], label))
        key = p["user_id"].encode() if i % 2 == 0 else None  # SPEC 10: keyed by user, or not keyed at all
        body = {"transaction_id": p["transaction_id"], "label": label, "labeled_at": time.time()}
        labels.append((key, orjson.dumps(body), None))
    assert {y for _, y in truth} == {0, 1}
    labels.append(
        (b"lab-000", orjson.dumps({"transaction_id": "never-seen", "label": 1, "labeled_at": 1.0}), None)
    )
    labels.append((None, b'{"transaction_id": "x", "label": 7, "labeled_at": 1}', None))  # invalid
    await produce(labels, topics.labels)

    def joined() -> dict[str, int] | None:
        counts: dict[str, int] = worker.stats()["labels"]
        return counts if counts["joined"] >= 80 and counts["unmatched"] + counts["invalid"] >= 2 else None

    assert wait_for(joined, 90, "every label joined") == {"joined": 80, "unmatched": 1, "invalid": 1}
    want = binned_quality(truth, 0.5)
    async with TopicReader(topics.pred_drift) as reader:
        records = await reader.until(
            lambda ms: any(r["labelled"] == 80 for _, r, _ in ms), 60, "online quality of all 80 labels"
        )
    record = next(r for _, r, _ in records if r["labelled"] == 80)
    assert record["positives"] == sum(y for _, y in truth)
    for measure in ("precision", "recall", "auc"):
        assert abs(record[measure] - want[measure]) < 1e-9, (measure, record[measure], want[measure])
    assert record["model_version"] == predictions[0]["model_version"]
    hour = record["quality_by_hour"]
    assert [h["labelled"] for h in hour] == [80] and hour[0]["hour_start"] <= predictions[0]["scored_at"]
    async with TopicReader(topics.dlq) as dlq:
        letters = await dlq.until(lambda ms: len(ms) >= 1, 30, "the invalid label's dead letter")
    ((_, letter, _),) = letters
    assert letter["original_topic"] == topics.labels and letter["error_type"] == "ValidationError"
    assert "label: must be 0 or 1" in letter["error_message"]


async def test_a_prediction_not_labelled_within_label_wait_is_forgotten(topics: Topics, spawn: Any) -> None:
    worker = spawn(LABEL_WAIT_S="100", EXPIRY_SWEEP_INTERVAL_S="1")
    worker.wait_ready()
    home = partition_of("old-user", topics.partitions)
    newer = next(u for u in (f"new-{i}" for i in range(1000)) if partition_of(u, topics.partitions) == home)
    now = time.time()
    sent: list[tuple[bytes | None, bytes, int | None]] = [
        (b"old-user", transaction("old-user", 10.0, ts=now - 3000), None),
        (newer.encode(), transaction(newer, 12.0, ts=now), None),  # the partition's stream time moves on
    ]
    await produce(sent, topics.transactions)
    wait_for(
        lambda: worker.stats()["predictions_expired_total"] >= 1 or None, 60, "the old prediction to expire"
    )
    old_id, new_id = (orjson.loads(v)["transaction_id"] for _, v, _ in sent)
    labels: list[tuple[bytes | None, bytes, int | None]] = [
        (b"old-user", orjson.dumps({"transaction_id": old_id, "label": 1, "labeled_at": now}), None),
        (newer.encode(), orjson.dumps({"transaction_id": new_id, "label": 0, "labeled_at": now}), None),
    ]
    await produce(labels, topics.labels)
    counts = wait_for(
        lambda: ((c := worker.stats()["labels"])["joined"] + c["unmatched"] >= 2 and c) or None,
        60,
        "both labels",
    )
    assert counts == {"joined": 1, "unmatched": 1, "invalid": 0}
    assert worker.stats()["predictions_expired_total"] == 1
