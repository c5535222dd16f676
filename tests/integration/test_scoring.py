"""Scoring and prediction logging on the real broker (SPEC 10): a prediction for every feature record."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import Any

import pytest

from app.kafka_admin import partition_counts
from app.scoring import BUNDLED_MODEL
from tests.integration.conftest import BOOTSTRAP, TopicReader, Topics, produce
from tests.integration.test_pipeline import build_stream, expected_outcomes

pytestmark = pytest.mark.integration


def bundled_score(record: dict[str, Any]) -> float:
    """The bundled model applied to a record, from its file, written out here independently."""
    body = json.loads(BUNDLED_MODEL.read_text())
    z = body["intercept"]
    for item in body["inputs"]:
        raw = record[item["name"]]
        if raw is None:
            continue
        x = math.log1p(max(float(raw), 0.0)) if item["transform"] == "log1p" else float(raw)
        z += item["coef"] * (x - item["mean"]) / item["scale"]
    return 1.0 / (1.0 + math.exp(-z))


async def test_every_feature_record_is_scored_and_logged(topics: Topics, spawn: Any) -> None:
    predictions_topic = topics.predictions
    worker = spawn()
    worker.wait_ready()
    stream = build_stream(topics.partitions)
    sent = await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    want, _, _ = expected_outcomes(stream, topics.transactions, sent)
    total = sum(len(v) for v in want.values())  # accepted and duplicates: each publishes a record
    async with TopicReader(topics.features) as features, TopicReader(predictions_topic) as predictions:
        await features.until(lambda ms: len(ms) >= total, 120, f"{total} feature records")
        await predictions.until(lambda ms: len(ms) >= total, 60, f"{total} predictions")
        records = await features.until_end(60)
        scored = await predictions.until_end(60)
    assert len(records) == total
    assert len(scored) == len(records)
    body = json.loads(BUNDLED_MODEL.read_text())
    by_record = Counter((r["transaction_id"], r["computed_at"]) for _, r, _ in records)
    assert Counter((p["transaction_id"], p["features_at"]) for _, p, _ in scored) == by_record
    features_by = {
        (r["transaction_id"], r["computed_at"]): (key, r, partition) for key, r, partition in records
    }
    for key, p, partition in scored:
        f_key, record, f_partition = features_by[(p["transaction_id"], p["features_at"])]
        assert key == f_key == p["user_id"].encode() and partition == f_partition  # per-user order
        assert set(p) == {"transaction_id", "user_id", "score", "model_version", "features_at", "scored_at"}
        assert p["model_version"] == body["model_version"]
        assert 0.0 <= p["score"] <= 1.0 and math.isclose(p["score"], bundled_score(record), abs_tol=1e-12)
        assert p["features_at"] <= p["scored_at"] <= time.time()
    stats = worker.stats()
    assert stats["predictions_total"] == len(records) and stats["scoring_failures_total"] == 0


async def test_scoring_off_publishes_no_prediction(topics: Topics, spawn: Any) -> None:
    predictions_topic = f"unused-{topics.predictions}"
    worker = spawn(SCORING="off", PREDICTIONS_TOPIC=predictions_topic)
    worker.wait_ready()
    stream = build_stream(topics.partitions)
    await produce([(m.key, m.value, m.partition) for m in stream.messages[:50]], topics.transactions)
    async with TopicReader(topics.features) as features:
        await features.until(lambda ms: len(ms) > 0 and worker.stats()["lag_total"] == 0, 120, "records")
    assert worker.stats()["predictions_total"] == 0
    assert predictions_topic not in await partition_counts(f"kafka://{BOOTSTRAP}", [predictions_topic])


def test_a_model_that_cannot_be_loaded_stops_the_start_in_one_line(topics: Topics, spawn: Any) -> None:
    worker = spawn(MODEL="/nonexistent/model.json")
    assert worker.proc is not None
    worker.proc.wait(timeout=120)
    log = worker.log_path.read_text()
    assert worker.proc.returncode != 0
    assert "velocity: cannot start: MODEL='/nonexistent/model.json': cannot read" in log, log
    assert "Traceback" not in log
