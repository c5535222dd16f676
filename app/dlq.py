"""``faust -A app dlq stats|show|replay``: what is on the dead-letter topic, and sending it back (SPEC 6, 9).

Every action reads ``DLQ_TOPIC`` from its beginning to its end offsets as of
the start (a bounded read), with no consumer group: partitions are assigned
by hand, nothing is committed and the app's group is never touched. It reads
``read_committed``, so the dead letters of a transaction that was aborted
(under exactly_once: a worker fenced or crashed; its messages were processed
again) are not counted or replayed twice. A message on the topic that is not a
readable dead letter is counted as unreadable, never a crash.

``--error-type``, ``--since`` and ``--until`` select dead letters for every
action (``since <= failed_at < until``). ``replay`` re-sends each selected
letter's original bytes (``raw_value`` encoded as UTF-8) with its original key
to the input topic, once per original message (the same message dead-lettered
twice, by a worker that processed it again after a crash, is sent once).

Replaying is safe to repeat: a re-sent transaction that had been accepted
meanwhile is a duplicate under SPEC 4 (same ``transaction_id``, still
retained), so it re-publishes its feature record and is never counted twice;
one still invalid or late is dead-lettered again.

What cannot be sent back exactly: ``raw_value`` and ``original_key`` were
decoded as UTF-8 with replacement, so bytes that were not UTF-8 come back
with U+FFFD in their place (the summary counts such letters as "lossy");
Kafka headers and the producer's timestamp are not kept in a dead letter.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from faust.cli import argument, option

from app.kafka_admin import client_options, read_to_end
from app.main import app, settings
from records.errors import ERROR_TYPES, VelocityError
from records.transaction import Transaction

log = logging.getLogger(__name__)

Action = Literal["stats", "show", "replay"]
ACTIONS: tuple[Action, ...] = get_args(Action)

#: What a rejection message can name before its colon: a SPEC 3 field, or the value as a whole.
KNOWN_FIELDS: tuple[str, ...] = ("value", *(f.name for f in dataclasses.fields(Transaction)))
#: The field bucket of a letter whose message names no known field (ProcessingError: ``KeyError: ...``).
OTHER_FIELD = "other"
#: records/transaction.py's message for a message without a value: replayed as a tombstone again.
TOMBSTONE_MESSAGE = "value: message has no value (tombstone)"
#: ``raw_value`` in a ``show`` line is cut at this many characters.
RAW_PREVIEW_CHARS = 200
#: Unreadable messages on the topic logged with their coordinates (the rest are only counted).
LOGGED_UNREADABLE = 5
#: A read that has not moved for this long is given up (the broker went away meanwhile).
READ_STALL_S = 30.0
#: The fields of a SPEC 6 dead letter (records/schema.py ``DeadLetter``), with the JSON types they must have.
LETTER_FIELDS: dict[str, tuple[type, ...]] = {
    "original_topic": (str,),
    "original_partition": (int,),
    "original_offset": (int,),
    "original_key": (str, type(None)),
    "error_type": (str,),
    "error_message": (str,),
    "failed_at": (str,),
    "raw_value": (str,),
}


class UnreadableLetter(VelocityError):
    """A message on the dead-letter topic that is not a readable SPEC 6 dead letter."""


class NotReplayable(VelocityError):
    """A dead letter whose original message cannot be rebuilt (a broken re-keying envelope)."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as read, with where it sits on the dead-letter topic."""

    dlq_partition: int
    dlq_offset: int
    original_topic: str
    original_partition: int
    original_offset: int
    original_key: str | None
    error_type: str
    error_message: str
    failed_at: str
    failed_at_utc: datetime
    raw_value: str
    raw_value_truncated: bool = False  # the worker kept only the start of a large value

    @property
    def origin(self) -> tuple[str, int, int]:
        """The original message's coordinates: one message dead-lettered twice has them twice."""
        return self.original_topic, self.original_partition, self.original_offset

    def to_json(self) -> dict[str, Any]:
        """The SPEC 6 fields as on the topic, plus ``dlq_partition`` and ``dlq_offset``."""
        return {
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_key": self.original_key,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "failed_at": self.failed_at,
            "raw_value": self.raw_value,
            "dlq_partition": self.dlq_partition,
            "dlq_offset": self.dlq_offset,
        }


