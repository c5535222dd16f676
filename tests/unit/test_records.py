"""SPEC 3 (input rules) and SPEC 6 (dead-letter value), as tables and properties.

Every rejection is checked for its ``error_type`` and for a message that names
exactly the fields at fault (messages are ``"<field>: ..."`` joined by ``"; "``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from records.errors import DecodeError, RejectedMessage, ValidationError
from records.schema import DeadLetter
from records.transaction import (
    Transaction,
    _plainly_valid,
    _validate_field_by_field,
    decode_json_object,
    parse_transaction,
    validate_transaction,
)

NOW_S = 1_700_000_000.0
SKEW_S = 300.0
FIELDS = ("transaction_id", "user_id", "amount", "merchant_id", "merchant_category", "timestamp", "is_online")
ID_FIELDS = ("transaction_id", "user_id", "merchant_id")
EMOJI = "\U0001f600"  # 4 bytes in UTF-8, one character
CJK = "\u5b57"  # 3 bytes in UTF-8, one character

VALID: dict[str, Any] = {
    "transaction_id": "tx-1",
    "user_id": "user-1",
    "amount": 12.5,
    "merchant_id": "m-1",
    "merchant_category": "grocery",
    "timestamp": NOW_S - 10,
    "is_online": True,
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Raw(str):
    """A JSON number or literal written verbatim (json.dumps cannot emit 1e400)."""


def message(overrides: dict[str, Any] | None = None, *, ascii_only: bool = False) -> bytes:
    """VALID with ``overrides`` applied (``MISSING`` deletes a field), as JSON bytes.

    ``ascii_only`` writes non-ASCII characters as ``\\u`` escapes (needed for
    lone surrogates); otherwise they are raw UTF-8.
    """
    obj = dict(VALID)
    raws: dict[str, str] = {}
    for name, value in (overrides or {}).items():
        if value is MISSING:
            obj.pop(name, None)
        elif isinstance(value, Raw):
            placeholder = f"@@raw{len(raws)}@@"
            raws[json.dumps(placeholder)] = str(value)
            obj[name] = placeholder
        else:
            obj[name] = value
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=False)
    for placeholder, literal in raws.items():
        text = text.replace(placeholder, literal)
    return text.encode("utf-8")


def fields_named(error_message: str) -> set[str]:
    return {field for field in FIELDS if f"{field}:" in error_message}


def assert_rejected(exc: RejectedMessage, error_type: str, fields: set[str]) -> None:
    assert exc.error_type == error_type
    assert exc.message == str(exc)
    assert "\n" not in exc.message, "SPEC 6: error_message is one line"
    if error_type == "DecodeError":
        # Not a JSON object at all: the field at fault is the message value itself.
        assert exc.message.startswith("value: ")
    else:
        assert fields_named(exc.message) == fields, exc.message


# --------------------------------------------------------------------------- accepted


ACCEPTED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("all fields", {}, dict(VALID)),
    (
        "optional fields missing -> defaults",
        {"merchant_category": MISSING, "is_online": MISSING},
        {"merchant_category": "unknown", "is_online": False},
    ),
    (
        "optional fields null -> defaults",
        {"merchant_category": None, "is_online": None},
        {"merchant_category": "unknown", "is_online": False},
    ),
    ("is_online false", {"is_online": False}, {"is_online": False}),
    (
        "unknown extra fields ignored",
        {"extra": {"nested": [1, None, "x"]}, "amount_usd": "NaN", "": None, "AMOUNT": -1},
        dict(VALID),
    ),
    ("merchant_category empty", {"merchant_category": ""}, {"merchant_category": ""}),
    ("merchant_category 64 ascii", {"merchant_category": "c" * 64}, {"merchant_category": "c" * 64}),
    ("merchant_category 64 emoji", {"merchant_category": EMOJI * 64}, {"merchant_category": EMOJI * 64}),
    ("amount 0", {"amount": 0}, {"amount": 0.0}),
    ("amount 0.0", {"amount": 0.0}, {"amount": 0.0}),
    ("amount integer", {"amount": 42}, {"amount": 42.0}),
    ("amount tiny", {"amount": 1e-9}, {"amount": 1e-9}),
    ("amount just below 1e12", {"amount": 999999999999.99}, {"amount": 999999999999.99}),
    ("amount integer just below 1e12", {"amount": 999_999_999_999}, {"amount": 999_999_999_999.0}),
    ("amount exponent form", {"amount": Raw("1.25E2")}, {"amount": 125.0}),
    ("timestamp integer", {"timestamp": 1_600_000_000}, {"timestamp": 1_600_000_000.0}),
    ("timestamp tiny positive", {"timestamp": 1e-6}, {"timestamp": 1e-6}),
    (
        "timestamp exactly MAX_CLOCK_SKEW_S ahead",
        {"timestamp": NOW_S + SKEW_S},
        {"timestamp": NOW_S + SKEW_S},
    ),
    ("timestamp far in the past", {"timestamp": 1.0}, {"timestamp": 1.0}),
]
for _field in ID_FIELDS:
    ACCEPTED += [
        (f"{_field} 1 char", {_field: "x"}, {_field: "x"}),
        (f"{_field} 128 ascii", {_field: "x" * 128}, {_field: "x" * 128}),
        (f"{_field} 128 emoji (512 bytes)", {_field: EMOJI * 128}, {_field: EMOJI * 128}),
        (f"{_field} 128 cjk (384 bytes)", {_field: CJK * 128}, {_field: CJK * 128}),
        (f"{_field} whitespace only", {_field: " "}, {_field: " "}),
    ]


@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
@pytest.mark.parametrize("ascii_only", [False, True], ids=["utf8", "escaped"])
def test_accepted(overrides: dict[str, Any], expected: dict[str, Any], ascii_only: bool) -> None:
    txn = parse_transaction(message(overrides, ascii_only=ascii_only), NOW_S, SKEW_S)
    assert isinstance(txn, Transaction)
    for name, value in expected.items():
        assert getattr(txn, name) == value, name
    assert type(txn.amount) is float
    assert type(txn.timestamp) is float
    assert type(txn.is_online) is bool
    assert isinstance(txn.merchant_category, str)


def test_surrogate_pair_escapes_count_as_one_character() -> None:
    pair = "\\ud83d\\ude00"  # the JSON escape of one emoji
    raw = message({"user_id": "@@"}).replace(b'"@@"', b'"' + pair.encode() * 128 + b'"')
    assert parse_transaction(raw, NOW_S, SKEW_S).user_id == EMOJI * 128
    raw = message({"user_id": "@@"}).replace(b'"@@"', b'"' + pair.encode() * 129 + b'"')
    with pytest.raises(ValidationError) as info:
        parse_transaction(raw, NOW_S, SKEW_S)
    assert_rejected(info.value, "ValidationError", {"user_id"})


def test_whitespace_around_the_object_is_allowed() -> None:
    assert parse_transaction(b" \r\n\t" + message() + b"\n ", NOW_S, SKEW_S).transaction_id == "tx-1"


# --------------------------------------------------------------------------- rejected

WRONG_TYPES: list[tuple[str, Any]] = [
    ("integer", 1),
    ("float", 1.5),
    ("true", True),
    ("false", False),
    ("array", ["x"]),
    ("object", {"x": 1}),
]

REJECTED: list[tuple[str, dict[str, Any], set[str]]] = []
for _field in ID_FIELDS:
    REJECTED += [
        (f"{_field} missing", {_field: MISSING}, {_field}),
        (f"{_field} null", {_field: None}, {_field}),
        (f"{_field} empty", {_field: ""}, {_field}),
        (f"{_field} 129 ascii", {_field: "x" * 129}, {_field}),
        (f"{_field} 129 emoji", {_field: EMOJI * 129}, {_field}),
        (f"{_field} 129 cjk", {_field: CJK * 129}, {_field}),
        (f"{_field} lone high surrogate", {_field: "ab\ud800cd"}, {_field}),
        (f"{_field} lone low surrogate", {_field: "\udc00"}, {_field}),
        (f"{_field} reversed surrogate pair", {_field: "\ude00\ud83d"}, {_field}),
    ]
    REJECTED += [(f"{_field} {kind}", {_field: value}, {_field}) for kind, value in WRONG_TYPES]

REJECTED += [
    ("amount missing", {"amount": MISSING}, {"amount"}),
    ("amount null", {"amount": None}, {"amount"}),
    ("amount true", {"amount": True}, {"amount"}),
    ("amount false", {"amount": False}, {"amount"}),
    ("amount string", {"amount": "12.5"}, {"amount"}),
    ("amount array", {"amount": [12.5]}, {"amount"}),
    ("amount object", {"amount": {"value": 12.5}}, {"amount"}),
    ("amount negative", {"amount": -0.01}, {"amount"}),
    ("amount negative integer", {"amount": -1}, {"amount"}),
    ("amount 1e12", {"amount": 1e12}, {"amount"}),
    ("amount 1e12 integer", {"amount": 10**12}, {"amount"}),
    ("amount 1e12 literal", {"amount": Raw("1e12")}, {"amount"}),
    ("amount 1e400 (overflows a double)", {"amount": Raw("1e400")}, {"amount"}),
    ("amount -1e400", {"amount": Raw("-1e400")}, {"amount"}),
    ("amount 10**30 (beyond 64 bits)", {"amount": 10**30}, {"amount"}),
    ("amount -10**30", {"amount": -(10**30)}, {"amount"}),
    ("amount 2**64", {"amount": 2**64}, {"amount"}),
    ("amount 10**400 (beyond a double)", {"amount": 10**400}, {"amount"}),
    ("amount 10**5000 (beyond int digit limit)", {"amount": Raw("1" + "0" * 5000)}, {"amount"}),
    ("amount -10**5000", {"amount": Raw("-1" + "0" * 5000)}, {"amount"}),
    ("timestamp missing", {"timestamp": MISSING}, {"timestamp"}),
    ("timestamp null", {"timestamp": None}, {"timestamp"}),
    ("timestamp true", {"timestamp": True}, {"timestamp"}),
    ("timestamp string", {"timestamp": "1700000000"}, {"timestamp"}),
    ("timestamp ISO string", {"timestamp": "2023-11-14T22:13:20Z"}, {"timestamp"}),
    ("timestamp array", {"timestamp": []}, {"timestamp"}),
    ("timestamp zero", {"timestamp": 0}, {"timestamp"}),
    ("timestamp zero float", {"timestamp": 0.0}, {"timestamp"}),
    ("timestamp negative zero", {"timestamp": Raw("-0.0")}, {"timestamp"}),
    ("timestamp negative", {"timestamp": -1.5}, {"timestamp"}),
    ("timestamp beyond MAX_CLOCK_SKEW_S", {"timestamp": NOW_S + SKEW_S + 0.001}, {"timestamp"}),
    ("timestamp in milliseconds", {"timestamp": NOW_S * 1000}, {"timestamp"}),
    ("timestamp 1e400", {"timestamp": Raw("1e400")}, {"timestamp"}),
    ("timestamp 10**30", {"timestamp": 10**30}, {"timestamp"}),
    ("timestamp -10**30", {"timestamp": -(10**30)}, {"timestamp"}),
    ("timestamp 10**400", {"timestamp": 10**400}, {"timestamp"}),
    ("merchant_category 65 ascii", {"merchant_category": "c" * 65}, {"merchant_category"}),
    ("merchant_category 65 emoji", {"merchant_category": EMOJI * 65}, {"merchant_category"}),
    ("merchant_category lone surrogate", {"merchant_category": "\ud800"}, {"merchant_category"}),
    ("is_online string true", {"is_online": "true"}, {"is_online"}),
    ("is_online string false", {"is_online": "false"}, {"is_online"}),
    ("is_online 1", {"is_online": 1}, {"is_online"}),
    ("is_online 0", {"is_online": 0}, {"is_online"}),
    ("is_online 0.0", {"is_online": 0.0}, {"is_online"}),
    ("is_online empty string", {"is_online": ""}, {"is_online"}),
    ("is_online array", {"is_online": []}, {"is_online"}),
    ("is_online object", {"is_online": {}}, {"is_online"}),
    (
        "every field at fault at once",
        {
            "transaction_id": "",
            "user_id": None,
            "amount": -1,
            "merchant_id": MISSING,
            "merchant_category": 7,
            "timestamp": 0,
            "is_online": "yes",
        },
        set(FIELDS),
    ),
    ("two fields at fault", {"amount": True, "is_online": 1}, {"amount", "is_online"}),
]
REJECTED += [
    (f"merchant_category {kind}", {"merchant_category": value}, {"merchant_category"})
    for kind, value in WRONG_TYPES
]


@pytest.mark.parametrize(("overrides", "fields"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected_by_validation(overrides: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(ValidationError) as info:
        parse_transaction(message(overrides, ascii_only=True), NOW_S, SKEW_S)
    assert_rejected(info.value, "ValidationError", fields)


_OBJECT = message().decode()

NOT_DECODABLE: list[tuple[str, bytes | None]] = [
    ("None (tombstone)", None),
    ("empty", b""),
    ("whitespace", b"  \n"),
    ("plain text", b"hello"),
    ("array", b"[]"),
    ("array of the object", f"[{_OBJECT}]".encode()),
    ("string", b'"tx-1"'),
    ("JSON text of the object as a string", json.dumps(_OBJECT).encode()),
    ("number", b"42"),
    ("float", b"4.2"),
    ("null", b"null"),
    ("true", b"true"),
    ("truncated", message()[:-1]),
    ("two objects", message() + message()),
    ("trailing comma", message()[:-1] + b",}"),
    ("single quotes", b"{'transaction_id': 'tx-1'}"),
    ("unquoted key", b"{transaction_id: 1}"),
    ("comment", b"/* c */" + message()),
    ("NaN amount", message({"amount": Raw("NaN")})),
    ("Infinity amount", message({"amount": Raw("Infinity")})),
    ("-Infinity amount", message({"amount": Raw("-Infinity")})),
    ("NaN timestamp", message({"timestamp": Raw("NaN")})),
    ("NaN in an ignored field", message({"extra": Raw("NaN")})),
    ("NaN alongside a beyond-double number", message({"amount": Raw("1e400"), "timestamp": Raw("NaN")})),
    ("leading zero", message({"amount": Raw("012")})),
    ("leading plus", message({"amount": Raw("+1")})),
    ("bare fraction", message({"amount": Raw(".5")})),
    ("hex", message({"amount": Raw("0x10")})),
    ("invalid UTF-8 in a value", message({"user_id": "@@"}).replace(b"@@", b"\xff\xfe")),
    ("invalid UTF-8 in a key", message({"@@": 1}).replace(b"@@", b"\xc3\x28")),
    ("UTF-8-encoded surrogate (CESU)", message({"user_id": "@@"}).replace(b"@@", b"\xed\xa0\x80")),
    ("overlong UTF-8", message({"user_id": "@@"}).replace(b"@@", b"\xc0\xaf")),
    ("Latin-1 bytes", '{"user_id": "caf\u00e9"}'.encode("latin-1")),
    ("UTF-16", _OBJECT.encode("utf-16")),
    ("raw control character in a string", message({"user_id": "@@"}).replace(b"@@", b"a\x01b")),
    ("raw newline in a string", message({"user_id": "@@"}).replace(b"@@", b"a\nb")),
    ("bad escape", message({"user_id": "@@"}).replace(b"@@", b"\\x41")),
]


@pytest.mark.parametrize("raw", [c[1] for c in NOT_DECODABLE], ids=[c[0] for c in NOT_DECODABLE])
def test_rejected_as_not_decodable(raw: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        parse_transaction(raw, NOW_S, SKEW_S)
    assert_rejected(info.value, "DecodeError", set())
    with pytest.raises(DecodeError):
        decode_json_object(raw)


@pytest.mark.parametrize(
    ("now_s", "skew_s", "timestamp", "accepted"),
    [
        (NOW_S, 0.0, NOW_S, True),
        (NOW_S, 0.0, NOW_S + 0.5, False),
        (NOW_S, 60.0, NOW_S + 60, True),
        (NOW_S, 60.0, NOW_S + 61, False),
        (NOW_S, 3600.0, NOW_S + 3000, True),
        (NOW_S + 1000, SKEW_S, NOW_S + 1200, True),
        (NOW_S - 1000, SKEW_S, NOW_S, False),
    ],
)
def test_clock_skew_is_measured_from_the_given_now(
    now_s: float, skew_s: float, timestamp: float, accepted: bool
) -> None:
    raw = message({"timestamp": timestamp})
    if accepted:
        assert parse_transaction(raw, now_s, skew_s).timestamp == timestamp
    else:
        with pytest.raises(ValidationError) as info:
            parse_transaction(raw, now_s, skew_s)
        assert_rejected(info.value, "ValidationError", {"timestamp"})
        assert "MAX_CLOCK_SKEW_S" in info.value.message


@pytest.mark.parametrize("field", ["amount", "timestamp"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_validate_rejects_non_finite_numbers_from_any_decoder(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        validate_transaction({**VALID, field: value}, NOW_S, SKEW_S)
    assert_rejected(info.value, "ValidationError", {field})


def test_decode_json_object_reads_integers_beyond_64_bits() -> None:
    assert decode_json_object(b'{"n": 123456789012345678901234567890}')["n"] == pytest.approx(1.2345678901e29)
    assert decode_json_object(b'{"n": 1' + b"0" * 400 + b"}")["n"] == 10**400


def test_exception_types() -> None:
    assert issubclass(DecodeError, RejectedMessage)
    assert issubclass(ValidationError, RejectedMessage)
    assert not issubclass(DecodeError, ValidationError)
    assert DecodeError("value: x").error_type == "DecodeError"
    assert ValidationError("amount: x").error_type == "ValidationError"
    assert RejectedMessage("boom").error_type == "ProcessingError"
    assert ValidationError("amount: x").message == "amount: x"


# --------------------------------------------------------------------------- dead letters

DEAD_LETTER_FIELDS = {
    "original_topic",
    "original_partition",
    "original_offset",
    "original_key",
    "error_type",
    "error_message",
    "failed_at",
    "raw_value",
    # ours, beyond SPEC 6: the original size, and whether raw_value was cut
    "raw_value_bytes",
    "raw_value_truncated",
}


def _dead_letter(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "topic": "transactions",
        "partition": 3,
        "offset": 1234567890123,
        "key": b"user-1",
        "error_type": "ValidationError",
        "error_message": "amount: must be >= 0 and < 1e12, got -1",
        "failed_at": "2024-05-01T12:00:00.123456+00:00",
        "raw_value": b'{"amount": -1}',
    }
    kwargs.update(overrides)
    value = DeadLetter.for_message(**kwargs).encode()
    assert isinstance(value, bytes)
    letter = orjson.loads(value)  # strict JSON
    assert isinstance(letter, dict)
    return letter


def test_dead_letter_has_every_spec_6_field() -> None:
    letter = _dead_letter()
    assert set(letter) == DEAD_LETTER_FIELDS
    assert letter == {
        "original_topic": "transactions",
        "original_partition": 3,
        "original_offset": 1234567890123,
        "original_key": "user-1",
        "error_type": "ValidationError",
        "error_message": "amount: must be >= 0 and < 1e12, got -1",
        "failed_at": "2024-05-01T12:00:00.123456+00:00",
        "raw_value": '{"amount": -1}',
        "raw_value_bytes": 14,
        "raw_value_truncated": False,
    }
    failed_at = datetime.fromisoformat(letter["failed_at"])
    offset = failed_at.utcoffset()
    assert offset is not None and offset.total_seconds() == 0


def test_dead_letter_key_none_is_null() -> None:
    letter = _dead_letter(key=None)
    assert set(letter) == DEAD_LETTER_FIELDS
    assert letter["original_key"] is None


def test_dead_letter_decodes_bytes_with_replacement() -> None:
    letter = _dead_letter(key=b"u\xff1", raw_value=b'{"user_id": "\xc3\x28"}\xff')
    assert letter["original_key"] == "u\ufffd1"
    assert letter["raw_value"] == '{"user_id": "\ufffd("}\ufffd'


def test_dead_letter_keeps_valid_utf8_and_empty_values() -> None:
    letter = _dead_letter(key=EMOJI.encode(), raw_value=f'{{"user_id": "{EMOJI}"}}'.encode())
    assert letter["original_key"] == EMOJI
    assert letter["raw_value"] == f'{{"user_id": "{EMOJI}"}}'
    assert _dead_letter(raw_value=b"")["raw_value"] == ""
    assert _dead_letter(raw_value=None)["raw_value"] == ""  # a tombstone has no bytes


_SOME_UNDECODABLE = [c for c in NOT_DECODABLE if c[1] is not None][:12]


@pytest.mark.parametrize("raw", [c[1] for c in _SOME_UNDECODABLE], ids=[c[0] for c in _SOME_UNDECODABLE])
def test_dead_letter_of_a_real_rejection(raw: bytes) -> None:
    with pytest.raises(RejectedMessage) as info:
        parse_transaction(raw, NOW_S, SKEW_S)
    letter = _dead_letter(error_type=info.value.error_type, error_message=info.value.message, raw_value=raw)
    assert letter["error_type"] == "DecodeError"
    assert letter["raw_value"] == raw.decode("utf-8", "replace")


# --------------------------------------------------------------------------- properties

# Characters including lone surrogates and 4-byte emoji, which are the edge cases.
_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from([EMOJI, CJK, "x"]))
_text = st.text(_chars, max_size=140)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -1, 10**12, 10**12 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400]),
    st.floats(),
    _text,
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_ids = st.text(_chars, min_size=1, max_size=128)
_valid_values: dict[str, st.SearchStrategy[Any]] = {
    "transaction_id": _ids,
    "user_id": _ids,
    "merchant_id": _ids,
    "merchant_category": st.none() | st.text(_chars, max_size=64),
    "amount": st.floats(min_value=0.0, max_value=999999999999.99) | st.integers(0, 10**12 - 1),
    "timestamp": st.floats(min_value=1e-9, max_value=NOW_S + SKEW_S) | st.integers(1, 2),
    "is_online": st.none() | st.booleans(),
}
_near_bounds: dict[str, st.SearchStrategy[Any]] = {
    **{name: st.text(_chars, min_size=126, max_size=130) for name in ID_FIELDS},
    "merchant_category": st.text(_chars, min_size=62, max_size=66),
    "amount": st.sampled_from([-0.0, -1e-300, 1e12, 999999999999.9999, 10**12, 2**64, -1]),
    "timestamp": st.sampled_from([0, -0.0, 5e-324, NOW_S + SKEW_S, NOW_S + SKEW_S + 1e-6, 10**30]),
    "is_online": st.sampled_from([0, 1, "true", "", []]),
}
# Mostly valid objects with a few fields replaced, dropped or pushed to a bound,
# so that the property reaches both the accepting and the rejecting branches.
_mostly_valid = st.builds(
    lambda valid, changes, extra: {
        **{k: v for k, v in {**valid, **changes}.items() if v is not MISSING},
        **extra,
    },
    st.fixed_dictionaries(_valid_values),
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(FIELDS), _json_values | st.just(MISSING)),
            *(st.tuples(st.just(name), values) for name, values in _near_bounds.items()),
        ),
        max_size=2,
    ).map(dict),
    st.dictionaries(_text, _json_values, max_size=2),
)
# Anything at all under the field names.
_arbitrary = st.fixed_dictionaries(
    {}, optional={**{name: _json_values for name in FIELDS}, "extra": _json_values}
)
_objects = st.one_of(_mostly_valid, _arbitrary)


def _encode(obj: dict[str, Any], ascii_only: bool) -> bytes:
    # allow_nan: NaN/Infinity become the literals a producer might send.
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)
    # Lone surrogates, written raw, make invalid UTF-8: also a real input.
    return text.encode("utf-8", "surrogatepass")


def _oracle(raw: bytes, now_s: float, skew_s: float) -> tuple[str, set[str], dict[str, Any]]:
    """A brute-force reading of SPEC 3: ("ok", {}, fields) or (error_type, fields at fault, {})."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "DecodeError", set(), {}
    try:
        # The stdlib is the reference reader (it also pairs surrogate escapes).
        obj = json.loads(text, parse_constant=_raise)
    except _Constant:  # a NaN/Infinity literal: not strict JSON
        return "DecodeError", set(), {}
    bad: set[str] = set()

    def ok_string(value: Any, lo: int, hi: int) -> bool:
        if not isinstance(value, str) or not lo <= len(value) <= hi:
            return False
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)

    def is_number(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))

    for field in ID_FIELDS:
        if not ok_string(obj.get(field), 1, 128):
            bad.add(field)
    amount = obj.get("amount")
    if not (is_number(amount) and 0 <= amount < 10**12):
        bad.add("amount")
    timestamp = obj.get("timestamp")
    if not (is_number(timestamp) and 0 < timestamp <= now_s + skew_s):
        bad.add("timestamp")
    category = obj.get("merchant_category")
    if category is not None and not ok_string(category, 0, 64):
        bad.add("merchant_category")
    is_online = obj.get("is_online")
    if not (is_online is None or isinstance(is_online, bool)):
        bad.add("is_online")
    if bad:
        return "ValidationError", bad, {}
    return (
        "ok",
        set(),
        {
            "transaction_id": obj["transaction_id"],
            "user_id": obj["user_id"],
            "merchant_id": obj["merchant_id"],
            "amount": float(amount),
            "timestamp": float(timestamp),
            "merchant_category": "unknown" if category is None else category,
            "is_online": bool(obj.get("is_online")),
        },
    )


