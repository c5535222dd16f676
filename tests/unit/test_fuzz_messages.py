"""Fuzzing the one door of the input: ``parse_transaction`` over hostile bytes (SPEC 3, SPEC 6).

Whatever the bytes, ``parse_transaction`` either returns a :class:`Transaction`
that keeps every SPEC 3 rule, or raises a :class:`RejectedMessage` whose
``error_type`` is a SPEC 6 type and whose message is one bounded line (it goes
to the dead-letter topic and to the log) -- never another exception
(RecursionError, OverflowError, UnicodeError, MemoryError, ValueError...).

The rules are checked here on their own terms, against the standard library's
reading of the same bytes (with exact decimals, so no number is lost), not
against the code under test. Values are built as JSON text token by token, so
the generators reach what ``json.dumps`` never writes: NaN/Infinity literals,
integers of thousands of digits, lone surrogates (escaped, or raw as invalid
UTF-8), duplicate keys, a byte order mark, trailing garbage, nesting 10,000
deep (built iteratively), megabyte strings and 10,000 extra fields.
"""

from __future__ import annotations

import json
import math
import time
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from app.settings import load_settings
from records.errors import DecodeError, RejectedMessage, ValidationError
from records.transaction import DEFAULT_MAX_MESSAGE_BYTES, Transaction, parse_transaction

NOW_S = 1_700_000_000.0
SKEW_S = 300.0
#: SPEC 6 error types a message can get from parsing (LateEvent and ProcessingError come later).
PARSE_ERROR_TYPES = {"DecodeError", "ValidationError"}
#: An error message longer than this is a log line or a dead letter carrying input it should not.
MAX_ERROR_CHARS = 2_000
ID_FIELDS = ("transaction_id", "user_id", "merchant_id")
FIELDS = (*ID_FIELDS, "amount", "merchant_category", "timestamp", "is_online")
MB = 1_000_000

# --------------------------------------------------------------------------- the invariant


def event(name: str) -> None:
    """Hypothesis' statistics event, also outside a property (the regression examples)."""
    if currently_in_test_context():
        _event(name)


class _Constant(Exception):
    pass


def _no_constants(name: str) -> Any:
    raise _Constant(name)


#: The reference could not tell (the standard library's recursion limit is not orjson's depth limit).
UNKNOWN: Any = object()


def _exact(token: str) -> Decimal | float:
    try:
        return Decimal(token)
    except InvalidOperation:  # an exponent beyond even Decimal's: the double it denotes (inf or 0.0)
        return float(token)


def reference_object(raw: bytes | None) -> Any:
    """The standard library's strict reading of ``raw``: a dict, None (not a JSON object), or UNKNOWN.

    Numbers are read as exact decimals: nothing is rounded or refused for its size here.
    """
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        obj = json.loads(text, parse_constant=_no_constants, parse_int=_exact, parse_float=_exact)
    except RecursionError:
        return UNKNOWN
    except (ValueError, _Constant):
        return None
    return obj if isinstance(obj, dict) else None


def nesting_depth(obj: Any) -> int:
    """How deep arrays and objects nest in a decoded value (iteratively: it may be deep)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def _valid_string(value: Any, min_chars: int, max_chars: int) -> bool:
    return (
        isinstance(value, str)
        and min_chars <= len(value) <= max_chars
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


def _as_double(value: Any) -> float | None:
    """A JSON number as the double it denotes (inf beyond the range), or None if not a number."""
    if isinstance(value, float):
        return value
    if not isinstance(value, Decimal):
        return None  # strings, booleans, null, arrays, objects
    return float(value)


def spec3_fields(obj: dict[str, Any], now_s: float, skew_s: float) -> dict[str, Any] | None:
    """SPEC 3 applied to a decoded object: the transaction's fields, or None if a rule is broken."""
    for name in ID_FIELDS:
        if not _valid_string(obj.get(name), 1, 128):
            return None
    amount = _as_double(obj.get("amount"))
    if amount is None or not math.isfinite(amount) or not 0 <= amount < 1e12:
        return None
    timestamp = _as_double(obj.get("timestamp"))
    if timestamp is None or not math.isfinite(timestamp) or not 0 < timestamp <= now_s + skew_s:
        return None
    category = obj.get("merchant_category")
    if category is not None and not _valid_string(category, 0, 64):
        return None
    is_online = obj.get("is_online")
    if is_online is not None and not isinstance(is_online, bool):
        return None
    return {
        **{name: obj[name] for name in ID_FIELDS},
        "amount": amount,
        "timestamp": timestamp,
        "merchant_category": "unknown" if category is None else category,
        "is_online": bool(is_online),
    }