def decode_letter(dlq_partition: int, dlq_offset: int, raw: bytes | None) -> Letter:
    """A dead letter's bytes -> :class:`Letter`, or :class:`UnreadableLetter` saying why not."""
    if raw is None:
        raise UnreadableLetter("no value (tombstone)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UnreadableLetter(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UnreadableLetter("not a JSON object")
    for name, types in LETTER_FIELDS.items():
        if name not in obj:
            raise UnreadableLetter(f"{name}: missing")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise UnreadableLetter(f"{name}: unexpected {type(value).__name__}")
    try:
        failed_at_utc = parse_time(obj["failed_at"])
    except ValueError:
        raise UnreadableLetter(f"failed_at: not ISO 8601: {obj['failed_at']!r}") from None
    return Letter(
        dlq_partition=dlq_partition,
        dlq_offset=dlq_offset,
        original_topic=obj["original_topic"],
        original_partition=obj["original_partition"],
        original_offset=obj["original_offset"],
        original_key=obj["original_key"],
        error_type=obj["error_type"],
        error_message=obj["error_message"],
        failed_at=obj["failed_at"],
        failed_at_utc=failed_at_utc,
        raw_value=obj["raw_value"],
        raw_value_truncated=obj.get("raw_value_truncated") is True,
    )


# ------------------------------------------------------------------ selection


def parse_time(text: str) -> datetime:
    """ISO 8601 (``Z``, an offset, or none: UTC; a date alone is its midnight) -> an aware UTC datetime.

    Raises :class:`ValueError` for anything else.
    """
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_error_types(values: Iterable[str]) -> frozenset[str] | None:
    """``--error-type`` values (repeated and/or comma lists, any case) -> the SPEC 6 names; None: all.

    Raises :class:`ValueError` naming an unknown type and the known ones.
    """
    known = {t.lower(): t for t in ERROR_TYPES}
    chosen: set[str] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if not name:
                continue
            if name.lower() not in known:
                raise ValueError(f"unknown error type {name!r} (known: {', '.join(ERROR_TYPES)})")
            chosen.add(known[name.lower()])
    return frozenset(chosen) if chosen else None


def format_time(value: datetime) -> str:
    """UTC, milliseconds and ``Z``, as ``failed_at`` is written."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an action takes: by error type, and ``since <= failed_at < until``."""

    error_types: frozenset[str] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def selects(self, letter: Letter) -> bool:
        if self.error_types is not None and letter.error_type not in self.error_types:
            return False
        if self.since is not None and letter.failed_at_utc < self.since:
            return False
        return self.until is None or letter.failed_at_utc < self.until

    def describe(self) -> str:
        """The filters in words ("" when there are none)."""
        parts = []
        if self.error_types is not None:
            parts.append("error_type " + "|".join(t for t in ERROR_TYPES if t in self.error_types))
        if self.since is not None:
            parts.append(f"failed_at >= {format_time(self.since)}")
        if self.until is not None:
            parts.append(f"failed_at < {format_time(self.until)}")
        return ", ".join(parts)


def build_selection(error_types: Iterable[str], since: str | None, until: str | None) -> Selection:
    """The options of the command -> a :class:`Selection`; :class:`ValueError` with the line to print."""
    times: dict[str, datetime | None] = {}
    for name, text in (("since", since), ("until", until)):
        if text is None:
            times[name] = None
            continue
        try:
            times[name] = parse_time(text)
        except ValueError:
            raise ValueError(
                f"--{name} {text!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)"
            ) from None
    lo, hi = times["since"], times["until"]
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"--since {since!r} must be before --until {until!r}")
    return Selection(parse_error_types(error_types), lo, hi)


# --------------------------------------------------------------------- stats