class _Constant(Exception):
    pass


def _raise(name: str) -> Any:
    raise _Constant(name)


_PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(raw=st.binary(max_size=300), now_s=st.floats(0, 4e9), skew_s=st.floats(0, 1e6))
def test_arbitrary_bytes_only_ever_raise_rejected_message(raw: bytes, now_s: float, skew_s: float) -> None:
    try:
        txn = parse_transaction(raw, now_s, skew_s)
    except RejectedMessage as exc:
        assert exc.error_type in ("DecodeError", "ValidationError")
    else:
        assert isinstance(txn, Transaction)


@_PROPERTY
@given(
    raw=st.one_of(
        st.binary(max_size=200).map(lambda b: message()[:-1] + b),
        st.binary(max_size=50).map(lambda b: b"{" + b + message()[1:]),
    )
)
def test_mangled_messages_only_ever_raise_rejected_message(raw: bytes) -> None:
    try:
        parse_transaction(raw, NOW_S, SKEW_S)
    except RejectedMessage:
        pass


@_PROPERTY
@given(
    obj=_objects,
    ascii_only=st.booleans(),
    now_s=st.sampled_from([NOW_S, 1.0]),
    skew_s=st.sampled_from([0.0, SKEW_S]),
)
def test_arbitrary_objects_match_the_spec_oracle(
    obj: dict[str, Any], ascii_only: bool, now_s: float, skew_s: float
) -> None:
    raw = _encode(obj, ascii_only)
    expected_type, expected_fields, expected_values = _oracle(raw, now_s, skew_s)
    event(expected_type)
    try:
        txn = parse_transaction(raw, now_s, skew_s)
    except RejectedMessage as exc:
        assert exc.error_type == expected_type, (exc.message, expected_fields)
        assert_rejected(exc, expected_type, expected_fields)
    else:
        assert expected_type == "ok", expected_fields
        assert {name: getattr(txn, name) for name in FIELDS} == expected_values


