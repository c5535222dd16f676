"""``faust -A app dlq stats|show|replay`` against a real worker and the real broker.

The worker dead-letters a known mix of messages; the command, run as an
operator runs it, must count them exactly, list them with their original
coordinates, and replay exactly the selected ones (original bytes and keys)
to the input topic. Replaying twice must be harmless: a late transaction is
dead-lettered again, an accepted one only re-publishes its feature record.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import (
    BOOTSTRAP,
    FAUST,
    REPO,
    TopicReader,
    Topics,
    create_topics,
    produce,
    wait_for,
)
from tests.integration.streams import changed, owner_partition

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


def run_dlq(env: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FAUST, "-A", "app", "dlq", *args],
        cwd=REPO,
        env={**env, **overrides},
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def table(output: str) -> dict[tuple[str, str], int]:
    """``stats``' rows: (by, value) -> count."""
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) == 3 and cells[2].isdigit():
            rows[(cells[0], cells[1])] = int(cells[2])
    return rows


def tx(user: str, txid: str, ts: float, amount: float = 10.0) -> bytes:
    return orjson.dumps(
        {"transaction_id": txid, "user_id": user, "amount": amount, "merchant_id": "m1", "timestamp": ts}
    )


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def end_offsets(topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(o) for tp, o in ends.items()}
    finally:
        await consumer.stop()