def fields_named(error_type: str, error_message: str) -> tuple[str, ...]:
    """The fields a rejection message names, or ``("other",)``.

    Rejections name the field first (``amount: must be >= 0 ...``); a
    ``ValidationError`` joins one such part per field with ``"; "``. A
    ``DecodeError`` names ``value``; a ``ProcessingError`` names an exception
    type (``KeyError: ...``), which is no field.
    """
    parts = error_message.split("; ") if error_type == "ValidationError" else [error_message]
    found: list[str] = []
    for part in parts:
        name, colon, _ = part.partition(":")
        name = name.strip()
        if colon and name in KNOWN_FIELDS and name not in found:
            found.append(name)
    return tuple(found) or (OTHER_FIELD,)


@dataclass
class DlqStats:
    """What ``stats`` prints, accumulated one dead letter at a time (the topic is not held in memory)."""

    selection: Selection = field(default_factory=Selection)
    read: int = 0  # messages read from the topic
    unreadable: int = 0
    not_selected: int = 0
    repeated: int = 0  # selected letters repeating the original message of an earlier one
    by_type: Counter[str] = field(default_factory=Counter)
    by_field: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    oldest: Letter | None = None
    newest: Letter | None = None
    _origins: set[tuple[str, int, int]] = field(default_factory=set)

    @property
    def selected(self) -> int:
        return sum(self.by_type.values())

    def add_unreadable(self) -> None:
        self.read += 1
        self.unreadable += 1

    def add(self, letter: Letter) -> bool:
        """Count ``letter``; whether the selection takes it."""
        self.read += 1
        if not self.selection.selects(letter):
            self.not_selected += 1
            return False
        self.by_type[letter.error_type] += 1
        for name in fields_named(letter.error_type, letter.error_message):
            self.by_field[name] += 1
        self.by_topic[letter.original_topic] += 1
        if letter.origin in self._origins:
            self.repeated += 1
        self._origins.add(letter.origin)
        if self.oldest is None or letter.failed_at_utc < self.oldest.failed_at_utc:
            self.oldest = letter
        if self.newest is None or letter.failed_at_utc > self.newest.failed_at_utc:
            self.newest = letter
        return True

    def rows(self) -> list[tuple[str, str, int]]:
        """``(by, value, count)``: the selected total, then per error type, field and original topic."""
        rows = [("selected", "-", self.selected)]
        wanted = self.selection.error_types
        shown_types: list[str] = [t for t in ERROR_TYPES if wanted is None or t in wanted]
        shown_types += sorted(t for t in self.by_type if t not in ERROR_TYPES)
        rows += [("error_type", t, self.by_type[t]) for t in shown_types]
        fields = sorted((f for f in self.by_field if f != OTHER_FIELD), key=lambda f: (-self.by_field[f], f))
        if OTHER_FIELD in self.by_field:
            fields.append(OTHER_FIELD)
        rows += [("field", f, self.by_field[f]) for f in fields]
        rows += [("original_topic", t, self.by_topic[t]) for t in sorted(self.by_topic)]
        rows += [
            ("repeated", "-", self.repeated),
            ("not_selected", "-", self.not_selected),
            ("unreadable", "-", self.unreadable),
        ]
        return rows

    def lines(self) -> list[str]:
        """The aligned table, then the oldest and newest ``failed_at`` of the selection."""
        rows = self.rows()
        by_w = max(len("BY"), *(len(r[0]) for r in rows))
        value_w = max(len("VALUE"), *(len(r[1]) for r in rows))
        lines = [f"{'BY':<{by_w}}  {'VALUE':<{value_w}}  {'COUNT':>9}"]
        lines += [f"{by:<{by_w}}  {value:<{value_w}}  {count:>9}" for by, value, count in rows]
        if self.oldest is not None and self.newest is not None:
            lines.append(f"oldest failed_at: {self.oldest.failed_at}")
            lines.append(f"newest failed_at: {self.newest.failed_at}")
        return lines


# ---------------------------------------------------------------------- show


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped, so a letter stays on one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def preview(text: str, max_chars: int = RAW_PREVIEW_CHARS) -> str:
    """At most ``max_chars`` characters of ``text``, saying how many more there were."""
    if len(text) <= max_chars:
        return one_line(text)
    return f"{one_line(text[:max_chars])}...(+{len(text) - max_chars} chars)"


