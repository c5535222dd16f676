"""records/label.py: label records (SPEC 10), the carried label, the prediction log entry, the joined label.

Every rejection is checked for its type and for a message naming exactly the
fields at fault (``"<field>: ..."`` joined by ``"; "``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from records.errors import DecodeError, RejectedMessage, ValidationError
from records.label import (
    LABEL_KEY,
    PREDICTION_PREFIX,
    Label,
    LoggedPrediction,
    carried_label,
    is_prediction_key,
    joined_label,
    logged_event_time,
    open_carried_label,
    parse_label,
    prediction_key,
)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)
LABEL_FIELDS = ("transaction_id", "label", "labeled_at")
VALID: dict[str, Any] = {"transaction_id": "tx-1", "label": 1, "labeled_at": 1_700_000_000.25}


class Raw(str):
    """A JSON literal written verbatim (json.dumps cannot write 1e400 or NaN)."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def message(**overrides: Any) -> bytes:
    """VALID with ``overrides`` (``MISSING`` deletes a field, ``Raw`` is written verbatim), as JSON bytes."""
    obj = dict(VALID)
    raws: dict[str, str] = {}
    for name, value in overrides.items():
        if value is MISSING:
            obj.pop(name, None)
        elif isinstance(value, Raw):
            placeholder = f"@@raw{len(raws)}@@"
            raws[json.dumps(placeholder)] = str(value)
            obj[name] = placeholder
        else:
            obj[name] = value
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)  # \u escapes: lone surrogates survive
    for placeholder, literal in raws.items():
        text = text.replace(placeholder, literal)
    return text.encode("utf-8")


def fields_named(exc: RejectedMessage) -> set[str]:
    return {part.split(":", 1)[0] for part in exc.message.split("; ")}


# --------------------------------------------------------------------------- parse_label: valid


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ({}, Label("tx-1", 1, 1_700_000_000.25)),
        ({"label": 0}, Label("tx-1", 0, 1_700_000_000.25)),
        ({"labeled_at": 1_700_000_000}, Label("tx-1", 1, 1_700_000_000.0)),
        ({"labeled_at": 0}, Label("tx-1", 1, 0.0)),
        ({"labeled_at": -5.5}, Label("tx-1", 1, -5.5)),
        ({"labeled_at": Raw("1e300")}, Label("tx-1", 1, 1e300)),
        ({"transaction_id": "x"}, Label("x", 1, 1_700_000_000.25)),
        ({"transaction_id": "t" * 128}, Label("t" * 128, 1, 1_700_000_000.25)),
        ({"transaction_id": "\U0001f600" * 128}, Label("\U0001f600" * 128, 1, 1_700_000_000.25)),
        ({"transaction_id": " spaces inside "}, Label(" spaces inside ", 1, 1_700_000_000.25)),
        ({"user_id": "u-1", "note": [1, {"x": None}]}, Label("tx-1", 1, 1_700_000_000.25)),
    ],
)
def test_valid_labels(overrides: dict[str, Any], want: Label) -> None:
    got = parse_label(message(**overrides))
    assert got == want
    assert type(got.label) is int and type(got.labeled_at) is float


def test_a_label_in_raw_utf8_and_with_whitespace() -> None:
    raw = ' \n{ "labeled_at" : 12 , "label" : 0 , "transaction_id" : "caf\u00e9" }\t'.encode()
    assert parse_label(raw) == Label("caf\u00e9", 0, 12.0)


text_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=128)
finite = st.floats(allow_nan=False, allow_infinity=False)


@PROPERTY_SETTINGS
@given(text_ids, st.sampled_from([0, 1]), st.one_of(finite, st.integers(-(2**53), 2**53)))
def test_every_valid_label_parses_to_itself(transaction_id: str, label: int, labeled_at: float) -> None:
    raw = orjson.dumps({"labeled_at": labeled_at, "transaction_id": transaction_id, "label": label})
    assert parse_label(raw) == Label(transaction_id, label, float(labeled_at))


# --------------------------------------------------------------------------- parse_label: invalid