_ascii = st.characters(max_codepoint=127)
# Objects the plain path can take: ASCII strings, with fields pushed to or past a bound.
_plain_candidates = st.builds(
    lambda valid, changes: {**valid, **changes},
    st.fixed_dictionaries(
        {
            **_valid_values,
            **{name: st.text(_ascii, min_size=1, max_size=128) for name in ID_FIELDS},
            "merchant_category": st.none() | st.text(_ascii, max_size=64),
        }
    ),
    st.lists(
        st.one_of(
            *(st.tuples(st.just(name), values) for name, values in _near_bounds.items()),
            *(st.tuples(st.just(name), st.text(_ascii, max_size=130)) for name in ID_FIELDS),
            st.tuples(
                st.sampled_from(["amount", "timestamp"]), st.sampled_from([math.nan, math.inf, -math.inf])
            ),
        ),
        max_size=2,
    ).map(dict),
)


@_PROPERTY
@given(
    obj=st.one_of(_objects, _plain_candidates),
    now_s=st.sampled_from([NOW_S, 1.0]),
    skew_s=st.sampled_from([0.0, SKEW_S]),
)
def test_the_plain_path_accepts_only_what_the_field_by_field_rules_accept(
    obj: dict[str, Any], now_s: float, skew_s: float
) -> None:
    """validate_transaction's one-expression check: the same transaction, or no answer (never a wrong one)."""
    plain = _plainly_valid(obj, now_s + skew_s)
    event("plain" if plain is not None else "the long way")
    try:
        expected = _validate_field_by_field(obj, now_s, skew_s)
    except ValidationError:
        assert plain is None
    else:
        assert plain is None or plain == expected