def show_line(letter: Letter) -> str:
    """failed_at, error_type, original topic[partition]@offset, key, message, raw value (cut)."""
    return (
        f"{letter.failed_at}  {letter.error_type}  "
        f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}  "
        f"key={'-' if letter.original_key is None else one_line(repr(letter.original_key))}  "
        f"{one_line(letter.error_message)}  raw={preview(letter.raw_value)}"
    )


def in_time_order(letters: Iterable[Letter]) -> list[Letter]:
    """By ``failed_at`` (the order the workers processed them), then where they sit on the topic."""
    return sorted(letters, key=lambda w: (w.failed_at_utc, w.dlq_partition, w.dlq_offset))


# -------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class Resend:
    """One original message to send again."""

    letter: Letter
    key: bytes | None
    value: bytes | None
    destination: str
    lossy: bool  # the key or value held a U+FFFD: maybe not the original bytes


def is_rekey_topic(topic: str, transactions_topic: str) -> bool:
    """Whether ``topic`` is a re-keying hop of ``transactions_topic`` (of any app id)."""
    return topic.endswith(f"-{transactions_topic}-rekeyed")


def unwrap_envelope(raw_value: str) -> tuple[bytes | None, bytes | None]:
    """The original key and value inside a re-keying envelope (agents/features.py ``_envelope``).

    Only a message that failed on the re-keying hop itself carries the hop's
    coordinates and envelope: the others are dead-lettered with the input
    message's own coordinates and bytes.
    """
    try:
        env = orjson.loads(raw_value)
        key_b64, value = env["key"], env["raw_value"]
        if not (key_b64 is None or isinstance(key_b64, str)) or not (value is None or isinstance(value, str)):
            raise TypeError("key and raw_value must be strings or null")
        key = None if key_b64 is None else base64.b64decode(key_b64, validate=True)
    except (orjson.JSONDecodeError, TypeError, KeyError, binascii.Error) as exc:
        raise NotReplayable(f"a re-keying message whose envelope cannot be opened ({exc})") from None
    return key, None if value is None else value.encode("utf-8")


def resend_for(letter: Letter, transactions_topic: str) -> Resend:
    """What replaying ``letter`` sends to the input topic; :class:`NotReplayable` if nothing can be."""
    if letter.raw_value_truncated:
        raise NotReplayable("its value was cut (larger than a dead letter keeps): the original is not here")
    if is_rekey_topic(letter.original_topic, transactions_topic):
        key, value = unwrap_envelope(letter.raw_value)
        lossy = "\ufffd" in letter.raw_value
    else:
        key = None if letter.original_key is None else letter.original_key.encode("utf-8")
        tombstone = (
            letter.error_type == "DecodeError"
            and letter.error_message == TOMBSTONE_MESSAGE
            and not letter.raw_value
        )
        value = None if tombstone else letter.raw_value.encode("utf-8")
        lossy = "\ufffd" in letter.raw_value or "\ufffd" in (letter.original_key or "")
    return Resend(letter, key, value, transactions_topic, lossy)


@dataclass
class ReplayPlan:
    """The selected dead letters' original messages, once each, in the order they failed."""

    resends: list[Resend] = field(default_factory=list)
    read: int = 0
    unreadable: int = 0
    not_selected: int = 0
    repeated: int = 0
    not_replayable: list[tuple[Letter, str]] = field(default_factory=list)


def plan_replay(
    letters: Iterable[Letter],
    selection: Selection,
    transactions_topic: str,
    *,
    unreadable: int = 0,
    not_selected: int = 0,
) -> ReplayPlan:
    """What ``replay`` sends of ``letters``; the counts are of messages left out before (by the reader)."""
    plan = ReplayPlan(read=unreadable + not_selected, unreadable=unreadable, not_selected=not_selected)
    seen: set[tuple[str, int, int]] = set()
    for letter in in_time_order(letters):
        plan.read += 1
        if not selection.selects(letter):
            plan.not_selected += 1
        elif letter.origin in seen:
            plan.repeated += 1
        else:
            seen.add(letter.origin)
            try:
                plan.resends.append(resend_for(letter, transactions_topic))
            except NotReplayable as exc:
                plan.not_replayable.append((letter, str(exc)))
    return plan


