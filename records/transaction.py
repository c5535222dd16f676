"""The one place where raw bytes become a :class:`Transaction` (SPEC 3). Pure: no Faust, no Kafka."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from records.errors import DecodeError, ValidationError

MAX_ID_CHARS = 128
MAX_CATEGORY_CHARS = 64
MAX_AMOUNT = 1e12
#: ``MAX_MESSAGE_BYTES``' default (app/settings.py): a longer value is rejected without being decoded.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
#: An error message quotes at most this many characters of any input value (they go to logs and the DLQ).
MAX_QUOTED_CHARS = 100
#: A decoder's own explanation is cut to this many characters.
MAX_REASON_CHARS = 200


@dataclass(slots=True)
class Transaction:
    """A validated card transaction (SPEC 3), defaults already applied.

    The one transaction type of the core: validation builds it, the window
    keeps it, the re-keying hop carries it. Treat it as immutable; it is not
    ``frozen`` because a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__`` (1.1 us instead of 0.25 us here), once per
    message on the hot path.
    """

    transaction_id: str
    user_id: str
    amount: float
    merchant_id: str
    merchant_category: str
    timestamp: float  # event time, epoch seconds
    is_online: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "user_id": self.user_id,
            "amount": self.amount,
            "merchant_id": self.merchant_id,
            "merchant_category": self.merchant_category,
            "timestamp": self.timestamp,
            "is_online": self.is_online,
        }

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Transaction:
        """The inverse of :meth:`to_dict` (for a transaction validated before)."""
        return cls(
            transaction_id=str(fields["transaction_id"]),
            user_id=str(fields["user_id"]),
            amount=float(fields["amount"]),
            merchant_id=str(fields["merchant_id"]),
            merchant_category=str(fields["merchant_category"]),
            timestamp=float(fields["timestamp"]),
            is_online=bool(fields["is_online"]),
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (RFC 8259)")


def _parse_int(text: str) -> int | float:
    # Python refuses to convert integers of more than sys.get_int_max_str_digits()
    # digits; such a number is still JSON (out of range, not undecodable), so it
    # becomes an infinite float and fails validation as "not finite".
    try:
        return int(text)
    except ValueError:
        return float(text)


def decode_json_object(raw: bytes | None, max_bytes: int | None = None) -> dict[str, Any]:
    """Strict JSON object from bytes, or :class:`DecodeError`.

    A value longer than ``max_bytes`` (None: no limit) is rejected before any
    decoding: its size is all the error says about it.
    """
    if raw is None:
        raise DecodeError("value: message has no value (tombstone)")
    if max_bytes is not None and len(raw) > max_bytes:
        raise DecodeError(f"value: {len(raw)} bytes, more than MAX_MESSAGE_BYTES={max_bytes} (not decoded)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses numbers beyond the range of a double and lone surrogate
        # escapes, which RFC 8259 allows; the standard library reads them (and
        # still refuses NaN/Infinity), so validation can name the field at fault.
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise DecodeError(f"value: not strict JSON: {_cut(str(exc), MAX_REASON_CHARS)}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"value: expected a JSON object, got {_json_type(obj)}")
    return obj


def _cut(text: str, max_chars: int) -> str:
    """``text`` on one line, at most about ``max_chars`` characters (with how long it was, when cut)."""
    text = " ".join(text.split()) if "\n" in text or "\r" in text else text
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}... ({len(text)} characters)"


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, bounded: never a whole huge input value.

    An integer of more than about 100 digits is described by its size: its
    ``repr`` would be up to 4,300 characters (and fails beyond).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 330:
        try:
            digits = str(len(str(abs(value))))
        except ValueError:  # beyond sys.get_int_max_str_digits()
            digits = f"about {int(value.bit_length() * math.log10(2)) + 1}"
        return f"{'a negative' if value < 0 else 'an'} integer of {digits} digits"
    return _cut(repr(value), MAX_QUOTED_CHARS)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _string(obj: dict[str, Any], field: str, min_chars: int, max_chars: int, errors: list[str]) -> str:
    value = obj.get(field)
    if field not in obj or value is None:
        errors.append(f"{field}: required")
        return ""
    if not isinstance(value, str):
        errors.append(f"{field}: must be a string, got {_json_type(value)}")
        return ""
    _check_chars(field, value, min_chars, max_chars, errors)
    return value


def _check_chars(field: str, value: str, min_chars: int, max_chars: int, errors: list[str]) -> None:
    if not min_chars <= len(value) <= max_chars:
        errors.append(f"{field}: must be {min_chars}-{max_chars} characters, got {len(value)}")
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        errors.append(f"{field}: contains an unpaired surrogate (not valid Unicode)")


def _number(obj: dict[str, Any], field: str, errors: list[str]) -> float | None:
    value = obj.get(field)
    if field not in obj or value is None:
        errors.append(f"{field}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{field}: must be a number, got {_json_type(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{field}: must be finite")
        return None
    return value  # int stays int here so that huge values compare exactly


def validate_transaction(obj: dict[str, Any], now_s: float, max_clock_skew_s: float) -> Transaction:
    """Apply every rule of SPEC 3; the error names each field at fault."""
    txn = _plainly_valid(obj, now_s + max_clock_skew_s)
    if txn is not None:
        return txn
    return _validate_field_by_field(obj, now_s, max_clock_skew_s)


_ID_RANGE = range(1, MAX_ID_CHARS + 1)
_CATEGORY_RANGE = range(MAX_CATEGORY_CHARS + 1)


def _plainly_valid(obj: dict[str, Any], latest_s: float) -> Transaction | None:
    """The transaction when ``obj`` is valid in the plain way almost every message is, else None.

    The same rules as :func:`_validate_field_by_field` (which it must agree with:
    tests/unit/test_records.py), checked in one expression: ASCII strings
    (``str.isascii`` is a flag, and no ASCII string holds a surrogate), numbers
    that are ``float`` or ``int`` (not ``bool``) inside their ranges (NaN and
    infinities fail the comparisons). Anything else goes the long way, which
    also names what is wrong.
    """
    get = obj.get
    transaction_id, user_id, merchant_id = get("transaction_id"), get("user_id"), get("merchant_id")
    amount, timestamp = get("amount"), get("timestamp")
    category, is_online = get("merchant_category"), get("is_online")
    if not (
        type(transaction_id) is str
        and type(user_id) is str
        and type(merchant_id) is str
        and transaction_id.isascii()
        and user_id.isascii()
        and merchant_id.isascii()
        and len(transaction_id) in _ID_RANGE
        and len(user_id) in _ID_RANGE
        and len(merchant_id) in _ID_RANGE
        and (type(amount) is float or type(amount) is int)
        and 0 <= amount < MAX_AMOUNT
        and (type(timestamp) is float or type(timestamp) is int)
        and 0 < timestamp <= latest_s
        and (
            category is None
            or (type(category) is str and category.isascii() and len(category) in _CATEGORY_RANGE)
        )
        and (is_online is None or type(is_online) is bool)
    ):
        return None
    return Transaction(
        transaction_id,
        user_id,
        float(amount),
        merchant_id,
        "unknown" if category is None else category,
        float(timestamp),
        bool(is_online),
    )


def _validate_field_by_field(obj: dict[str, Any], now_s: float, max_clock_skew_s: float) -> Transaction:
    errors: list[str] = []
    transaction_id = _string(obj, "transaction_id", 1, MAX_ID_CHARS, errors)
    user_id = _string(obj, "user_id", 1, MAX_ID_CHARS, errors)

    amount = _number(obj, "amount", errors)
    if amount is not None and not 0 <= amount < MAX_AMOUNT:
        errors.append(f"amount: must be >= 0 and < 1e12, got {_shown(amount)}")

    merchant_id = _string(obj, "merchant_id", 1, MAX_ID_CHARS, errors)

    category = obj.get("merchant_category")
    if category is None:
        category = "unknown"
    elif not isinstance(category, str):
        errors.append(f"merchant_category: must be a string or null, got {_json_type(category)}")
    else:
        _check_chars("merchant_category", category, 0, MAX_CATEGORY_CHARS, errors)

    timestamp = _number(obj, "timestamp", errors)
    if timestamp is not None:
        if not timestamp > 0:
            errors.append(f"timestamp: must be > 0, got {_shown(timestamp)}")
        elif timestamp > now_s + max_clock_skew_s:
            errors.append(
                f"timestamp: {_shown(timestamp)} is more than MAX_CLOCK_SKEW_S={max_clock_skew_s:g}s "
                f"ahead of the worker clock ({now_s:.3f})"
            )

    is_online = obj.get("is_online")
    if is_online is None:
        is_online = False
    elif not isinstance(is_online, bool):
        errors.append(f"is_online: must be a boolean or null, got {_json_type(is_online)}")

    if errors:
        raise ValidationError("; ".join(errors))
    return Transaction(
        transaction_id=transaction_id,
        user_id=user_id,
        amount=float(amount),  # type: ignore[arg-type]
        merchant_id=merchant_id,
        merchant_category=category,
        timestamp=float(timestamp),  # type: ignore[arg-type]
        is_online=is_online,
    )


def parse_transaction(
    raw: bytes | None,
    now_s: float,
    max_clock_skew_s: float,
    max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
) -> Transaction:
    """Raw message value -> :class:`Transaction`, or a :class:`RejectedMessage`.

    A value longer than ``max_bytes`` (``MAX_MESSAGE_BYTES``) is a
    ``DecodeError`` without being decoded. Error messages are one line and
    bounded: they quote at most :data:`MAX_QUOTED_CHARS` characters of a value.
    """
    return validate_transaction(decode_json_object(raw, max_bytes), now_s, max_clock_skew_s)