_AT_BOUNDS: dict[str, tuple[Any, ...]] = {
    "amount": (-0.0, -1e-300, 0, 1e12, 999999999999.9999, 10**12, 10**12 - 1, 2**64, -1, math.nan, math.inf),
    "timestamp": (0, -0.0, 5e-324, NOW_S + SKEW_S, NOW_S + SKEW_S + 1e-6, 10**30, math.nan, -math.inf),
    **dict.fromkeys(ID_FIELDS, ("", "x" * 128, "x" * 129, None, 7, True)),
    "merchant_category": ("", "x" * 64, "x" * 65, None, 3, False),
    "is_online": (None, 0, 1, "true", []),
}
_BOUNDS = [(field, value) for field, values in _AT_BOUNDS.items() for value in values]


@pytest.mark.parametrize(("field", "value"), _BOUNDS)
def test_the_plain_path_agrees_at_every_bound(field: str, value: Any) -> None:
    obj = {**VALID, field: value}
    plain = _plainly_valid(obj, NOW_S + SKEW_S)
    try:
        expected = _validate_field_by_field(obj, NOW_S, SKEW_S)
    except ValidationError:
        assert plain is None
    else:
        assert plain == expected


def test_the_plain_path_takes_the_usual_message() -> None:
    assert _plainly_valid(VALID, NOW_S + SKEW_S) == _validate_field_by_field(VALID, NOW_S, SKEW_S)
    assert _plainly_valid({**VALID, "user_id": "user-" + CJK}, NOW_S + SKEW_S) is None  # the long way