async def read_after(topic: str, start: dict[int, int]) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every message of ``topic`` from ``start`` to its end now: (partition, key, value)."""
    ends = await end_offsets(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, bytes | None, bytes | None]] = []
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        deadline = time.monotonic() + TIMEOUT_S
        while [tp for tp in tps if await consumer.position(tp) < ends[tp.partition]]:
            assert time.monotonic() < deadline, f"timed out reading {topic} to {ends}"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [(r.partition, r.key, r.value) for r in records if r.offset < ends[r.partition]]
        return out
    finally:
        await consumer.stop()


def letters_by_type(dlq: TopicReader) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, letter, _ in dlq.messages:
        counts[letter["error_type"]] = counts.get(letter["error_type"], 0) + 1
    return counts


async def test_stats_and_show_count_and_list_what_the_worker_dead_lettered(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]
) -> None:
    _, dlq = readers
    worker = spawn(ALLOWED_LATENESS_S="60")
    worker.wait_ready()
    now = time.time()
    p = topics.partitions

    def direct(user: str) -> tuple[bytes, int]:
        return user.encode(), owner_partition(user, p)

    def bad(**changes: Any) -> bytes:
        return changed(
            {
                "transaction_id": "b",
                "user_id": "s-bad",
                "amount": 1.0,
                "merchant_id": "m",
                "timestamp": now - 5,
            },
            **changes,
        )

    k0, p0 = direct("s-u0")
    kb, pb = direct("s-bad")
    messages: list[tuple[bytes | None, bytes, int | None]] = [
        (k0, tx("s-u0", "s-u0-1", now - 10), p0),
        (k0, tx("s-u0", "s-u0-late", now - 1000), p0),  # LateEvent (M - 60)
        # s-u1 comes with another key: through the re-keying hop, late there.
        (b"someone-else", tx("s-u1", "s-u1-1", now - 10), 1 % p),
        (b"someone-else", tx("s-u1", "s-u1-late", now - 1000), 1 % p),
        (b"k-decode", b"{not json", 0),
        (None, b"[1, 2]", 1 % p),
        (kb, bad(amount=-1), pb),
        (kb, bad(transaction_id=...), pb),
        (kb, bad(amount=-2, timestamp=0), pb),
        (kb, bad(is_online="yes"), pb),
    ]
    sent = await produce(messages, topics.transactions)
    await dlq.until(lambda m: len(m) >= 8, TIMEOUT_S, "8 dead letters")
    # Something on the topic that is no dead letter at all.
    await produce([(b"x", b'{"hello": "not a dead letter"}', 0)], topics.dlq)

    stats = ok(run_dlq(worker.env, "stats"))
    assert f"dlq: 9 messages on '{topics.dlq}'" in stats
    assert table(stats) == {
        ("selected", "-"): 8,
        ("error_type", "DecodeError"): 2,
        ("error_type", "ValidationError"): 4,
        ("error_type", "LateEvent"): 2,
        ("error_type", "ProcessingError"): 0,
        ("field", "timestamp"): 3,
        ("field", "amount"): 2,
        ("field", "value"): 2,
        ("field", "is_online"): 1,
        ("field", "transaction_id"): 1,
        ("original_topic", topics.transactions): 8,
        ("repeated", "-"): 0,
        ("not_selected", "-"): 0,
        ("unreadable", "-"): 1,
    }
    failed = sorted(letter["failed_at"] for _, letter, _ in dlq.messages)
    assert f"oldest failed_at: {failed[0]}" in stats and f"newest failed_at: {failed[-1]}" in stats

    only_late = table(ok(run_dlq(worker.env, "stats", "--error-type", "lateevent")))
    assert only_late[("selected", "-")] == 2 and only_late[("not_selected", "-")] == 6
    assert ("error_type", "DecodeError") not in only_late

    # show --json: the late one that went through the re-keying hop keeps its input coordinates.
    shown = ok(run_dlq(worker.env, "show", "--json", "--error-type", "LateEvent"))
    late = [json.loads(line) for line in shown.splitlines()]
    assert sorted((w["original_key"], w["raw_value"]) for w in late) == sorted(
        [("s-u0", messages[1][1].decode()), ("someone-else", messages[3][1].decode())]
    )
    rekeyed = next(w for w in late if w["original_key"] == "someone-else")
    assert rekeyed["original_topic"] == topics.transactions
    assert (rekeyed["original_partition"], rekeyed["original_offset"]) == (sent[3].partition, sent[3].offset)
    assert rekeyed["error_message"].startswith("timestamp: ")

    lines = ok(run_dlq(worker.env, "show")).splitlines()
    letter_lines = [line for line in lines if not line.startswith("dlq:")]
    assert len(letter_lines) == 8
    assert [line.split()[0] for line in letter_lines] == failed  # in failed_at order
    assert "dlq: 1 unreadable messages left out" in lines
    decode = next(line for line in letter_lines if "k-decode" in line)
    assert f"DecodeError  {topics.transactions}[0]@{sent[4].offset}  key='k-decode'  value: " in decode
    assert decode.endswith("raw={not json")

    limited = ok(run_dlq(worker.env, "show", "--limit", "3")).splitlines()
    assert len([line for line in limited if not line.startswith("dlq:")]) == 3
    assert "dlq: 5 more not shown (--limit 3)" in limited

    future = ok(run_dlq(worker.env, "show", "--since", iso(time.time() + 3600)))
    assert "dlq: no dead letters selected of the 9 messages" in future
    window = table(ok(run_dlq(worker.env, "stats", "--since", failed[0], "--until", failed[-1])))
    assert window[("selected", "-")] == sum(1 for f in failed if failed[0] <= f < failed[-1])


def test_bad_options_a_missing_topic_an_empty_topic_and_no_broker_are_one_line(
    topics: Topics, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_"))}
    env.update(
        BROKER_URL=f"kafka://{BOOTSTRAP}",
        APP_ID=f"velocity-it-{uuid.uuid4().hex[:8]}",
        APP_DATADIR=str(tmp_path),
        TOPIC_PARTITIONS=str(topics.partitions),
        TRANSACTIONS_TOPIC=topics.transactions,
        FEATURES_TOPIC=topics.features,
        DLQ_TOPIC=topics.dlq,
    )
    empty = ok(run_dlq(env, "stats"))
    assert empty.strip() == f"dlq: no dead letters on '{topics.dlq}' (kafka://{BOOTSTRAP})"
    assert "no dead letters" in ok(run_dlq(env, "replay"))

    cases = [
        (("stats",), {"DLQ_TOPIC": "no-such-dlq-topic"}, "dlq: topic 'no-such-dlq-topic' does not exist on"),
        (("show", "--since", "last tuesday"), {}, "dlq: --since 'last tuesday' is not an ISO 8601 time"),
        (("replay", "--error-type", "Late"), {}, "dlq: unknown error type 'Late' (known: DecodeError,"),
        (("show", "--dry-run"), {}, "dlq: --dry-run only applies to replay"),
        (("stats",), {"BROKER_URL": "kafka://127.0.0.1:1"}, "dlq: cannot read"),
    ]
    for args, overrides, line in cases:
        done = run_dlq(env, *args, **overrides)
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert line in out and "Traceback" not in out, out


async def test_replay_resends_exactly_the_selected_originals_and_twice_is_harmless(
    topics: Topics, spawn: Any, readers: tuple[TopicReader, TopicReader]
) -> None:
    features, dlq = readers
    worker = spawn(ALLOWED_LATENESS_S="60")
    worker.wait_ready()
    now = time.time()
    user = "r-user"
    key, part = user.encode(), owner_partition(user, topics.partitions)
    a1 = tx(user, "r-a1", now - 50, 10.0)  # accepted; later within M - 60, so a duplicate when sent again
    late = tx(user, "r-late", now - 1000, 99.0)  # older than M - 60: LateEvent
    negative = orjson.dumps({"transaction_id": "r-neg", "user_id": "r-bad", "amount": -1})
    originals: list[tuple[bytes | None, bytes, int | None]] = [
        (key, a1, part),
        (key, tx(user, "r-a2", now - 10, 20.0), part),
        (key, late, part),
        (b"r-bad", negative, 0),
        (None, b"{oops", 1 % topics.partitions),
    ]
    sent = await produce(originals, topics.transactions)
    await dlq.until(lambda m: len(m) >= 3, TIMEOUT_S, "3 dead letters")
    await features.until(lambda m: len(m) >= 2, TIMEOUT_S, "2 feature records")
    first_a1 = next(r for _, r, _ in features.messages if r["transaction_id"] == "r-a1")
    # A dead letter as a worker writes it (SPEC 6) whose message had been accepted meanwhile.
    crafted = {
        "original_topic": topics.transactions,
        "original_partition": sent[0].partition,
        "original_offset": 1_000_000,
        "original_key": user,
        "error_type": "ProcessingError",
        "error_message": "RuntimeError: a worker failed on it before a restart",
        "failed_at": iso(time.time()),
        "raw_value": a1.decode(),
    }
    await produce([(key, orjson.dumps(crafted), None)], topics.dlq)
    await dlq.until(lambda m: len(m) >= 4, TIMEOUT_S, "the crafted dead letter")
    until = iso(time.time() + 0.01)  # every letter so far, none a replay makes
    ends = await end_offsets(topics.transactions)

    # (a) --dry-run: the summary, and nothing on the input topic.
    dry = ok(run_dlq(worker.env, "replay", "--dry-run", "--until", until))
    assert "nothing sent" in dry
    rows = table(dry)
    assert {k: v for k, v in rows.items() if k[1] == topics.transactions} == {
        ("DecodeError", topics.transactions): 1,
        ("ValidationError", topics.transactions): 1,
        ("LateEvent", topics.transactions): 1,
        ("ProcessingError", topics.transactions): 1,
    }
    assert "skipped: 0 not selected, 0 repeated" in dry
    assert await end_offsets(topics.transactions) == ends

    # (b) one error type: exactly its message, with its key and bytes; the worker rejects it again.
    one = ok(run_dlq(worker.env, "replay", "--error-type", "ValidationError", "--until", until))
    assert f"dlq: replayed 1 of 4 messages on '{topics.dlq}'" in one
    assert table(one)[("ValidationError", topics.transactions)] == 1
    assert "skipped: 3 not selected" in one
    assert "dlq: to replay the same dead letters again (not the ones this replay makes): --until 20" in one
    resent = await read_after(topics.transactions, ends)
    assert [(k, v) for _, k, v in resent] == [(b"r-bad", negative)]
    await dlq.until(lambda m: letters_by_type(dlq).get("ValidationError") == 2, TIMEOUT_S, "the letter again")

    # (c) the late one and the accepted one, twice.
    for round_ in (1, 2):
        before = await end_offsets(topics.transactions)
        out = ok(run_dlq(worker.env, "replay", "--error-type", "LateEvent,ProcessingError", "--until", until))
        assert table(out)[("LateEvent", topics.transactions)] == 1, out
        assert table(out)[("ProcessingError", topics.transactions)] == 1, out
        resent = await read_after(topics.transactions, before)
        assert sorted((k, v) for _, k, v in resent) == sorted([(key, late), (key, a1)]), round_
        # Keyed by the user: on the user's partition, so the worker takes them without a re-keying hop.
        assert {p for p, _, _ in resent} == {part}

    def settled() -> bool:
        s = worker.stats()
        return bool(s["duplicates_total"] == 2 and s["dead_letters"].get("LateEvent") == 3)

    wait_for(settled, TIMEOUT_S, "both replays processed: 2 duplicates, 3 late letters")
    assert worker.stats()["processed_total"] == 2  # nothing accepted twice
    records = await features.until(lambda m: len(m) >= 4, TIMEOUT_S, "the re-published records")
    await features.until_end(TIMEOUT_S)
    assert len(records) == 4
    a1_records = [r for _, r, _ in records if r["transaction_id"] == "r-a1"]
    assert len(a1_records) == 3
    for again in a1_records[1:]:
        assert {k: v for k, v in again.items() if k != "computed_at"} == {
            k: v for k, v in first_a1.items() if k != "computed_at"
        }
    assert first_a1["tx_count_24h"] == 1 and first_a1["total_amount_24h"] == 10.0


async def test_replay_refuses_a_missing_input_topic(topics: Topics, tmp_path: Path) -> None:
    dlq_topic = f"dlq-only-{uuid.uuid4().hex[:8]}"
    await create_topics([dlq_topic], 1)
    letter = {
        "original_topic": "tx-gone",
        "original_partition": 0,
        "original_offset": 0,
        "original_key": None,
        "error_type": "DecodeError",
        "error_message": "value: not strict JSON: x",
        "failed_at": iso(time.time()),
        "raw_value": "{",
    }
    await produce([(None, orjson.dumps(letter), 0)], dlq_topic)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_"))}
    env.update(
        BROKER_URL=f"kafka://{BOOTSTRAP}",
        APP_ID=f"velocity-it-{uuid.uuid4().hex[:8]}",
        APP_DATADIR=str(tmp_path),
        TRANSACTIONS_TOPIC=f"tx-gone-{uuid.uuid4().hex[:8]}",
        DLQ_TOPIC=dlq_topic,
    )
    # Never sent to a topic the broker might auto-create with another partition count.
    for args in (("replay", "--dry-run"), ("replay",)):
        done = run_dlq(env, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"dlq: topic '{env['TRANSACTIONS_TOPIC']}' does not exist on" in done.stdout + done.stderr
