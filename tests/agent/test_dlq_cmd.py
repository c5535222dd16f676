"""``faust -A app dlq``'s pure parts: decoding letters, selection, a message's field, stats, replay plans.

The rejection messages are the real ones: made by records/transaction.py and
tables/window.py from bad input, so a change of their wording that the field
extraction does not follow fails here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from agents.features import Origin, _envelope
from app.dlq import (
    LETTER_FIELDS,
    OTHER_FIELD,
    TOMBSTONE_MESSAGE,
    DlqStats,
    Letter,
    NotReplayable,
    Selection,
    UnreadableLetter,
    build_selection,
    decode_letter,
    fields_named,
    in_time_order,
    parse_error_types,
    parse_time,
    plan_replay,
    replay_lines,
    resend_for,
    show_line,
)
from records.errors import RejectedMessage
from records.schema import DeadLetter
from records.transaction import Transaction, decode_json_object, parse_transaction
from tables.window import UserWindow
from tests.integration.streams import changed

NOW = time.time()
GOOD: dict[str, Any] = {
    "transaction_id": "t1",
    "user_id": "u1",
    "amount": 5.0,
    "merchant_id": "m1",
    "timestamp": NOW - 60,
}


def rejection(raw: bytes | None) -> tuple[str, str]:
    """(error_type, error_message) that validation gives ``raw``."""
    with pytest.raises(RejectedMessage) as caught:
        parse_transaction(raw, NOW, 300.0)
    return caught.value.error_type, caught.value.message


def variant(**changes: Any) -> bytes:
    return changed(GOOD, **changes)


def late_message() -> str:
    window = UserWindow("u1", lateness_s=60.0)
    txn = Transaction("t1", "u1", 1.0, "m1", "unknown", NOW, False)
    assert window.apply(txn, computed_at_s=NOW).verdict == "accepted"
    outcome = window.apply(Transaction("t2", "u1", 1.0, "m1", "unknown", NOW - 600, False), computed_at_s=NOW)
    assert outcome.verdict == "late"
    return outcome.reason


def letter(
    error_type: str = "ValidationError",
    error_message: str = "amount: must be >= 0 and < 1e12, got -1",
    failed_at: str = "2026-01-02T03:04:05.000Z",
    topic: str = "tx",
    partition: int = 0,
    offset: int = 0,
    key: str | None = "u1",
    raw: str = '{"amount": -1}',
    dlq_at: tuple[int, int] = (0, 0),
) -> Letter:
    encoded = DeadLetter.for_message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.encode(),
        error_type=error_type,  # type: ignore[arg-type]
        error_message=error_message,
        failed_at=failed_at,
        raw_value=raw.encode(),
    ).encode()
    return decode_letter(*dlq_at, encoded)


# ------------------------------------------------------------------ fields


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (b"{not json", ("value",)),
        (b"[1, 2]", ("value",)),
        (b'{"amount": NaN}', ("value",)),
        (None, ("value",)),
        (variant(amount=-1), ("amount",)),
        (variant(amount="12"), ("amount",)),
        (variant(transaction_id=...), ("transaction_id",)),
        (variant(user_id="u" * 129), ("user_id",)),
        (variant(timestamp=NOW + 3600), ("timestamp",)),
        (variant(is_online="yes"), ("is_online",)),
        (variant(merchant_category=3), ("merchant_category",)),
        (variant(amount=-1, timestamp=0, merchant_id=...), ("amount", "merchant_id", "timestamp")),
    ],
)
def test_the_field_is_the_one_the_real_rejection_names(raw: bytes | None, fields: tuple[str, ...]) -> None:
    error_type, message = rejection(raw)
    assert fields_named(error_type, message) == fields


def test_a_late_event_names_the_timestamp_and_an_exception_is_other() -> None:
    assert fields_named("LateEvent", late_message()) == ("timestamp",)
    assert fields_named("ProcessingError", "KeyError: 'amount'") == (OTHER_FIELD,)
    # Only a ValidationError joins one part per field: another type's later parts are not fields.
    assert fields_named("ProcessingError", "ValueError: x; amount: y") == (OTHER_FIELD,)
    assert fields_named("ValidationError", "no colon here") == (OTHER_FIELD,)
    assert fields_named("ValidationError", "") == (OTHER_FIELD,)


def test_the_tombstone_message_is_the_one_validation_writes() -> None:
    with pytest.raises(RejectedMessage) as caught:
        decode_json_object(None)
    assert caught.value.message == TOMBSTONE_MESSAGE


# ------------------------------------------------------------------ decoding


def test_a_dead_letter_decodes_to_its_fields_and_back() -> None:
    # SPEC 6's fields are required; ours (the original size, whether it was cut) are optional.
    assert set(LETTER_FIELDS) | {"raw_value_bytes", "raw_value_truncated"} == set(DeadLetter.field_names)
    w = letter(key=None, dlq_at=(3, 17))
    assert (w.dlq_partition, w.dlq_offset, w.original_key) == (3, 17, None)
    assert w.failed_at_utc == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    as_json = w.to_json()
    assert {k: as_json[k] for k in LETTER_FIELDS} == orjson.loads(
        orjson.dumps({k: getattr(w, k) for k in LETTER_FIELDS})
    )
    assert (as_json["dlq_partition"], as_json["dlq_offset"]) == (3, 17)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"{}", "original_topic: missing"),
    ],
)
def test_an_unreadable_dead_letter_says_why(raw: bytes | None, reason: str) -> None:
    with pytest.raises(UnreadableLetter, match=reason):
        decode_letter(0, 0, raw)


@pytest.mark.parametrize(
    ("name", "value"),
    [("original_partition", True), ("original_offset", "7"), ("raw_value", None), ("failed_at", "yesterday")],
)
def test_a_dead_letter_with_a_wrong_field_is_unreadable(name: str, value: Any) -> None:
    body = letter().to_json()
    body[name] = value
    with pytest.raises(UnreadableLetter, match=name):
        decode_letter(0, 0, orjson.dumps(body))


# ------------------------------------------------------------------ selection


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.250Z", datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
        (" 2026-01-02 03:04 ", datetime(2026, 1, 2, 3, 4, tzinfo=UTC)),
    ],
)
def test_times_are_iso_8601_and_utc_unless_they_say_otherwise(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "", "1700000000", "2026-13-01", "2026-01-02T25:00Z"])
def test_a_bad_time_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_error_types_are_repeatable_comma_lists_in_any_case() -> None:
    assert parse_error_types([]) is None
    assert parse_error_types(["", " , "]) is None
    assert parse_error_types(["LateEvent"]) == frozenset({"LateEvent"})
    assert parse_error_types(["lateevent, decodeerror", "ValidationError"]) == frozenset(
        {"LateEvent", "DecodeError", "ValidationError"}
    )
    with pytest.raises(ValueError, match=r"unknown error type 'Late' \(known: DecodeError, ValidationError"):
        parse_error_types(["DecodeError,Late"])


def test_the_options_build_a_selection_or_say_which_one_is_wrong() -> None:
    s = build_selection(["LateEvent"], "2026-01-02T00:00:00Z", "2026-01-03")
    assert s == Selection(
        frozenset({"LateEvent"}), datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    )
    assert s.describe() == (
        "error_type LateEvent, failed_at >= 2026-01-02T00:00:00.000Z, failed_at < 2026-01-03T00:00:00.000Z"
    )
    assert build_selection([], None, None).describe() == ""
    with pytest.raises(ValueError, match="--until 'soon' is not an ISO 8601 time"):
        build_selection([], None, "soon")
    with pytest.raises(ValueError, match=r"--since .* must be before --until"):
        build_selection([], "2026-01-03", "2026-01-02T23:00:00+00:00")


def test_since_is_inclusive_until_exclusive_and_types_filter() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    w = letter(failed_at="2026-01-02T03:04:05.000Z", error_type="LateEvent")
    assert Selection().selects(w)
    assert Selection(since=at).selects(w)
    assert not Selection(since=at + timedelta(milliseconds=1)).selects(w)
    assert not Selection(until=at).selects(w)
    assert Selection(until=at + timedelta(milliseconds=1)).selects(w)
    assert Selection(frozenset({"LateEvent", "DecodeError"})).selects(w)
    assert not Selection(frozenset({"DecodeError"})).selects(w)
    # An offset in the option and Z in the letter are the same instant.
    assert Selection(since=parse_time("2026-01-02T04:04:05+01:00")).selects(w)
    assert not Selection(until=parse_time("2026-01-02T04:04:05+01:00")).selects(w)


# ------------------------------------------------------------------ stats


def test_stats_count_by_type_field_and_topic_and_keep_the_oldest_and_newest() -> None:
    stats = DlqStats(Selection(since=parse_time("2026-01-01T00:00:00Z")))
    _, two_fields = rejection(variant(amount=-1, timestamp=0))
    for w in [
        letter("DecodeError", "value: not strict JSON: x", "2026-01-02T00:00:01.000Z", offset=1),
        letter("ValidationError", two_fields, "2026-01-02T00:00:03.000Z", offset=2),
        letter("ValidationError", "amount: required", "2026-01-02T00:00:02.000Z", offset=3),
        letter("LateEvent", late_message(), "2026-01-02T00:00:04.000Z", offset=4, topic="tx-b"),
        letter("ProcessingError", "KeyError: 'x'", "2026-01-02T00:00:05.000Z", offset=5),
        # The same original message dead-lettered again (processed again after a crash).
        letter("ProcessingError", "KeyError: 'x'", "2026-01-02T00:00:06.000Z", offset=5),
        letter("DecodeError", "value: not strict JSON: x", "2025-12-31T23:59:59.999Z", offset=6),
    ]:
        stats.add(w)
    stats.add_unreadable()
    rows = {(by, value): count for by, value, count in stats.rows()}
    assert rows == {
        ("selected", "-"): 6,
        ("error_type", "DecodeError"): 1,
        ("error_type", "ValidationError"): 2,
        ("error_type", "LateEvent"): 1,
        ("error_type", "ProcessingError"): 2,
        ("field", "amount"): 2,
        ("field", "timestamp"): 2,
        ("field", "value"): 1,
        ("field", OTHER_FIELD): 2,
        ("original_topic", "tx"): 5,
        ("original_topic", "tx-b"): 1,
        ("repeated", "-"): 1,
        ("not_selected", "-"): 1,
        ("unreadable", "-"): 1,
    }
    assert stats.read == 8
    # Fields by count then name, "other" last.
    assert [v for by, v, _ in stats.rows() if by == "field"] == ["amount", "timestamp", "value", "other"]
    lines = stats.lines()
    table = lines[:-2]
    assert len({len(line) for line in table}) == 1, "the table's columns are aligned"
    assert table[0].split() == ["BY", "VALUE", "COUNT"]
    assert table[1].split() == ["selected", "-", "6"]
    assert lines[-2:] == [
        "oldest failed_at: 2026-01-02T00:00:01.000Z",
        "newest failed_at: 2026-01-02T00:00:06.000Z",
    ]


def test_stats_of_one_selected_type_list_only_that_type_and_no_dates_when_empty() -> None:
    stats = DlqStats(Selection(frozenset({"LateEvent"})))
    stats.add(letter("DecodeError", "value: x"))
    assert [(by, v, n) for by, v, n in stats.rows() if by in ("selected", "error_type")] == [
        ("selected", "-", 0),
        ("error_type", "LateEvent", 0),
    ]
    assert not any(line.startswith(("oldest", "newest")) for line in stats.lines())


# ------------------------------------------------------------------ show


def test_a_show_line_is_one_line_with_the_raw_value_cut() -> None:
    raw = '{"a": "' + "x" * 300 + '"}\n'
    line = show_line(letter(raw=raw, error_message="amount: bad\nvalue", partition=2, offset=9, key=None))
    assert "\n" not in line
    assert line.startswith(
        "2026-01-02T03:04:05.000Z  ValidationError  tx[2]@9  key=-  amount: bad\\nvalue  raw="
    )
    assert line.endswith(f"...(+{len(raw) - 200} chars)")
    assert len(line.split("raw=", 1)[1]) == 200 + len(f"...(+{len(raw) - 200} chars)")
    assert "key='u1'" in show_line(letter(key="u1"))


def test_time_order_is_failed_at_then_topic_position() -> None:
    a = letter(failed_at="2026-01-02T00:00:02.000Z", dlq_at=(0, 5))
    b = letter(failed_at="2026-01-02T01:00:01.000+01:00", dlq_at=(1, 0))  # 00:00:01Z
    c = letter(failed_at="2026-01-02T00:00:02.000Z", dlq_at=(0, 4))
    assert in_time_order([a, b, c]) == [b, c, a]


# ------------------------------------------------------------------ replay


def test_a_resend_is_the_original_bytes_and_key_to_the_input_topic() -> None:
    raw = orjson.dumps(GOOD).decode()
    r = resend_for(letter(raw=raw, key="u1", topic="tx-old"), "tx")
    assert (r.key, r.value, r.destination, r.lossy) == (b"u1", raw.encode(), "tx", False)
    assert resend_for(letter(key=None), "tx").key is None
    # Bytes that were not UTF-8 come back replaced: said, still sent.
    assert resend_for(letter(raw="\ufffd\ufffd\x00"), "tx").lossy
    assert resend_for(letter(key="\ufffdk"), "tx").lossy


def test_a_tombstone_is_replayed_as_a_tombstone() -> None:
    r = resend_for(letter("DecodeError", TOMBSTONE_MESSAGE, raw=""), "tx")
    assert r.value is None
    # An empty value that was no tombstone stays empty.
    assert resend_for(letter("DecodeError", "value: not strict JSON: x", raw=""), "tx").value == b""


def test_a_letter_from_the_rekeying_hop_replays_the_message_inside_its_envelope() -> None:
    raw = orjson.dumps(GOOD)
    origin = Origin("tx", 3, 41, b"\x00not-utf8-key", 1.5, raw)
    txn = parse_transaction(raw, NOW, 300)
    envelope = _envelope(origin, txn).decode()
    w = letter("ProcessingError", "KeyError: 'txn'", topic="velocity-tx-rekeyed", key="u1", raw=envelope)
    r = resend_for(w, "tx")
    # The envelope keeps the key's exact bytes (base64), even when they are not UTF-8.
    assert (r.key, r.value, r.destination) == (b"\x00not-utf8-key", raw, "tx")
    with pytest.raises(NotReplayable):
        resend_for(letter(topic="velocity-tx-rekeyed", raw="{broken"), "tx")
    with pytest.raises(NotReplayable):
        resend_for(letter(topic="velocity-tx-rekeyed", raw='{"key": "%%%", "raw_value": "x"}'), "tx")


def test_a_replay_plan_sends_each_selected_message_once_in_failure_order() -> None:
    letters = [
        letter("LateEvent", "timestamp: x", "2026-01-02T00:00:03.000Z", offset=1, raw="late"),
        letter("DecodeError", "value: x", "2026-01-02T00:00:01.000Z", offset=2, raw="bad"),
        letter("LateEvent", "timestamp: x", "2026-01-02T00:00:04.000Z", offset=1, raw="late"),  # again
        letter("ValidationError", "amount: x", "2026-01-02T00:00:02.000Z", offset=3, raw="neg"),
        letter("LateEvent", "timestamp: x", "2026-01-02T00:00:00.000Z", offset=4, raw="early"),
        letter("DecodeError", "value: x", "2026-01-02T00:00:05.000Z", topic="a-tx-rekeyed", raw="{"),
    ]
    selection = Selection(frozenset({"LateEvent", "DecodeError"}), since=parse_time("2026-01-02T00:00:01Z"))
    plan = plan_replay(letters, selection, "tx", unreadable=2, not_selected=3)
    assert [r.value for r in plan.resends] == [b"bad", b"late"]
    assert (plan.read, plan.not_selected, plan.repeated, plan.unreadable) == (11, 5, 1, 2)
    assert [w.original_topic for w, _ in plan.not_replayable] == ["a-tx-rekeyed"]
    lines = replay_lines(plan, sent=False)
    assert lines[0].split() == ["ERROR_TYPE", "DESTINATION", "TO_SEND"]
    assert [line.split() for line in lines[1:4]] == [
        ["DecodeError", "tx", "1"],
        ["LateEvent", "tx", "1"],
        ["total", "2"],
    ]
    assert lines[4] == (
        "skipped: 5 not selected, 1 repeated (an original message dead-lettered more than once), "
        "1 not replayable, 2 unreadable"
    )
    assert lines[5].startswith("not replayable: a-tx-rekeyed[0]@0: a re-keying message whose envelope")
    assert replay_lines(plan, sent=True)[0].split()[-1] == "SENT"


def test_an_empty_plan_still_has_a_summary() -> None:
    plan = plan_replay([], Selection(), "tx")
    lines = replay_lines(plan, sent=False)
    assert [line.split() for line in lines[:2]] == [["ERROR_TYPE", "DESTINATION", "TO_SEND"], ["total", "0"]]


def test_failed_at_with_an_offset_compares_as_an_instant() -> None:
    w = letter(failed_at="2026-01-02T05:00:00.000+02:00")
    assert w.failed_at_utc == datetime(2026, 1, 2, 3, tzinfo=UTC)
    assert w.failed_at_utc == datetime(2026, 1, 2, 5, tzinfo=timezone(timedelta(hours=2)))


def test_a_letter_whose_value_was_cut_is_not_replayable() -> None:
    big = DeadLetter.for_message(
        topic="transactions",
        partition=0,
        offset=5,
        key=b"u",
        error_type="DecodeError",
        error_message="value: too big",
        failed_at="2026-01-02T03:04:05Z",
        raw_value=b"x" * (200 * 1024),
    ).encode()
    read = decode_letter(0, 1, big)
    assert read.raw_value_truncated and len(read.raw_value) == 64 * 1024
    with pytest.raises(NotReplayable, match="cut"):
        resend_for(read, "transactions")
