"""Typed records and the one place where raw bytes become a ``Transaction``."""

from __future__ import annotations

import json
import math
from typing import Any

import faust
import orjson

from records.exceptions import DecodeError, ValidationError

MAX_ID_CHARS = 128
MAX_CATEGORY_CHARS = 64
MAX_AMOUNT = 1e12


class Transaction(faust.Record, serializer="orjson"):
    """A validated card transaction (SPEC 3), defaults already applied."""

    transaction_id: str
    user_id: str
    amount: float
    merchant_id: str
    merchant_category: str
    timestamp: float
    is_online: bool


class UserFeatures(faust.Record, serializer="orjson"):
    """The feature record published to ``ml-features`` (SPEC 4, 5)."""

    user_id: str
    transaction_id: str | None
    event_time: float | None
    tx_count_1h: int
    tx_count_24h: int
    total_amount_1h: float
    total_amount_24h: float
    avg_amount_1h: float
    avg_amount_24h: float
    max_amount_24h: float
    unique_merchants_1h: int
    unique_merchants_24h: int
    seconds_since_last_tx: float | None
    amount_zscore_24h: float | None
    current_amount: float | None
    is_online: bool | None
    merchant_category: str | None
    computed_at: float


class DeadLetter(faust.Record, serializer="orjson"):
    """A message that could not be accepted (SPEC 6)."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_key: str | None
    error_type: str
    error_message: str
    failed_at: str
    raw_value: str


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


def decode_json_object(raw: bytes | None) -> dict[str, Any]:
    """Strict JSON object from bytes, or :class:`DecodeError`."""
    if raw is None:
        raise DecodeError("value: message has no value (tombstone)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses numbers beyond the range of a double and lone surrogate
        # escapes, which RFC 8259 allows; the standard library reads them (and
        # still refuses NaN/Infinity), so validation can name the field at fault.
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise DecodeError(f"value: not strict JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"value: expected a JSON object, got {_json_type(obj)}")
    return obj


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
    errors: list[str] = []
    transaction_id = _string(obj, "transaction_id", 1, MAX_ID_CHARS, errors)
    user_id = _string(obj, "user_id", 1, MAX_ID_CHARS, errors)

    amount = _number(obj, "amount", errors)
    if amount is not None and not 0 <= amount < MAX_AMOUNT:
        errors.append(f"amount: must be >= 0 and < 1e12, got {amount!r}")

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
            errors.append(f"timestamp: must be > 0, got {timestamp!r}")
        elif timestamp > now_s + max_clock_skew_s:
            errors.append(
                f"timestamp: {timestamp!r} is more than MAX_CLOCK_SKEW_S={max_clock_skew_s:g}s "
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


def parse_transaction(raw: bytes | None, now_s: float, max_clock_skew_s: float) -> Transaction:
    """Raw message value -> :class:`Transaction`, or a :class:`RejectedMessage`."""
    return validate_transaction(decode_json_object(raw), now_s, max_clock_skew_s)


def dead_letter_value(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    error_type: str,
    error_message: str,
    failed_at: str,
    raw_value: bytes | None,
) -> bytes:
    """The SPEC 6 dead-letter JSON for one rejected message."""
    letter = DeadLetter(
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_key=None if key is None else key.decode("utf-8", "replace"),
        error_type=error_type,
        error_message=error_message,
        failed_at=failed_at,
        raw_value="" if raw_value is None else raw_value.decode("utf-8", "replace"),
    )
    return orjson.dumps(letter.asdict())