def replay_lines(plan: ReplayPlan, sent: bool) -> list[str]:
    """The summary: messages per error type and destination, then what was skipped and why."""
    counts = Counter((r.letter.error_type, r.destination) for r in plan.resends)
    type_order: dict[str, int] = {t: i for i, t in enumerate(ERROR_TYPES)}
    rows = sorted(counts.items(), key=lambda kv: (type_order.get(kv[0][0], len(type_order)), kv[0]))
    type_w = max(len("ERROR_TYPE"), *(len(t) for (t, _), _ in rows)) if rows else len("ERROR_TYPE")
    dest_w = max(len("DESTINATION"), *(len(d) for (_, d), _ in rows)) if rows else len("DESTINATION")
    verb = "SENT" if sent else "TO_SEND"
    lines = [f"{'ERROR_TYPE':<{type_w}}  {'DESTINATION':<{dest_w}}  {verb:>9}"]
    lines += [f"{t:<{type_w}}  {d:<{dest_w}}  {n:>9}" for (t, d), n in rows]
    lines.append(f"{'total':<{type_w}}  {'':<{dest_w}}  {len(plan.resends):>9}")
    lines.append(
        f"skipped: {plan.not_selected} not selected, {plan.repeated} repeated (an original message "
        f"dead-lettered more than once), {len(plan.not_replayable)} not replayable, "
        f"{plan.unreadable} unreadable"
    )
    lossy = sum(r.lossy for r in plan.resends)
    if lossy:
        lines.append(
            f"lossy: {lossy} of them held bytes that were not UTF-8 (now U+FFFD): not the original bytes"
        )
    for letter, reason in plan.not_replayable:
        lines.append(
            f"not replayable: {letter.original_topic}[{letter.original_partition}]@"
            f"{letter.original_offset}: {reason}"
        )
    return lines


# ---------------------------------------------------------------------- Kafka


class TopicMissing(VelocityError):
    """A topic the command needs does not exist."""