def assert_keeps_spec3(txn: Transaction, now_s: float, skew_s: float) -> None:
    """Every SPEC 3 rule, on the returned transaction itself."""
    assert type(txn) is Transaction
    for name in ID_FIELDS:
        value = getattr(txn, name)
        assert type(value) is str and 1 <= len(value) <= 128, name
        value.encode("utf-8")  # valid Unicode: no lone surrogate
    assert type(txn.merchant_category) is str and len(txn.merchant_category) <= 64
    txn.merchant_category.encode("utf-8")
    assert type(txn.amount) is float and math.isfinite(txn.amount) and 0 <= txn.amount < 1e12
    assert type(txn.timestamp) is float and math.isfinite(txn.timestamp)
    assert 0 < txn.timestamp <= now_s + skew_s
    assert type(txn.is_online) is bool


def assert_bounded_rejection(exc: RejectedMessage) -> None:
    assert type(exc) in (DecodeError, ValidationError), type(exc)
    assert exc.error_type in PARSE_ERROR_TYPES
    assert isinstance(exc.message, str) and exc.message == str(exc)
    assert 0 < len(exc.message) <= MAX_ERROR_CHARS, len(exc.message)
    assert "\n" not in exc.message and "\r" not in exc.message, "SPEC 6: one line"
    exc.message.encode("utf-8")  # the dead letter's JSON encoder refuses lone surrogates


def check(
    raw: bytes | None,
    now_s: float = NOW_S,
    skew_s: float = SKEW_S,
    max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
) -> Transaction | RejectedMessage:
    """The whole property for one value; anything but a RejectedMessage propagates (and fails)."""
    try:
        txn = parse_transaction(raw, now_s, skew_s, max_bytes)
    except RejectedMessage as exc:
        assert_bounded_rejection(exc)
        outcome: Transaction | RejectedMessage = exc
    else:
        assert_keeps_spec3(txn, now_s, skew_s)
        outcome = txn
    if raw is not None and max_bytes is not None and len(raw) > max_bytes:
        assert isinstance(outcome, DecodeError), "over MAX_MESSAGE_BYTES: rejected, not decoded"
        assert str(len(raw)) in outcome.message and str(max_bytes) in outcome.message
        return outcome
    reference = reference_object(raw)
    if reference is UNKNOWN:
        event("reference: too deep for the standard library")
        return outcome
    if reference is None:
        assert isinstance(outcome, DecodeError), f"not a strict JSON object, yet {outcome!r}"
    elif isinstance(outcome, DecodeError):
        # The only JSON objects the parser may refuse to decode: nested beyond a decoder's depth limit
        # (orjson's 1024, the standard library's recursion limit when orjson hands over).
        assert outcome.message.startswith("value: not strict JSON: "), outcome.message
        assert nesting_depth(reference) >= 500, outcome.message
    else:
        expected = spec3_fields(reference, now_s, skew_s)
        if expected is None:
            assert isinstance(outcome, ValidationError), f"SPEC 3 broken, yet accepted: {reference!r:.300}"
        else:
            assert isinstance(outcome, Transaction), f"valid, yet {outcome!r:.300}"
            assert {name: getattr(outcome, name) for name in FIELDS} == expected
    event(type(outcome).__name__)
    return outcome