INVALID: list[tuple[str, dict[str, Any], set[str]]] = [
    ("transaction_id missing", {"transaction_id": MISSING}, {"transaction_id"}),
    ("transaction_id null", {"transaction_id": None}, {"transaction_id"}),
    ("transaction_id empty", {"transaction_id": ""}, {"transaction_id"}),
    ("transaction_id 129 characters", {"transaction_id": "t" * 129}, {"transaction_id"}),
    ("transaction_id a million characters", {"transaction_id": "t" * 1_000_000}, {"transaction_id"}),
    ("transaction_id a number", {"transaction_id": 17}, {"transaction_id"}),
    ("transaction_id true", {"transaction_id": True}, {"transaction_id"}),
    ("transaction_id a list", {"transaction_id": ["tx-1"]}, {"transaction_id"}),
    ("transaction_id an object", {"transaction_id": {"id": "tx-1"}}, {"transaction_id"}),
    ("transaction_id a lone surrogate", {"transaction_id": "a\ud800b"}, {"transaction_id"}),
    ("label missing", {"label": MISSING}, {"label"}),
    ("label null", {"label": None}, {"label"}),
    ("label true", {"label": True}, {"label"}),
    ("label false", {"label": False}, {"label"}),
    ("label 2", {"label": 2}, {"label"}),
    ("label -1", {"label": -1}, {"label"}),
    ("label 0.5", {"label": 0.5}, {"label"}),
    ("label 1.5", {"label": 1.5}, {"label"}),
    ("label the string 1", {"label": "1"}, {"label"}),
    ("label the string 0", {"label": "0"}, {"label"}),
    ("label [1]", {"label": [1]}, {"label"}),
    ("label {}", {"label": {}}, {"label"}),
    ("label 1e400", {"label": Raw("1e400")}, {"label"}),
    ("label a 400-digit integer", {"label": Raw("1" + "0" * 400)}, {"label"}),
    ("label a 5000-digit integer", {"label": Raw("1" * 5000)}, {"label"}),
    ("labeled_at missing", {"labeled_at": MISSING}, {"labeled_at"}),
    ("labeled_at null", {"labeled_at": None}, {"labeled_at"}),
    ("labeled_at a string", {"labeled_at": "1700000000"}, {"labeled_at"}),
    ("labeled_at true", {"labeled_at": True}, {"labeled_at"}),
    ("labeled_at a list", {"labeled_at": [1]}, {"labeled_at"}),
    ("labeled_at 1e400", {"labeled_at": Raw("1e400")}, {"labeled_at"}),
    ("labeled_at -1e400", {"labeled_at": Raw("-1e400")}, {"labeled_at"}),
    ("labeled_at a 5000-digit integer", {"labeled_at": Raw("9" * 5000)}, {"labeled_at"}),
    ("all three missing", {f: MISSING for f in LABEL_FIELDS}, set(LABEL_FIELDS)),
    ("all three wrong", {"transaction_id": 1, "label": "yes", "labeled_at": "now"}, set(LABEL_FIELDS)),
    ("id and time wrong", {"transaction_id": "", "labeled_at": False}, {"transaction_id", "labeled_at"}),
]


