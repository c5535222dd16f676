"""``faust -A app export``: a point-in-time training set from the retained input topic (SPEC 9).

Every retained message of the input topic goes through the worker's own
code, in the order a worker processes it: ``parse_transaction`` (SPEC 3,
the same dead-letter rules), the owner partition of the user (as the
re-keying hop routes it), and :class:`tables.replay.HistoryState`, which
applies the same :class:`tables.window.UserWindow` and expiry rule as the hot
path. One row per transaction accepted with ``from <= timestamp < until``:
the SPEC 4 record the live pipeline published when it accepted it
(``computed_at`` aside), plus ``label`` when labels are given. The history
before ``from`` is read too (it fills the windows, decides duplicates,
lateness and expiry); rows are written for the range only.

Order: each input partition in offset order, as a worker reads it. A
message re-keyed by a worker reaches its owner partition through the
re-keying topic after the messages that were already there; the export
takes the input partitions' messages in the order of their Kafka timestamps
(ties: partition, offset), which keeps each partition's offset order and
puts a re-keyed message where it was produced. A user whose messages all
arrive on one input partition (keyed or not) gets exactly its live records.

Read-only for the live app: no consumer group (partitions are assigned,
nothing is committed), no access to its state; the windows live in a
temporary RocksDB (``--tmp-dir``), removed at the end. The output is
written under a temporary name next to ``PATH`` and renamed at the end, so
an interrupted export leaves nothing under the final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.cli import option
from tqdm import tqdm

from app.kafka_admin import client_options, partition_counts, read_merged, read_to_end
from app.main import app, settings
from records.errors import ProcessingError, RejectedMessage
from records.schema import UserFeatures
from records.transaction import parse_transaction
from tables.replay import HistoryState
from tables.user_state import owner_partition

log = logging.getLogger(__name__)

#: The exported columns: the SPEC 4 record without ``computed_at``, then the label.
FEATURE_COLUMNS: tuple[str, ...] = tuple(n for n in UserFeatures.field_names if n != "computed_at")
COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS, "label")
_INT_COLUMNS = frozenset(
    {"tx_count_1h", "tx_count_24h", "unique_merchants_1h", "unique_merchants_24h", "label"}
)
_STR_COLUMNS = frozenset({"user_id", "transaction_id", "merchant_category"})
_BOOL_COLUMNS = frozenset({"is_online"})

#: Rows per Parquet row group (and per write of either format).
ROWS_PER_WRITE = 25_000


class ExportError(Exception):
    """A problem with the export's input or environment: one line for the operator."""


# --------------------------------------------------------------------------- options


