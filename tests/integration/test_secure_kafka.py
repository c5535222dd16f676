"""The pipeline over TLS + SASL (SCRAM) on the local broker's SASL_SSL listener (scripts/kafka.sh).

``make kafka`` and ``.ci/run`` start the broker with ``KAFKA_SASL_SSL_PORT``: a throwaway CA,
the broker's and a client's certificates, a second CA that signed nothing of the broker's, and
a SCRAM user, all under the broker's data directory (``tls/env`` lists them).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import orjson
import pytest

from bench.harness import broker_tls_env, broker_tls_env_file
from tests.integration.conftest import FAUST, REPO, TopicReader, Topics, produce

pytestmark = pytest.mark.integration


@pytest.fixture
def tls() -> dict[str, str]:
    env = broker_tls_env()
    if env is None:
        pytest.fail(
            f"no SASL_SSL listener on the local broker ({broker_tls_env_file()} is missing): "
            "restart it with `scripts/kafka.sh stop && make kafka` (make kafka sets KAFKA_SASL_SSL_PORT)"
        )
    return env


def secure_env(tls: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {
        "BROKER_URL": f"kafka://{tls['KAFKA_SASL_SSL_BOOTSTRAP']}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": tls["KAFKA_SASL_USERNAME"],
        "KAFKA_SASL_PASSWORD_FILE": tls["KAFKA_SASL_PASSWORD_FILE"],
        "KAFKA_SSL_CAFILE": tls["KAFKA_SSL_CAFILE"],
    }
    env.update(overrides)
    return env


def transaction(txid: str, user: str, amount: float, ts: float) -> bytes:
    body = {"transaction_id": txid, "user_id": user, "amount": amount, "merchant_id": "m-1", "timestamp": ts}
    return orjson.dumps(body)


async def test_the_pipeline_end_to_end_over_sasl_ssl(topics: Topics, spawn: Any, tls: dict[str, str]) -> None:
    """A worker on SASL_SSL with SCRAM-SHA-512 and a client certificate (mutual TLS): records, lookups."""
    worker = spawn(
        **secure_env(
            tls, KAFKA_SSL_CERTFILE=tls["KAFKA_SSL_CERTFILE"], KAFKA_SSL_KEYFILE=tls["KAFKA_SSL_KEYFILE"]
        )
    )
    worker.wait_ready()
    now = time.time()
    users = [f"tls-{i}" for i in range(12)]
    sent: list[tuple[bytes | None, bytes, int | None]] = [
        (u.encode(), transaction(f"t-{u}-{n}", u, 10.0 + n, now - 60 + n), None)
        for n in range(3)
        for u in users
    ]
    sent.append((b"tls-bad", b"{not json", None))
    # The test's own client writes through the PLAINTEXT listener of the same broker.
    await produce(sent, topics.transactions)
    async with TopicReader(topics.features) as reader:
        records = await reader.until(lambda ms: len(ms) >= 36, 90, "36 feature records over SASL_SSL")
    latest = {r["user_id"]: r for _, r, _ in records}
    assert sorted(latest) == sorted(users)
    assert all(r["tx_count_1h"] == 3 and r["total_amount_1h"] == 33.0 for r in latest.values())
    status, _, body = worker.get("/features/tls-3")
    assert status == 200 and body["tx_count_24h"] == 3
    async with TopicReader(topics.dlq) as dlq:
        ((_, letter, _),) = await dlq.until(lambda ms: len(ms) >= 1, 60, "the bad message's dead letter")
    assert letter["error_type"] == "DecodeError"
    assert worker.stats()["predictions_total"] == 36  # scoring, prediction log: the same secured producers


def test_the_commands_connect_over_sasl_ssl(topics: Topics, kafka: str, tls: dict[str, str]) -> None:
    """simulate (a producer) and dlq stats (a consumer) with the same settings as the worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_"))}
    env.update(
        secure_env(tls, TRANSACTIONS_TOPIC=topics.transactions, DLQ_TOPIC=topics.dlq, TOPIC_PARTITIONS="4")
    )
    env.update(APP_ID=f"velocity-tls-{topics.transactions}", LABELS_TOPIC=topics.labels)
    simulate = [FAUST, "-A", "app", "simulate", "--rate", "500", "--max-messages", "200", "--duration", "60"]
    done = subprocess.run(simulate, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulate: done, 200 transactions" in done.stdout + done.stderr
    stats = subprocess.run(
        [FAUST, "-A", "app", "dlq", "stats"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert stats.returncode == 0, stats.stdout + stats.stderr
    assert "Traceback" not in stats.stdout + stats.stderr


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            {"KAFKA_SASL_PASSWORD_FILE": "", "KAFKA_SASL_PASSWORD": "not-the-password"},
            "authentication of user",
        ),
        ({"KAFKA_SSL_CAFILE": "untrusted"}, "certificate is not trusted"),
    ],
    ids=["wrong-password", "untrusted-certificate"],
)
def test_a_bad_credential_stops_the_start_in_one_line(
    spawn: Any, tls: dict[str, str], override: dict[str, str], says: str
) -> None:
    env = secure_env(tls)
    for key, value in override.items():
        if key == "KAFKA_SSL_CAFILE":
            value = tls["KAFKA_UNTRUSTED_CAFILE"]
        if value:
            env[key] = value
        else:
            env.pop(key)
    worker = spawn(**env)
    assert worker.proc is not None
    started = time.monotonic()
    worker.proc.wait(timeout=90)
    log = worker.log_path.read_text()
    assert worker.proc.returncode != 0, log
    assert time.monotonic() - started < 60  # no retry loop
    lines = [line for line in log.splitlines() if "cannot connect to" in line]
    assert len(lines) == 1 and says in lines[0], log
    assert "Traceback" not in log
