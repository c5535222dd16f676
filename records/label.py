"""Fraud labels (SPEC 10) and the prediction log they are joined with. Pure: no Faust, no Kafka.

A label ``{transaction_id, label, labeled_at}`` arrives on ``LABELS_TOPIC``
keyed by ``user_id`` or not at all, up to ``LABEL_WAIT_S`` after the
prediction it judges. The worker that scored the transaction keeps a
*prediction log* entry for it in the user's partition (the same RocksDB
database and changelog as the user's windows, under :func:`prediction_key`,
which no head or chunk key can be); the label is carried to that partition
over the re-keying topic (under :data:`LABEL_KEY`: to the user's partition
when it is keyed, to every partition as a *probe* when it is not) and joined
there, in that partition's batch and transaction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from records.errors import DecodeError, ValidationError
from records.transaction import MAX_ID_CHARS, _number, _string, decode_json_object

#: Key of a label carried over the re-keying topic (0xFF: never the start of a UTF-8 user id).
LABEL_KEY = b"\xfflabel"

#: Prefix of a prediction-log key in a partition's store. It contains 0xFF, so no code that walks
#: user heads takes it for one, and it sorts after every head and chunk.
PREDICTION_PREFIX = b"\xffpred:"


@dataclass(frozen=True, slots=True)
class Label:
    transaction_id: str
    label: int
    labeled_at: float


def parse_label(raw: bytes | None) -> Label:
    """Raw ``LABELS_TOPIC`` value -> :class:`Label`, or a ``DecodeError``/``ValidationError``."""
    obj = decode_json_object(raw)
    errors: list[str] = []
    transaction_id = _string(obj, "transaction_id", 1, MAX_ID_CHARS, errors)
    value = obj.get("label")
    label = 0
    if "label" not in obj or value is None:
        errors.append("label: required")
    elif isinstance(value, bool) or value not in (0, 1):
        errors.append(f"label: must be 0 or 1, got {value!r}"[:200])
    else:
        label = int(value)
    labeled_at = _number(obj, "labeled_at", errors)
    at = 0.0
    if labeled_at is not None:
        try:
            at = float(labeled_at)  # an int may be too large for a float
        except OverflowError:
            errors.append("labeled_at: must be finite")
    if errors:
        raise ValidationError("; ".join(errors))
    return Label(transaction_id, label, at)


def carried_label(label: Label, probe: bool) -> bytes:
    """The value of a label on the re-keying topic; ``probe``: sent to every partition (no key)."""
    return orjson.dumps(
        {
            "transaction_id": label.transaction_id,
            "label": label.label,
            "labeled_at": label.labeled_at,
            "probe": probe,
        }
    )


def open_carried_label(value: bytes | None) -> tuple[Label, bool]:
    try:
        obj: dict[str, Any] = orjson.loads(value or b"")
        return Label(str(obj["transaction_id"]), int(obj["label"]), float(obj["labeled_at"])), bool(
            obj["probe"]
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"carried label is unreadable: {exc}") from None


def prediction_key(transaction_id: str) -> bytes:
    return PREDICTION_PREFIX + transaction_id.encode("utf-8")


def is_prediction_key(key: bytes | None) -> bool:
    return key is not None and key.startswith(PREDICTION_PREFIX)


@dataclass(slots=True)  # immutable by convention; not frozen: see Transaction
class LoggedPrediction:
    """What the label join needs of a prediction: its score, model and times."""

    score: float
    model_version: str
    event_time: float  # the transaction's timestamp: the entry expires by the partition's stream time
    scored_at: float

    def encode(self) -> bytes:
        return self.entry(self.score, self.model_version, self.event_time, self.scored_at)

    @staticmethod
    def entry(score: float, model_version: str, event_time: float, scored_at: float) -> bytes:
        """The stored form of a prediction, from its values (the hot path: no object built)."""
        return f"{score!r} {event_time!r} {scored_at!r} {model_version}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> LoggedPrediction:
        score, event_time, scored_at, model_version = raw.decode("utf-8").split(" ", 3)
        return cls(float(score), model_version, float(event_time), float(scored_at))


def logged_event_time(raw: bytes) -> float | None:
    """The event time of a stored entry, reading only its second field (the expiry sweep's check)."""
    parts = raw.split(b" ", 2)
    if len(parts) < 3:
        return None
    try:
        value = float(parts[1])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def joined_label(label: Label, prediction: LoggedPrediction, transaction_id: str) -> dict[str, Any]:
    """A label joined with its prediction: what the monitoring aggregator counts."""
    return {
        "kind": "label",
        "transaction_id": transaction_id,
        "label": label.label,
        "labeled_at": label.labeled_at,
        "score": prediction.score,
        "model_version": prediction.model_version,
        "scored_at": prediction.scored_at,
    }