# --------------------------------------------------------------------------- JSON text, token by token

EMOJI = "\U0001f600"
BIG_STRING = "x" * MB  # 1 MB of ASCII
BIG_UNICODE = EMOJI * (MB // 4)  # 1 MB of 4-byte characters
# Long tokens are drawn as (what, length) and written out by ``_long_number``: short reprs in reports.
LONG_NUMBERS = [
    ("digits", 19),
    ("digits", 20),
    ("digits", 31),
    ("digits", 309),
    ("digits", 310),
    ("nines", 4299),
    ("nines", 4300),
    ("nines", 4301),
    ("digits", 5001),
    ("-digits", 5001),
    ("digits", 20_001),
    ("fraction", 1000),
    ("tiny", 1000),
]


def _long_number(spec: tuple[str, int]) -> str:
    kind, length = spec
    if kind == "nines":
        return "9" * length
    if kind == "fraction":
        return "1" * length + ".5"
    if kind == "tiny":
        return "0." + "0" * length + "1"
    return ("-" if kind.startswith("-") else "") + "1" + "0" * (length - 1)


NUMBER_TOKENS = [
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "0",
    "-0",
    "-0.0",
    "0.0",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",  # rounds to infinity
    "1e309",
    "-1e309",
    "1e400",
    "5e-324",  # the smallest denormal
    "2.2250738585072014e-308",
    "4.9e-325",  # rounds to 0.0
    "1e-400",
    "1E2",
    "1e+2",
    "0.1e1",
    "999999999999.99",
    "999999999999.9999999",
    "1000000000000",
    "1e12",
    "1.00000000000000000000000000000001",
    "1e99999999999999999999",
    "-1e99999999999999999999",
    "1e-99999999999999999999",
]
BAD_NUMBER_TOKENS = ["NaN", "Infinity", "-Infinity", "-NaN", "+1", "01", ".5", "1.", "0x10", "1e", "--1"]
LITERALS = ["null", "true", "false"]
SPECIAL_STRINGS = [
    "",
    " ",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "a\ud83d",  # a pair cut in half
    "\ude00\ud83d",  # a pair reversed
    EMOJI,
    "\u0000",
    "\ufeff",
    "\u2028\u2029",
    "12.5",
    "1700000000",
    "true",
    "NaN",
    "x" * 128,
    "x" * 129,
    EMOJI * 128,
    EMOJI * 129,
]

_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from([EMOJI, '"', "\\"]))
_strings = st.one_of(st.text(_chars, max_size=140), st.sampled_from(SPECIAL_STRINGS))

Node = tuple[str, Any]  # ("lit", token) | ("str", text) | ("arr", [Node]) | ("obj", [(key, Node)])

_number_nodes = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(LONG_NUMBERS).map(_long_number),
    st.sampled_from(NUMBER_TOKENS),
).map(lambda token: ("lit", token))
_scalar_nodes: st.SearchStrategy[Node] = st.one_of(
    st.sampled_from(LITERALS).map(lambda token: ("lit", token)),
    _number_nodes,
    _strings.map(lambda text: ("str", text)),
    st.sampled_from(BAD_NUMBER_TOKENS).map(lambda token: ("lit", token)),
)
_nodes: st.SearchStrategy[Node] = st.recursive(
    _scalar_nodes,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: ("arr", items)),
        st.lists(st.tuples(_strings, inner), max_size=4).map(lambda pairs: ("obj", pairs)),
    ),
    max_leaves=12,
)


def json_string(text: str, escaped: bool) -> str:
    # escaped: every non-ASCII character as \\u escapes (a lone surrogate stays a valid escape);
    # raw: UTF-8 later, lone surrogates then become invalid UTF-8 bytes (surrogatepass).
    return json.dumps(text, ensure_ascii=escaped)