def parse_partitions(spec: str | None, count: int) -> list[int]:
    """``"0,2"`` / ``"0-3"`` / ``"1,4-5"`` -> sorted partition numbers (all ``count`` when None)."""
    if spec is None or not spec.strip():
        return list(range(count))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if low > high:
                    raise ValueError
                chosen.update(range(low, high + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise ExportError(f"--partitions {spec!r}: expected numbers and ranges like 0,2-3") from None
    outside = sorted(p for p in chosen if not 0 <= p < count)
    if outside:
        raise ExportError(f"--partitions {spec!r}: partition {outside[0]} is not in 0..{count - 1}")
    return sorted(chosen)


def check_output(path: str) -> Path:
    out = Path(path)
    if out.suffix not in (".parquet", ".csv"):
        raise ExportError(f"--output {path!r}: the name must end in .parquet or .csv")
    if not out.parent.is_dir():
        raise ExportError(f"--output {path!r}: directory {str(out.parent)!r} does not exist")
    return out


def check_range(from_time: float | None, until_time: float | None) -> tuple[float, float]:
    low = -math.inf if from_time is None else from_time
    high = math.inf if until_time is None else until_time
    if not (math.isfinite(low) or low == -math.inf) or not (math.isfinite(high) or high == math.inf):
        raise ExportError("--from-time and --until-time must be numbers (epoch seconds)")
    if low >= high:
        raise ExportError(f"empty range: --from-time {from_time} is not before --until-time {until_time}")
    return low, high


# --------------------------------------------------------------------------- labels


class Labels:
    """``transaction_id -> label`` in a RocksDB of the export's own (bounded memory)."""

    def __init__(self, path: Path) -> None:
        self._db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        self.count = 0
        self.unreadable = 0

    def get(self, transaction_id: str) -> int | None:
        raw = self._db.get(transaction_id.encode("utf-8"))
        return None if raw is None else int(orjson.loads(raw)[1])

    def put(self, transaction_id: str, label: int, labeled_at: float | None) -> None:
        """The latest ``labeled_at`` wins (without one: the later put)."""
        key = transaction_id.encode("utf-8")
        known = self._db.get(key)
        if known is None:
            self.count += 1
        elif labeled_at is not None:
            known_at = orjson.loads(known)[0]
            if known_at is not None and known_at > labeled_at:
                return
        self._db.put(key, orjson.dumps([labeled_at, label]))

    def close(self) -> None:
        self._db.close()


def parse_label(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return 1 if value.strip().lower() in ("1", "true") else 0
    raise ValueError(f"label {value!r} is not 0 or 1")


def load_labels_csv(path: str, labels: Labels) -> None:
    """A CSV with a header naming ``transaction_id`` and ``label`` (other columns ignored)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            header = rows.fieldnames or []
            if "transaction_id" not in header or "label" not in header:
                raise ExportError(
                    f"labels file {path!r} needs a header with transaction_id and label (it has {header})"
                )
            for row in rows:
                transaction_id = row.get("transaction_id")
                try:
                    if not transaction_id:
                        raise ValueError("no transaction_id")
                    label = parse_label(row.get("label"))
                except ValueError as exc:
                    raise ExportError(f"labels file {path!r}, line {rows.line_num}: {exc}") from None
                labels.put(transaction_id, label, None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ExportError(f"cannot read labels file {path!r}: {exc}") from None


def label_from_message(value: bytes | None) -> tuple[str, int, float | None] | None:
    """A label record ``{transaction_id, label, labeled_at}`` (SPEC 10), or None if unreadable."""
    try:
        body = orjson.loads(value or b"")
        transaction_id = body["transaction_id"]
        if not isinstance(transaction_id, str) or not transaction_id:
            return None
        labeled_at = body.get("labeled_at")
        if labeled_at is not None and not isinstance(labeled_at, int | float):
            return None
        return transaction_id, parse_label(body["label"]), labeled_at
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- reading


async def topic_partitions(topic: str) -> list[TopicPartition]:
    count = (await partition_counts(settings.broker_url, [topic])).get(topic)
    if count is None:
        raise ExportError(f"topic {topic!r} does not exist on {settings.broker_url}")
    return [TopicPartition(topic, p) for p in range(count)]


# --------------------------------------------------------------------------- writing


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


class RowWriter:
    """Rows to ``out`` in its format, through a temporary file renamed by :meth:`commit`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._parquet: Any = None
        self._csv: Any = None
        self._file: Any = None
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            types = {
                **{n: pa.float64() for n in COLUMNS},
                **{n: pa.int64() for n in _INT_COLUMNS},
                **{n: pa.string() for n in _STR_COLUMNS},
                **{n: pa.bool_() for n in _BOOL_COLUMNS},
            }
            self._schema = pa.schema([pa.field(n, types[n], nullable=True) for n in COLUMNS])
            self._parquet = pq.ParquetWriter(str(self.partial), self._schema)
        else:
            self._file = open(self.partial, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow(COLUMNS)

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self.rows += 1
        if len(self._pending) >= ROWS_PER_WRITE:
            self._write()

    def _write(self) -> None:
        rows, self._pending = self._pending, []
        if not rows:
            return
        if self._parquet is not None:
            import pyarrow as pa

            table = pa.Table.from_pylist(rows, schema=self._schema)
            self._parquet.write_table(table, row_group_size=ROWS_PER_WRITE)
        else:
            self._csv.writerows([_csv_value(row[n]) for n in COLUMNS] for row in rows)

    def commit(self) -> None:
        self._write()
        self._close()
        os.replace(self.partial, self.out)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- the export


@dataclass
class Tally:
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rows: int = 0
    labelled: int = 0
    other_partitions: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        dead = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters.items())) or "none"
        return (
            f"read {self.messages} messages: accepted {self.accepted}, duplicates {self.duplicates}, "
            f"late {self.late}, dead letters {sum(self.dead_letters.values())} ({dead})"
            + (f", of other partitions' users {self.other_partitions}" if self.other_partitions else "")
        )


class Export:
    """One export run: the history of the chosen owner partitions through :class:`HistoryState`."""

    def __init__(
        self,
        state: HistoryState,
        writer: RowWriter,
        low: float,
        high: float,
        partitions: list[int],
        labels: Labels | None,
    ) -> None:
        self.state = state
        self.writer = writer
        self.low, self.high = low, high
        self.partitions = frozenset(partitions)
        self.labels = labels
        self.tally = Tally()

    def process(self, partition: int, value: bytes | None, timestamp_ms: int | None) -> None:
        """One input message (of input partition ``partition``), as the hot path decides it."""
        tally = self.tally
        tally.messages += 1
        now_s = timestamp_ms / 1000.0 if timestamp_ms is not None and timestamp_ms > 0 else time.time()
        try:
            txn = parse_transaction(value, now_s, settings.max_clock_skew_s)
        except RejectedMessage as exc:
            if partition in self.partitions:  # one process of a split export counts it
                tally.dead_letters[exc.error_type] += 1
            return
        owner = owner_partition(txn.user_id.encode("utf-8"), settings.topic_partitions)
        if owner not in self.partitions:
            tally.other_partitions += 1
            return
        try:
            outcome = self.state.apply(txn, owner, computed_at_s=0.0)
        except Exception:
            log.exception("export: processing failed for transaction %r", txn.transaction_id)
            tally.dead_letters[ProcessingError.error_type] += 1
            return
        if outcome.verdict == "late":
            tally.late += 1
            return
        if outcome.verdict == "duplicate":
            tally.duplicates += 1
            return
        tally.accepted += 1
        if not self.low <= txn.timestamp < self.high:
            return
        features = outcome.features
        assert features is not None
        row = {name: features[name] for name in FEATURE_COLUMNS}
        label = None if self.labels is None else self.labels.get(txn.transaction_id)
        if label is not None:
            tally.labelled += 1
        row["label"] = label
        self.writer.add(row)
        tally.rows += 1


class Progress:
    """A bar (records, rate, ETA) on a terminal; a line every ``every_s`` otherwise."""

    def __init__(self, total: int, say: Any, every_s: float = 30.0) -> None:
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="msg", unit_scale=True, file=sys.stderr, disable=not self.tty)
        self.total = total
        self.say = say
        self.every_s = every_s
        self.started = self.last_line = time.monotonic()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if not self.tty and now - self.last_line >= self.every_s:
            self.last_line = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate else math.inf
            self.say(f"export: {self.done}/{self.total} messages, {rate:.0f} msg/s, ETA {eta:.0f}s")

    def close(self) -> None:
        self.bar.close()


async def run_export(
    say: Any,
    output: str,
    from_time: float | None,
    until_time: float | None,
    labels_path: str | None,
    labels_topic: str | None,
    partitions_spec: str | None,
    tmp_dir: str | None,
    cache_users: int = 20_000,
) -> Tally:
    out = check_output(output)
    low, high = check_range(from_time, until_time)
    if labels_path and labels_topic:
        raise ExportError("give --labels or --labels-topic, not both")
    partitions = parse_partitions(partitions_spec, settings.topic_partitions)
    if cache_users < 1:
        raise ExportError(f"--cache-users {cache_users}: must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="velocity-export-", dir=tmp_dir))
    consumer = AIOKafkaConsumer(
        **client_options(settings.broker_url),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed"
        if settings.processing_guarantee == "exactly_once"
        else "read_uncommitted",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    labels: Labels | None = None
    state: HistoryState | None = None
    writer: RowWriter | None = None
    progress: Progress | None = None
    try:
        await consumer.start()
        tps = await topic_partitions(settings.transactions_topic)
        if labels_path or labels_topic:
            labels = Labels(work / "labels")
        if labels_path:
            assert labels is not None
            load_labels_csv(labels_path, labels)
        elif labels_topic:
            assert labels is not None
            label_tps = await topic_partitions(labels_topic)
            async for record in read_to_end(consumer, label_tps):
                parsed = label_from_message(record.value)
                if parsed is None:
                    labels.unreadable += 1
                else:
                    labels.put(*parsed)
        if labels is not None:
            say(
                f"export: {labels.count} labels"
                + (f" ({labels.unreadable} unreadable, skipped)" if labels.unreadable else "")
            )
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        begins = await consumer.beginning_offsets(tps)
        ends = {tp: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
        total = sum(max(0, ends[tp] - int(begins[tp])) for tp in tps)
        state = HistoryState(
            work / "state",
            lateness_s=settings.allowed_lateness_s,
            chunk_rows=settings.state_chunk_rows,
            ttl_s=settings.user_ttl_s,
            cache_size=cache_users,
        )
        writer = RowWriter(out)
        export = Export(state, writer, low, high, partitions, labels)
        progress = Progress(total, say)
        step = 0
        async for record in read_merged(consumer, tps, ends):
            export.process(record.partition, record.value, record.timestamp)
            step += 1
            if step == 1000:
                progress.update(step)
                step = 0
                await asyncio.sleep(0)  # fetched records do not yield: let signals and the fetcher run
        progress.update(step)
        progress.close()
        tally = export.tally
        if tally.rows == 0:
            raise ExportError(
                f"no transaction accepted in the range ({tally.summary()}); nothing written to {str(out)!r}"
            )
        writer.commit()
        writer = None
        return tally
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.discard()
        if state is not None:
            state.close()
        if labels is not None:
            labels.close()
        with contextlib.suppress(Exception):
            await consumer.stop()
        shutil.rmtree(work, ignore_errors=True)


def _range_text(from_time: float | None, until_time: float | None) -> str:
    return f"[{'-inf' if from_time is None else from_time}, {'+inf' if until_time is None else until_time})"


@app.command(
    option("--output", type=str, required=True, help="The training set: PATH.parquet or PATH.csv."),
    option("--from-time", type=float, default=None, help="First event time (epoch seconds, inclusive)."),
    option("--until-time", type=float, default=None, help="End of the range (epoch seconds, exclusive)."),
    option("--labels", "labels_path", type=str, default=None, help="CSV with transaction_id,label."),
    option("--labels-topic", type=str, default=None, help="Topic of {transaction_id, label, labeled_at}."),
    option(
        "--partitions",
        type=str,
        default=None,
        help="Only the users of these partitions (e.g. 0,1 or 2-3): one process per share.",
    ),
    option("--tmp-dir", type=str, default=None, help="Where the temporary RocksDB goes (default: TMPDIR)."),
    option(
        "--cache-users",
        type=int,
        default=20_000,
        show_default=True,
        help="Decoded windows kept in memory (more: faster on many users, more memory).",
    ),
)
async def export(
    self: Any,
    output: str,
    from_time: float | None,
    until_time: float | None,
    labels_path: str | None,
    labels_topic: str | None,
    partitions: str | None,
    tmp_dir: str | None,
    cache_users: int,
) -> None:
    """Write a point-in-time training set from the retained input topic (no worker needed)."""
    started = time.monotonic()
    # Ctrl-C / SIGTERM cancel the export itself (mode's own handlers would let it run to the end).
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        tally = await run_export(
            self.say,
            output,
            from_time,
            until_time,
            labels_path,
            labels_topic,
            partitions,
            tmp_dir,
            cache_users,
        )
    except ExportError as exc:
        raise SystemExit(f"export: {exc}") from None
    except KafkaError as exc:
        raise SystemExit(f"export: Kafka at {settings.broker_url}: {exc}") from None
    except asyncio.CancelledError:
        self.say(f"export: interrupted; nothing written to {output!r}")
        raise SystemExit(130) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    elapsed = time.monotonic() - started
    labelled = f", {tally.labelled} labelled" if labels_path or labels_topic else ""
    self.say(
        f"export: {tally.rows} rows for {_range_text(from_time, until_time)}{labelled} to {output} "
        f"in {elapsed:.1f}s ({tally.messages / max(elapsed, 1e-9):.0f} msg/s); {tally.summary()}"
    )
