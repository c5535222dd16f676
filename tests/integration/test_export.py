"""``faust -A app export`` on the real broker: the training set against the oracle, row by row.

No worker runs here: the export reads the retained input topic itself. The
stream is the pipeline test's (out-of-order, duplicates, late, invalid,
unkeyed, wrong key, wrong partition); the expected rows are the oracle's
accepted records, in each user's order.
"""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import (
    BOOTSTRAP,
    FAUST,
    REPO,
    Topics,
    create_topics,
    produce,
    produce_many,
    wait_for,
)
from tests.integration.streams import D, H, Stream, owner_partition
from tests.integration.test_pipeline import build_stream
from tests.oracle import RECORD_FIELDS, Oracle, assert_record_matches

pytestmark = pytest.mark.integration

_INTS = {"tx_count_1h", "tx_count_24h", "unique_merchants_1h", "unique_merchants_24h", "label"}
_STRS = {"user_id", "transaction_id", "merchant_category"}


def export_env(topics: Topics, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_"))}
    env.update(
        BROKER_URL=f"kafka://{BOOTSTRAP}",
        APP_ID=f"export-{topics.transactions}",
        TOPIC_PARTITIONS=str(topics.partitions),
        TRANSACTIONS_TOPIC=topics.transactions,
        FEATURES_TOPIC=topics.features,
        DLQ_TOPIC=topics.dlq,
    )
    env.update(extra)
    return env


def run_export(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [FAUST, "-A", "app", "export", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    with path.open(newline="", encoding="utf-8") as f:
        rows = []
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for name, text in raw.items():
                if text == "":
                    row[name] = None
                elif name in _INTS:
                    row[name] = int(text)
                elif name in _STRS:
                    row[name] = text
                elif name == "is_online":
                    row[name] = {"true": True, "false": False}[text]
                else:
                    row[name] = float(text)
            rows.append(row)
        return rows


def accepted_records(stream: Stream, oracle: Oracle) -> dict[str, list[dict[str, Any]]]:
    """user -> the oracle's record of each transaction it accepts, in the order it accepts them."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in stream.messages:
        if msg.txn is None:
            continue
        verdict, record = oracle.process(msg.txn)
        if verdict == "accepted":
            assert record is not None and msg.user is not None
            by_user[msg.user].append(record)
    return by_user


def check_rows(
    rows: list[dict[str, Any]],
    want: dict[str, list[dict[str, Any]]],
    low: float = float("-inf"),
    high: float = float("inf"),
    labels: dict[str, int] | None = None,
) -> None:
    expected = {user: [r for r in records if low <= r["event_time"] < high] for user, records in want.items()}
    expected = {user: records for user, records in expected.items() if records}
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        assert list(row) == [*RECORD_FIELDS, "label"], list(row)
        got[row["user_id"]].append(row)
    assert sorted(got) == sorted(expected)
    for user, records in expected.items():
        assert [r["transaction_id"] for r in got[user]] == [r["transaction_id"] for r in records], user
        for row, record in zip(got[user], records, strict=True):
            label = row.pop("label")
            assert_record_matches(row, record)
            assert label == (labels or {}).get(record["transaction_id"]), (user, record["transaction_id"])


def test_export_matches_the_oracle_row_by_row(topics: Topics, tmp_path: Path) -> None:
    stream = build_stream(topics.partitions)
    asyncio.run(produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions))
    want = accepted_records(stream, Oracle(lateness_s=H))
    invalid = sum(1 for m in stream.messages if m.invalid)
    env = export_env(topics)

    full = run_export(env, "--output", str(tmp_path / "all.parquet"))
    assert full.returncode == 0, full.stdout + full.stderr
    total = sum(len(v) for v in want.values())
    assert f"export: {total} rows" in full.stdout
    assert f"dead letters {invalid} " in full.stdout and f"accepted {total}," in full.stdout
    check_rows(read_rows(tmp_path / "all.parquet"), want)

    # A range in the middle: the rows of that range only, computed over the whole history.
    times = sorted(r["event_time"] for records in want.values() for r in records)
    low, high = times[len(times) // 3], times[2 * len(times) // 3]
    labels = {r["transaction_id"]: i % 2 for i, r in enumerate(r for v in want.values() for r in v[::3])}
    labels_csv = tmp_path / "labels.csv"
    with labels_csv.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["transaction_id", "label", "note"])
        out.writerows([tid, label, "x"] for tid, label in labels.items())
        out.writerow(["no-such-transaction", 1, "ignored"])
    ranged = run_export(
        env,
        "--output",
        str(tmp_path / "range.csv"),
        "--from-time",
        repr(low),
        "--until-time",
        repr(high),
        "--labels",
        str(labels_csv),
    )
    assert ranged.returncode == 0, ranged.stdout + ranged.stderr
    check_rows(read_rows(tmp_path / "range.csv"), want, low, high, labels)

    # Split over two processes by partition: together, the whole export.
    halves = [
        run_export(env, "--output", str(tmp_path / f"part-{n}.csv"), "--partitions", spec)
        for n, spec in enumerate(("0-1", "2,3"))
    ]
    assert all(h.returncode == 0 for h in halves), [h.stdout + h.stderr for h in halves]
    rows = read_rows(tmp_path / "part-0.csv") + read_rows(tmp_path / "part-1.csv")
    check_rows(rows, want)
    first = {owner_partition(r["user_id"], topics.partitions) for r in read_rows(tmp_path / "part-0.csv")}
    assert first <= {0, 1}


def test_export_labels_from_a_topic_and_expiry(topics: Topics, tmp_path: Path) -> None:
    """Direct users only (each partition's order is the stream's), with USER_TTL_S: users come back new."""
    ttl = 2 * D
    base = time.time() - 20 * D
    stream = Stream()
    for day in range(12):
        for u in range(6):
            if (u + day) % 4 == 0:  # each user pauses for days at a time: some longer than the TTL
                continue
            user = f"ttl-{u}"
            for k in range(3):
                ts = base + day * D + u * 60 + k * 600 + (day % 5) * D * (u % 2)
                stream.add_tx(user, "direct", topics.partitions, f"{user}-{day}-{k}", ts, 5.0 + k, f"m{k}")
    asyncio.run(produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions))
    oracle = Oracle(
        lateness_s=H, ttl_s=ttl, partition_of=lambda user: owner_partition(user, topics.partitions)
    )
    want = accepted_records(stream, oracle)
    assert oracle.expired, "the stream must make some user expire"

    labels_topic = f"labels-{topics.transactions}"
    asyncio.run(create_topics([labels_topic], 2))
    ids = [r["transaction_id"] for records in want.values() for r in records]
    label_msgs: list[tuple[bytes | None, bytes, int | None]] = [
        (None, orjson.dumps({"transaction_id": tid, "label": 1, "labeled_at": 100.0}), i % 2)
        for i, tid in enumerate(ids[::2])
    ]
    # A later correction wins over an earlier label, whatever the order they arrive in; junk is skipped.
    label_msgs.append((None, orjson.dumps({"transaction_id": ids[0], "label": 0, "labeled_at": 50.0}), 1))
    label_msgs.append((None, orjson.dumps({"transaction_id": ids[2], "label": 0, "labeled_at": 500.0}), 0))
    label_msgs.append((None, b"{not json", 0))
    asyncio.run(produce(label_msgs, labels_topic))
    labels = {tid: 1 for tid in ids[::2]}
    labels[ids[2]] = 0

    done = run_export(
        export_env(topics, USER_TTL_S=str(ttl)),
        "--output",
        str(tmp_path / "ttl.parquet"),
        "--labels-topic",
        labels_topic,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 unreadable" in done.stdout
    check_rows(read_rows(tmp_path / "ttl.parquet"), want, labels=labels)


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--output", "{tmp}/x.json"], {}, "the name must end in .parquet or .csv"),
        (["--output", "{tmp}/missing/x.csv"], {}, "does not exist"),
        (
            ["--output", "{tmp}/x.csv"],
            {"TRANSACTIONS_TOPIC": "no-such-topic-for-export"},
            "does not exist on",
        ),
        (["--output", "{tmp}/x.csv", "--from-time", "100", "--until-time", "100"], {}, "empty range"),
        (["--output", "{tmp}/x.csv", "--until-time", "1"], {}, "no transaction accepted in the range"),
        (["--output", "{tmp}/x.csv", "--labels", "{tmp}/none.csv"], {}, "cannot read labels file"),
        (["--output", "{tmp}/x.csv", "--labels", "{tmp}/bad.csv"], {}, "line 2: label 'maybe' is not 0 or 1"),
        (["--output", "{tmp}/x.csv", "--labels-topic", "no-such-labels"], {}, "does not exist on"),
        (["--output", "{tmp}/x.csv", "--partitions", "1,7"], {}, "partition 7 is not in 0..3"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    topics: Topics, tmp_path: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    asyncio.run(produce([(b"u", orjson.dumps(_txn("u", "t1", time.time() - 60)), None)], topics.transactions))
    (tmp_path / "bad.csv").write_text("transaction_id,label\nt1,maybe\n")
    done = run_export(export_env(topics, **env), *(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [x for x in (done.stdout + done.stderr).splitlines() if x.startswith("export:")]
    assert len(errors) == 1 and line in errors[0], done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def _txn(user: str, tid: str, ts: float) -> dict[str, Any]:
    return {"transaction_id": tid, "user_id": user, "amount": 1.5, "merchant_id": "m", "timestamp": ts}


def test_an_interrupted_export_leaves_no_file(topics: Topics, tmp_path: Path) -> None:
    now = time.time()
    bulk: list[tuple[bytes | None, bytes, int | None]] = [
        (
            f"bulk-{i % 5000}".encode(),
            orjson.dumps(_txn(f"bulk-{i % 5000}", f"b{i}", now - 3000 + i * 0.01)),
            None,
        )
        for i in range(150_000)
    ]
    asyncio.run(produce_many(bulk, topics.transactions))
    out = tmp_path / "big.parquet"
    proc = subprocess.Popen(
        [FAUST, "-A", "app", "export", "--output", str(out)],
        cwd=REPO,
        env=export_env(topics),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The temporary file exists once reading has begun.
        wait_for(
            lambda: any(tmp_path.iterdir()) or proc.poll() is not None, 60, "the export to start writing"
        )
        assert proc.poll() is None, "the export ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert "export: interrupted; nothing written to" in output and "Traceback" not in output, output
    assert list(tmp_path.iterdir()) == []