def write(node: Node, escaped: bool) -> str:
    """JSON text of a node (generated nodes are shallow; deep nesting is built by ``nest``)."""
    kind, payload = node
    if kind == "lit":
        return str(payload)
    if kind == "str":
        return json_string(payload, escaped)
    if kind == "arr":
        return "[" + ",".join(write(item, escaped) for item in payload) + "]"
    return "{" + ",".join(json_string(k, escaped) + ":" + write(v, escaped) for k, v in payload) + "}"


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def nest(inner: str, depth: int, kind: str) -> str:
    """``inner`` inside ``depth`` arrays or objects, built without recursion."""
    if kind == "arr":
        return "[" * depth + inner + "]" * depth
    return '{"k":' * depth + inner + "}" * depth


def valid_fields(**overrides: str) -> list[tuple[str, str]]:
    """A valid transaction as (key, JSON text) pairs, with fields replaced by JSON text."""
    fields = {
        "transaction_id": '"tx-1"',
        "user_id": '"user-1"',
        "amount": "12.5",
        "merchant_id": '"m-1"',
        "merchant_category": '"grocery"',
        "timestamp": repr(NOW_S - 10),
        "is_online": "true",
    }
    fields.update(overrides)
    return list(fields.items())


def obj_text(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


def transaction(**overrides: str) -> bytes:
    return to_bytes(obj_text(valid_fields(**overrides)))


# Transactions drawn valid, then mutated: the generators reach acceptance and every kind of rejection.
_valid_values: dict[str, st.SearchStrategy[str]] = {
    "transaction_id": st.text(min_size=1, max_size=128).map(lambda s: json_string(s, True)),
    "user_id": st.text(min_size=1, max_size=128).map(lambda s: json_string(s, False)),
    "merchant_id": st.text(min_size=1, max_size=128).map(lambda s: json_string(s, False)),
    "merchant_category": st.one_of(st.just("null"), st.text(max_size=64).map(lambda s: json_string(s, True))),
    "amount": st.one_of(
        st.floats(min_value=0.0, max_value=999999999999.99).map(repr),
        st.integers(0, 10**12 - 1).map(str),
    ),
    "timestamp": st.one_of(
        st.floats(min_value=5e-324, max_value=NOW_S + SKEW_S).map(repr),
        st.integers(1, int(NOW_S + SKEW_S)).map(str),
    ),
    "is_online": st.sampled_from(["true", "false", "null"]),
}


#: JSON text of values at or beyond a SPEC 3 bound, of the wrong type, or that a decoder finds hard.
EDGE_TOKENS = [
    *LITERALS,
    *NUMBER_TOKENS,
    *(_long_number(spec) for spec in LONG_NUMBERS),
    "-1",
    "-1e-300",
    "999999999999",
    "1699999990",
    "1700000300",  # NOW_S + SKEW_S exactly
    "1700000300.000001",
    *(json.dumps(text) for text in SPECIAL_STRINGS),
    *(json.dumps(text, ensure_ascii=False) for text in SPECIAL_STRINGS if not text.isascii()),
    '"\\ud83d\\ude00"',  # an escaped pair: one character
    "[]",
    "{}",
    "[12.5]",
    '{"value":12.5}',
]
#: Many extra fields, built once.
_MANY_FIELDS = ",".join(f'"extra{i}":{i}' for i in range(10_000))


@st.composite
def transaction_texts(draw: st.DrawFn) -> bytes:
    """A valid transaction (drawn), then a few of: fields replaced, dropped or given twice, a deep or
    huge value added, 10,000 extra fields, bytes before or after the object."""
    escaped = draw(st.booleans())
    pairs = [(name, draw(values)) for name, values in _valid_values.items() if draw(st.integers(0, 19)) > 0]
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([*FIELDS, "extra", ""]))
        value = draw(st.one_of(st.sampled_from(EDGE_TOKENS), _nodes.map(lambda node: write(node, escaped))))
        how = draw(
            st.sampled_from(["replace", "replace", "before", "after"])
        )  # a duplicate key, first or last
        if how == "replace":
            pairs = [(k, value if k == name else v) for k, v in pairs]
        elif how == "before":
            pairs.insert(0, (name, value))
        else:
            pairs.append((name, value))
    if draw(st.integers(0, 4)) == 0:  # a deep or huge value in a field
        name = draw(st.sampled_from([*FIELDS, "extra"]))
        big = draw(
            st.one_of(
                st.builds(
                    nest,
                    st.sampled_from(["1", "[]", '"x"', "NaN", "1e400", '"\\ud800"']),
                    st.sampled_from([2, 100, 900, 1023, 1024, 1025, 5000, 10_000]),
                    st.sampled_from(["arr", "obj"]),
                ),
                st.sampled_from([BIG_STRING, BIG_UNICODE]).map(lambda s: json_string(s, False)),
                st.just(json_string(BIG_UNICODE, True)),  # 6 MB of escapes: over the size limit
            )
        )
        pairs.append((name, big))
    text_extra = "," + _MANY_FIELDS if draw(st.integers(0, 9)) == 0 else ""
    text = "{" + ",".join(f"{json_string(k, escaped)}:{v}" for k, v in pairs) + text_extra + "}"
    before = draw(st.sampled_from([" \n\t", "\ufeff", "[", "x"])) if draw(st.integers(0, 7)) == 0 else ""
    after = (
        draw(st.sampled_from([" \r\n", "x", "}", "{}", "\x00", ",", "NaN"]))
        if draw(st.integers(0, 7)) == 0
        else ""
    )
    return to_bytes(before + text + after)


_PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# --------------------------------------------------------------------------- properties


@_PROPERTY
@given(raw=st.binary(max_size=2_000))
@example(raw=b"\xef\xbb\xbf{}")
@example(raw=b"\xff\xfe{\x00}\x00")
@example(raw=b'{"a":"\xed\xa0\x80"}')
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@_PROPERTY
@given(node=_nodes, escaped=st.booleans())
def test_arbitrary_json_values(node: Node, escaped: bool) -> None:
    check(to_bytes(write(node, escaped)))


@_PROPERTY
@given(raw=transaction_texts())
def test_mutated_transactions(raw: bytes) -> None:
    check(raw)


@pytest.mark.parametrize("name", [*FIELDS, "extra"])
def test_every_edge_value_in_every_field(name: str) -> None:
    """Each edge value alone in a valid transaction, with the value both escaped and raw."""
    for token in EDGE_TOKENS:
        check(transaction(**{name: token}))
    for node_text in (*(json.dumps(t) for t in SPECIAL_STRINGS), '"\\ud800"', '"\ud800"'):
        check(transaction(**{name: node_text}))


@_PROPERTY
@given(
    depth=st.integers(1, 10_000) | st.sampled_from([1022, 1023, 1024, 1025, 10_000]),
    kind=st.sampled_from(["arr", "obj"]),
    inner=st.sampled_from(["1", "null", '"\\ud800"', "1e400", "NaN", "[", ""]),
    where=st.sampled_from(["top", "amount", "extra"]),
)
def test_deep_nesting(depth: int, kind: str, inner: str, where: str) -> None:
    deep = nest(inner, depth, kind)
    raw = to_bytes(deep) if where == "top" else transaction(**{where: deep})
    outcome = check(raw)
    if where == "amount":
        assert isinstance(outcome, RejectedMessage)


@_PROPERTY
@given(raw=st.binary(max_size=300) | transaction_texts(), max_bytes=st.integers(0, 400))
def test_the_size_limit_is_checked_first_and_only_by_size(raw: bytes, max_bytes: int) -> None:
    """Over the limit: a DecodeError naming size and limit; under it: the same outcome as no limit."""
    limited = check(raw, max_bytes=max_bytes)
    if len(raw) <= max_bytes:
        unlimited = check(raw, max_bytes=None)
        assert type(limited) is type(unlimited)
        assert (
            str(limited) == str(unlimited) if isinstance(limited, RejectedMessage) else limited == unlimited
        )


# --------------------------------------------------------------------------- regressions, one per case