@pytest.mark.parametrize(
    ("overrides", "fields"), [(o, f) for _, o, f in INVALID], ids=[name for name, _, _ in INVALID]
)
def test_invalid_labels_name_the_fields_at_fault(overrides: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(ValidationError) as info:
        parse_label(message(**overrides))
    assert info.value.error_type == "ValidationError"
    assert fields_named(info.value) == fields
    assert len(info.value.message) < 1000  # a huge value is not echoed back whole


def test_a_huge_label_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(ValidationError) as info:
        parse_label(message(label="x" * 100_000))
    assert info.value.message.startswith("label: must be 0 or 1")
    assert len(info.value.message) <= 200


NOT_A_JSON_OBJECT: list[tuple[str, bytes | None]] = [
    ("no value (tombstone)", None),
    ("empty", b""),
    ("whitespace", b" \n\t"),
    ("array", b'[{"transaction_id": "tx-1", "label": 1, "labeled_at": 1}]'),
    ("number", b"1"),
    ("string", b'"tx-1"'),
    ("null", b"null"),
    ("true", b"true"),
    ("truncated", message()[:-1]),
    ("trailing garbage", message() + b"x"),
    ("two objects", message() + message()),
    ("single quotes", b"{'transaction_id': 'tx-1', 'label': 1, 'labeled_at': 1}"),
    ("NaN", message(labeled_at=Raw("NaN"))),
    ("Infinity", message(labeled_at=Raw("Infinity"))),
    ("invalid UTF-8", b'{"transaction_id": "\xff\xfe", "label": 1, "labeled_at": 1}'),
    ("invalid UTF-8 alone", b"\xff\xfe\xfd"),
    ("a UTF-16 BOM", "\ufeff".encode("utf-16") + b"{}"),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
    ("deeply nested in an object", b'{"label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
]


@pytest.mark.parametrize(
    "raw", [r for _, r in NOT_A_JSON_OBJECT], ids=[name for name, _ in NOT_A_JSON_OBJECT]
)
def test_what_is_not_a_json_object_is_a_decode_error(raw: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        parse_label(raw)
    assert info.value.error_type == "DecodeError"
    assert info.value.message.startswith("value:")


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_give_a_label_or_a_rejection(raw: bytes) -> None:
    try:
        label = parse_label(raw)
    except (DecodeError, ValidationError):
        return
    assert isinstance(label, Label) and label.label in (0, 1) and math.isfinite(label.labeled_at)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=140),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@PROPERTY_SETTINGS
@given(st.dictionaries(st.sampled_from([*LABEL_FIELDS, "other"]), json_values))
def test_any_object_gives_a_valid_label_or_names_its_faults(obj: dict[str, Any]) -> None:
    value = obj.get("label")
    # JSON 0.0 and 1.0 are the numbers 0 and 1; whether they are labels is left open here.
    assume(not (isinstance(value, float) and value in (0, 1)))
    raw = orjson.dumps(obj)
    try:
        label = parse_label(raw)
    except ValidationError as exc:
        # Exactly the fields that break a rule are named.
        faults = set()
        tid = obj.get("transaction_id")
        if not (isinstance(tid, str) and 1 <= len(tid) <= 128):
            faults.add("transaction_id")
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
            faults.add("label")
        at = obj.get("labeled_at")
        if isinstance(at, bool) or not isinstance(at, int | float):
            faults.add("labeled_at")
        assert fields_named(exc) == faults
        return
    assert label == Label(obj["transaction_id"], int(obj["label"]), float(obj["labeled_at"]))


# --------------------------------------------------------------------------- the carried label


@PROPERTY_SETTINGS
@given(text_ids, st.sampled_from([0, 1]), finite, st.booleans())
def test_a_carried_label_opens_to_itself(
    transaction_id: str, label: int, labeled_at: float, probe: bool
) -> None:
    original = Label(transaction_id, label, labeled_at)
    value = carried_label(original, probe)
    assert isinstance(value, bytes)
    assert open_carried_label(value) == (original, probe)


def test_a_parsed_label_survives_the_trip() -> None:
    label = parse_label(message(transaction_id="\U0001f600 x", label=0, labeled_at=17))
    assert open_carried_label(carried_label(label, probe=False)) == (Label("\U0001f600 x", 0, 17.0), False)


CARRIED = orjson.loads(carried_label(Label("tx-1", 1, 5.0), probe=True))
UNREADABLE_CARRIED: list[tuple[str, bytes | None]] = [
    ("none", None),
    ("empty", b""),
    ("junk", b"junk"),
    ("invalid UTF-8", b"\xff\xfe\xfd"),
    ("an array", b"[]"),
    ("a string", b'"tx-1"'),
    ("a number", b"5"),
    ("null", b"null"),
    ("an empty object", b"{}"),
    *[(f"no {f}", orjson.dumps({k: v for k, v in CARRIED.items() if k != f})) for f in CARRIED],
    ("label not a number", orjson.dumps({**CARRIED, "label": "yes"})),
    ("label a list", orjson.dumps({**CARRIED, "label": [1]})),
    ("labeled_at not a number", orjson.dumps({**CARRIED, "labeled_at": "soon"})),
    ("labeled_at an object", orjson.dumps({**CARRIED, "labeled_at": {}})),
    ("labeled_at 1e400", orjson.dumps(CARRIED).replace(b"5.0", b"1e400")),
    ("truncated", carried_label(Label("tx-1", 1, 5.0), probe=True)[:-2]),
]


@pytest.mark.parametrize("value", [v for _, v in UNREADABLE_CARRIED], ids=[n for n, _ in UNREADABLE_CARRIED])
def test_an_unreadable_carried_label_is_a_decode_error(value: bytes | None) -> None:
    with pytest.raises(DecodeError, match="carried label is unreadable"):
        open_carried_label(value)


# --------------------------------------------------------------------------- prediction keys


@PROPERTY_SETTINGS
@given(text_ids, text_ids)
def test_prediction_keys_are_distinct_and_never_a_user_id(transaction_id: str, user_id: str) -> None:
    key = prediction_key(transaction_id)
    assert is_prediction_key(key)
    assert key[len(PREDICTION_PREFIX) :].decode("utf-8") == transaction_id
    assert (prediction_key(user_id) == key) == (user_id == transaction_id)
    # A user id is UTF-8, in which 0xFF never occurs: no user's key is a prediction key.
    assert not is_prediction_key(user_id.encode("utf-8"))


def test_what_is_not_a_prediction_key() -> None:
    for key in (None, b"", b"\xff", b"\xffpred", b"pred:tx-1", LABEL_KEY, b"user-1"):
        assert not is_prediction_key(key), key
    assert is_prediction_key(b"\xffpred:")
    assert PREDICTION_PREFIX[0] == 0xFF and LABEL_KEY[0] == 0xFF
    assert prediction_key("tx-1") == b"\xffpred:tx-1"


# --------------------------------------------------------------------------- the prediction log entry

versions = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(["", " ", "  two  spaces  ", "logreg 2024 01 01", "v1 ", " v1", "a b c d e f", "v\n1"]),
)


@PROPERTY_SETTINGS
@given(st.floats(min_value=0.0, max_value=1.0), versions, finite, finite)
def test_a_logged_prediction_decodes_to_itself(
    score: float, version: str, event_time: float, scored_at: float
) -> None:
    prediction = LoggedPrediction(
        score=score, model_version=version, event_time=event_time, scored_at=scored_at
    )
    raw = prediction.encode()
    assert LoggedPrediction.decode(raw) == prediction
    assert logged_event_time(raw) == event_time


def test_a_model_version_with_spaces_survives() -> None:
    prediction = LoggedPrediction(0.75, "logreg 2024-01-01  (retrained) ", 1_700_000_000.5, 1_700_000_001.0)
    back = LoggedPrediction.decode(prediction.encode())
    assert back.model_version == "logreg 2024-01-01  (retrained) "
    assert (back.score, back.event_time, back.scored_at) == (0.75, 1_700_000_000.5, 1_700_000_001.0)


@pytest.mark.parametrize(
    "raw",
    [
        *(b"", b"0.5", b"0.5 12.0", b"0.5  13.0 v", b"0.5 x 13.0 v", b"0.5 \xff\xfe 13.0 v"),
        *(b"0.5 nan 13.0 v", b"0.5 inf 13.0 v", b"0.5 -inf 13.0 v", b"0.5 1e400 13.0 v"),
        b"\xff \xff \xff \xff",
    ],
)
def test_the_event_time_of_junk_is_none(raw: bytes) -> None:
    assert logged_event_time(raw) is None


@PROPERTY_SETTINGS
@given(st.binary(max_size=60))
def test_the_event_time_of_any_bytes_is_none_or_finite(raw: bytes) -> None:
    value = logged_event_time(raw)
    assert value is None or math.isfinite(value)


# --------------------------------------------------------------------------- the joined label


def test_a_joined_label_carries_the_label_and_its_prediction() -> None:
    label = Label("tx-9", 1, 1_700_000_600.0)
    prediction = LoggedPrediction(0.875, "model 7", 1_700_000_000.0, 1_700_000_002.5)
    joined = joined_label(label, prediction, "tx-9")
    assert joined == {
        "kind": "label",
        "transaction_id": "tx-9",
        "label": 1,
        "labeled_at": 1_700_000_600.0,
        "score": 0.875,
        "model_version": "model 7",
        "scored_at": 1_700_000_002.5,
    }
    assert orjson.loads(orjson.dumps(joined)) == joined


def test_a_huge_integer_labeled_at_is_a_validation_error() -> None:
    raw = b'{"transaction_id": "tx-1", "label": 1, "labeled_at": 1' + b"0" * 400 + b"}"
    with pytest.raises(ValidationError, match="labeled_at"):
        parse_label(raw)