async def read_topic(
    broker_url: str, topic: str, sink: Callable[[int, int, bytes | None], None]
) -> frozenset[str]:
    """Hand every committed message of ``topic``, up to its end offsets as of now, to ``sink``.

    ``sink(partition, offset, value)``; each partition in offset order. No
    consumer group. Returns the names of the topics the cluster has.
    """
    consumer = AIOKafkaConsumer(
        **client_options(broker_url),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        # aiokafka has no public call that refreshes the consumer's own metadata before an assignment.
        await consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TopicMissing(f"topic {topic!r} does not exist on {broker_url}")
        existing = frozenset(consumer._client.cluster.topics())  # noqa: SLF001
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        async for r in read_to_end(consumer, tps, READ_STALL_S):
            sink(r.partition, r.offset, r.value)
        return existing
    finally:
        await consumer.stop()


async def send_all(broker_url: str, resends: Sequence[Resend]) -> int:
    """Send with an idempotent producer (acks=all) and wait for every delivery; returns how many."""
    producer = AIOKafkaProducer(**client_options(broker_url), enable_idempotence=True, acks="all")
    try:
        await producer.start()
        futures = [await producer.send(r.destination, value=r.value, key=r.key) for r in resends]
        await producer.flush()
        for fut in futures:
            fut.result()  # a failed delivery raises its error here
        return len(futures)
    finally:
        await producer.stop()


# -------------------------------------------------------------------- command


@app.command(
    argument("action", type=click.Choice(ACTIONS)),
    option(
        "--error-type",
        "error_types",
        multiple=True,
        help=f"Only this error type (repeat it, or a comma list): {', '.join(ERROR_TYPES)}.",
    ),
    option(
        "--since", type=str, default=None, help="Only dead letters with failed_at at or after this ISO time."
    ),
    option("--until", type=str, default=None, help="Only dead letters with failed_at before this ISO time."),
    option("--dry-run", is_flag=True, default=False, help="replay: print what would be sent, send nothing."),
    option("--limit", type=int, default=0, help="show: at most this many dead letters (0: all)."),
    option("--json", "as_json", is_flag=True, default=False, help="show: one JSON object per line."),
)
async def dlq(
    self: Any,
    action: Action,
    error_types: tuple[str, ...],
    since: str | None,
    until: str | None,
    dry_run: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Dead letters: stats summarises them, show lists them, replay re-sends their original messages.

    replay sends each selected dead letter's original bytes with its
    original key to the input topic (TRANSACTIONS_TOPIC), once per original
    message. Running it twice is harmless: an accepted transaction sent again
    is a SPEC 4 duplicate (its record re-published, never counted twice);
    an invalid or late one is dead-lettered again.
    """
    if dry_run and action != "replay":
        raise SystemExit("dlq: --dry-run only applies to replay")
    if (limit or as_json) and action != "show":
        raise SystemExit("dlq: --limit and --json only apply to show")
    if limit < 0:
        raise SystemExit("dlq: --limit must be >= 0")
    try:
        selection = build_selection(error_types, since, until)
    except ValueError as exc:
        raise SystemExit(f"dlq: {exc}") from None
    topic, broker = settings.dlq_topic, settings.broker_url
    started = format_time(datetime.now(UTC))
    stats = DlqStats(selection)
    letters: list[Letter] = []
    unreadable: list[tuple[int, int, str]] = []  # where and why, the first few, for the log

    def sink(partition: int, offset: int, value: bytes | None) -> None:
        try:
            letter = decode_letter(partition, offset, value)
        except UnreadableLetter as exc:
            stats.add_unreadable()
            if len(unreadable) < LOGGED_UNREADABLE:
                unreadable.append((partition, offset, str(exc)))
            return
        # Only the selected letters are kept (show, replay): stats needs none.
        if stats.add(letter) and action != "stats":
            letters.append(letter)

    try:
        existing = await read_topic(broker, topic, sink)
    except TopicMissing as exc:
        raise SystemExit(f"dlq: {exc}") from None
    except KafkaError as exc:
        raise SystemExit(f"dlq: cannot read {topic!r} from {broker}: {exc}") from None
    read = stats.read
    if read == 0:
        self.say(f"dlq: no dead letters on {topic!r} ({broker})")
        return
    for partition, offset, reason in unreadable:
        log.warning("unreadable dead letter at %s[%s]@%s: %s", topic, partition, offset, reason)
    where = f"{topic!r} ({broker})" + (f", selecting {selection.describe()}" if selection.describe() else "")

    if action == "stats":
        self.say(f"dlq: {read} messages on {where}:")
        for line in stats.lines():
            self.say(line)
        return

    if action == "show":
        chosen = in_time_order(letters)
        out = self.stderr if as_json else None
        if not chosen:
            self.say(f"dlq: no dead letters selected of the {read} messages on {where}", file=out)
        shown = chosen[:limit] if limit else chosen
        for letter in shown:
            self.say(orjson.dumps(letter.to_json()).decode() if as_json else show_line(letter))
        if len(shown) < len(chosen):
            self.say(f"dlq: {len(chosen) - len(shown)} more not shown (--limit {limit})", file=out)
        if stats.unreadable:
            self.say(f"dlq: {stats.unreadable} unreadable messages left out", file=out)
        return

    plan = plan_replay(
        letters,
        selection,
        settings.transactions_topic,
        unreadable=stats.unreadable,
        not_selected=stats.not_selected,
    )
    if plan.resends and settings.transactions_topic not in existing:
        raise SystemExit(f"dlq: topic {settings.transactions_topic!r} does not exist on {broker}")
    if dry_run or not plan.resends:
        sent = False
        head = f"dlq: replay --dry-run of {read} messages on {where}: nothing sent"
        if not dry_run:
            head = f"dlq: replay of {read} messages on {where}: nothing to send"
    else:
        try:
            await send_all(broker, plan.resends)
        except KafkaError as exc:
            raise SystemExit(
                f"dlq: replay to {settings.transactions_topic!r} on {broker} failed (some of the "
                f"{len(plan.resends)} messages may have been sent; replaying again is safe): {exc}"
            ) from None
        sent = True
        head = f"dlq: replayed {len(plan.resends)} of {read} messages on {where}"
    self.say(head)
    for line in replay_lines(plan, sent):
        self.say(line)
    if sent:
        # What this replay dead-letters again is selected by the next replay too, unless it stops here.
        self.say(
            f"dlq: to replay the same dead letters again (not the ones this replay makes): --until {started}"
        )