_DEEP_ARRAY = "[" * 10_000 + "]" * 10_000
_DEEP_OBJECT = nest("1", 10_000, "obj")
_MANY_FIELDS = ",".join(f'"extra{i}":{i}' for i in range(10_000))

REGRESSIONS: list[tuple[str, bytes | None, str]] = [
    # (name, value, expected: "ok" | "DecodeError" | "ValidationError:<fields>")
    ("tombstone", None, "DecodeError"),
    ("empty", b"", "DecodeError"),
    ("array 10,000 deep", to_bytes(_DEEP_ARRAY), "DecodeError"),
    ("object 10,000 deep", to_bytes(_DEEP_OBJECT), "DecodeError"),
    ("amount 10,000 deep", transaction(amount=_DEEP_ARRAY), "DecodeError"),
    ("extra field 10,000 deep", transaction(extra=_DEEP_OBJECT), "DecodeError"),
    ("extra field 100 deep", transaction(extra=nest("1", 100, "arr")), "ok"),
    (
        "10,000 deep with a lone surrogate (stdlib fallback)",
        to_bytes(nest('"\\ud800"', 10_000, "arr")),
        "DecodeError",
    ),
    ("amount 10**5000", transaction(amount="1" + "0" * 5000), "ValidationError:amount"),
    ("amount -10**5000", transaction(amount="-1" + "0" * 5000), "ValidationError:amount"),
    ("amount 4300 nines", transaction(amount="9" * 4300), "ValidationError:amount"),
    ("amount 4301 nines", transaction(amount="9" * 4301), "ValidationError:amount"),
    ("amount 10**20000", transaction(amount="1" + "0" * 20_000), "ValidationError:amount"),
    ("timestamp 10**4000", transaction(timestamp="1" + "0" * 4000), "ValidationError:timestamp"),
    ("timestamp -10**4000", transaction(timestamp="-1" + "0" * 4000), "ValidationError:timestamp"),
    ("extra field 10**5000", transaction(extra="1" + "0" * 5000), "ok"),
    ("amount 1e308", transaction(amount="1e308"), "ValidationError:amount"),
    ("amount 1e309 (overflows)", transaction(amount="1e309"), "ValidationError:amount"),
    ("amount -0.0", transaction(amount="-0.0"), "ok"),
    ("amount denormal", transaction(amount="5e-324"), "ok"),
    ("amount 1e-400 (underflows to 0)", transaction(amount="1e-400"), "ok"),
    ("timestamp denormal", transaction(timestamp="5e-324"), "ok"),
    ("timestamp -0.0", transaction(timestamp="-0.0"), "ValidationError:timestamp"),
    ("timestamp 1e-400 (underflows to 0)", transaction(timestamp="1e-400"), "ValidationError:timestamp"),
    ("amount NaN", transaction(amount="NaN"), "DecodeError"),
    ("amount Infinity", transaction(amount="Infinity"), "DecodeError"),
    ("timestamp -Infinity", transaction(timestamp="-Infinity"), "DecodeError"),
    ("NaN in an extra field", transaction(extra="[NaN]"), "DecodeError"),
    ("invalid UTF-8 in a field", transaction(user_id='"\xff"').replace(b"\xc3\xbf", b"\xff"), "DecodeError"),
    ("invalid UTF-8 in an extra field", transaction(extra='"@@"').replace(b"@@", b"\xc0\xaf"), "DecodeError"),
    (
        "invalid UTF-8 in a key",
        to_bytes(obj_text(valid_fields())[:-1] + ',"@@":1}').replace(b"@@", b"\xfe"),
        "DecodeError",
    ),
    ("truncated UTF-8 at the end", transaction() + b"\xe2\x82", "DecodeError"),
    ("lone surrogate escape in user_id", transaction(user_id='"\\ud800"'), "ValidationError:user_id"),
    (
        "lone surrogate escape in merchant_category",
        transaction(merchant_category='"\\udfff"'),
        "ValidationError:merchant_category",
    ),
    ("lone surrogate escape in an extra field", transaction(extra='"\\ud800"'), "ok"),
    ("lone surrogate escape in a key", to_bytes(obj_text([*valid_fields(), ("\ud800", "1")])), "ok"),
    (
        "lone surrogate as raw bytes in a key",
        to_bytes(obj_text(valid_fields())[:-1] + ',"\ud800":1}'),
        "DecodeError",
    ),
    ("lone surrogate as raw bytes (CESU-8)", transaction(user_id='"\ud800"'), "DecodeError"),
    ("1 MB string in an extra field", transaction(extra=json.dumps(BIG_STRING)), "ok"),
    ("1 MB string as user_id", transaction(user_id=json.dumps(BIG_STRING)), "ValidationError:user_id"),
    ("1 MB string as amount", transaction(amount=json.dumps(BIG_STRING)), "ValidationError:amount"),
    (
        "1 MB of emoji as merchant_category",
        transaction(merchant_category=json.dumps(BIG_UNICODE, ensure_ascii=False)),
        "ValidationError:merchant_category",
    ),
    ("1 MB string, not an object", to_bytes(json.dumps(BIG_STRING)), "DecodeError"),
    (
        "every field a 1 MB string",
        transaction(**{name: json.dumps("y" * (MB // 8)) for name in FIELDS}),
        "ValidationError:" + ",".join(FIELDS),
    ),
    ("duplicate amount, the valid one last", to_bytes(obj_text([("amount", "-1"), *valid_fields()])), "ok"),
    (
        "duplicate amount, the invalid one last",
        to_bytes(obj_text([*valid_fields(), ("amount", "-1")])),
        "ValidationError:amount",
    ),
    ("duplicate user_id", to_bytes(obj_text([*valid_fields(), ("user_id", '"user-2"')])), "ok"),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + transaction(), "DecodeError"),
    ("UTF-16 byte order mark", b"\xff\xfe" + transaction(), "DecodeError"),
    ("trailing garbage", transaction() + b"garbage", "DecodeError"),
    ("trailing second object", transaction() + transaction(), "DecodeError"),
    ("trailing NUL", transaction() + b"\x00", "DecodeError"),
    ("trailing whitespace", transaction() + b" \r\n\t", "ok"),
    ("amount as a string", transaction(amount='"12.5"'), "ValidationError:amount"),
    ("timestamp as a string", transaction(timestamp='"1699999990"'), "ValidationError:timestamp"),
    ("amount true", transaction(amount="true"), "ValidationError:amount"),
    ("amount false", transaction(amount="false"), "ValidationError:amount"),
    ("is_online 1", transaction(is_online="1"), "ValidationError:is_online"),
    ("10,000 extra fields", to_bytes(obj_text(valid_fields())[:-1] + "," + _MANY_FIELDS + "}"), "ok"),
    (
        "10,000 extra fields and a bad amount",
        to_bytes(obj_text(valid_fields(amount="-5"))[:-1] + "," + _MANY_FIELDS + "}"),
        "ValidationError:amount",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in REGRESSIONS], ids=[c[0] for c in REGRESSIONS])
def test_regressions(raw: bytes | None, expected: str) -> None:
    outcome = check(raw)
    if expected == "ok":
        assert isinstance(outcome, Transaction), outcome
        return
    assert isinstance(outcome, RejectedMessage), outcome
    error_type, _, fields = expected.partition(":")
    assert outcome.error_type == error_type, outcome.message
    if fields:
        named = {part.split(":", 1)[0] for part in outcome.message.split("; ")}
        assert named == set(fields.split(",")), outcome.message


# orjson reads integers up to 64 bits, and larger ones within a double's range as floats; the
# standard library reads the rest (beyond a double's range, or when orjson hands over for another
# reason, such as a lone surrogate escape anywhere in the value) as Python integers of any size.
_HAND_OVER = '"\\ud800"'


@pytest.mark.parametrize(
    ("amount", "extra", "described"),
    [
        ("1" + "0" * 4000, "0", "an integer of 4001 digits"),
        ("-" + "9" * 4300, "0", "a negative integer of 4300 digits"),
        ("7" * 200, _HAND_OVER, "an integer of 200 digits"),
        ("7" * 200, "0", "7.777777777777778e+199"),  # orjson: a float
    ],
)
def test_a_huge_integer_is_described_not_quoted(amount: str, extra: str, described: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_transaction(transaction(amount=amount, extra=extra), NOW_S, SKEW_S)
    assert info.value.message == f"amount: must be >= 0 and < 1e12, got {described}"


def test_quoted_values_are_cut_at_about_100_characters() -> None:
    # 99 digits: quoted whole; 101 digits: described by their count.
    for value, quoted in (("9" * 99, True), ("-" + "9" * 101, False)):
        with pytest.raises(ValidationError) as info:
            parse_transaction(transaction(timestamp=value, extra=_HAND_OVER), NOW_S, SKEW_S)
        assert (value in info.value.message) is quoted, info.value.message
        assert len(info.value.message) < 250


# --------------------------------------------------------------------------- the size limit


def padded(size: int, body: bytes | None = None) -> bytes:
    """A valid transaction (or ``body``) padded with JSON whitespace to exactly ``size`` bytes."""
    body = transaction() if body is None else body
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("limit", [1024, 4096, DEFAULT_MAX_MESSAGE_BYTES])
def test_a_value_at_the_limit_is_decoded_one_byte_more_is_not(limit: int) -> None:
    assert isinstance(check(padded(limit), max_bytes=limit), Transaction)
    raw = padded(limit + 1)
    with pytest.raises(DecodeError) as info:
        parse_transaction(raw, NOW_S, SKEW_S, max_bytes=limit)
    assert info.value.message == (
        f"value: {limit + 1} bytes, more than MAX_MESSAGE_BYTES={limit} (not decoded)"
    )
    assert isinstance(check(raw, max_bytes=None), Transaction)  # it was a valid transaction


def test_the_default_limit_is_max_message_bytes_default() -> None:
    assert DEFAULT_MAX_MESSAGE_BYTES == load_settings({}).max_message_bytes == 1_048_576
    assert isinstance(parse_transaction(padded(DEFAULT_MAX_MESSAGE_BYTES), NOW_S, SKEW_S), Transaction)
    with pytest.raises(DecodeError):
        parse_transaction(padded(DEFAULT_MAX_MESSAGE_BYTES + 1), NOW_S, SKEW_S)


def test_the_limit_counts_bytes_not_characters() -> None:
    body = transaction(user_id=json.dumps(EMOJI * 100, ensure_ascii=False))  # 100 characters, 400 bytes
    chars = len(body.decode("utf-8"))
    assert chars + 300 == len(body)
    assert isinstance(check(body, max_bytes=len(body)), Transaction)
    with pytest.raises(DecodeError, match="MAX_MESSAGE_BYTES"):
        parse_transaction(body, NOW_S, SKEW_S, max_bytes=chars)  # its length in characters: too short


def test_a_100_mb_value_is_rejected_without_being_decoded() -> None:
    # A valid transaction: decoded, it would be accepted. Its lone surrogate escape at the very end
    # makes orjson hand the whole value over to the standard library: decoding it takes 0.3 s on
    # the machine this was written on, checking its size some microseconds.
    body = transaction(extra=json.dumps("z" * (100 * MB - 200)), hand_over='"\\ud800"')
    raw = padded(100 * MB, body=body)
    started = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        parse_transaction(raw, NOW_S, SKEW_S, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    elapsed = time.perf_counter() - started
    assert info.value.message == (
        f"value: {100 * MB} bytes, more than MAX_MESSAGE_BYTES={DEFAULT_MAX_MESSAGE_BYTES} (not decoded)"
    )
    assert elapsed < 0.05, f"{elapsed:.3f}s: the value was read"
