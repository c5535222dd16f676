"""The published schemas, as Faust records: what Velocity writes and serves.

* :class:`UserFeatures` -- a record on ``ml-features`` (SPEC 4, 5). A
  downstream Faust app reads the topic with
  ``app.topic("ml-features", value_type=UserFeatures)``.
* :class:`FeaturesLookup` -- the body of ``GET /features/{user_id}`` (SPEC 7):
  the same fields plus ``as_of``.
* :class:`DeadLetter` -- a record on the dead-letter topic (SPEC 6).

They serialize to flat JSON objects (no Faust metadata field). The window
(``tables/window.py``, pure) computes the values; :meth:`UserFeatures.from_values`
wraps them without Faust's per-field ``__init__`` (the hot path builds one
per transaction), and :meth:`UserFeatures.encode` is one orjson call.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import faust
import orjson

from records.errors import ErrorType

_R = TypeVar("_R", bound="_FlatRecord")


class _FlatRecord(faust.Record, abstract=True, serializer="json", include_metadata=False):
    """A record that the pipeline builds from already-checked values and encodes with orjson."""

    field_names: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.field_names = tuple(cls._options.fields)

    @classmethod
    def from_values(cls: type[_R], values: dict[str, Any]) -> _R:
        """The record holding ``values`` (exactly its fields; checked by the unit tests, not here)."""
        record = cls.__new__(cls)
        record.__dict__.update(values)
        return record

    @staticmethod
    def encode_values(values: dict[str, Any]) -> bytes:
        """What ``from_values(values).encode()`` gives, without building the record (the hot path)."""
        return orjson.dumps(values)

    def encode(self) -> bytes:
        """The flat JSON object of the record's fields."""
        fields = self.__dict__
        if len(fields) != len(self.field_names):  # built by Faust's __init__: it keeps bookkeeping there
            fields = {name: fields[name] for name in self.field_names}
        return orjson.dumps(fields)


class UserFeatures(_FlatRecord):
    """One feature record, evaluated at the transaction's own timestamp (SPEC 4)."""

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


class FeaturesLookup(UserFeatures):
    """A lookup's answer (SPEC 7): the features evaluated at ``as_of``."""

    as_of: float


#: A dead letter keeps at most this much of the original value: JSON-escaped (up to 6 bytes per
#: byte) it stays under Kafka's default 1,000,000-byte request limit.
MAX_DLQ_RAW_BYTES = 64 * 1024
#: ... and of the original key (no valid user id is longer than 512 bytes).
MAX_DLQ_KEY_BYTES = 1024


class DeadLetter(_FlatRecord):
    """A message that could not be accepted (SPEC 6)."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_key: str | None
    error_type: ErrorType
    error_message: str
    failed_at: str
    raw_value: str
    # Ours, beyond SPEC 6: a value longer than MAX_DLQ_RAW_BYTES is kept cut (a dead letter must fit
    # in a Kafka message, or its send would fail and stop the worker); these say so.
    raw_value_bytes: int = 0
    raw_value_truncated: bool = False

    @classmethod
    def for_message(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        error_type: ErrorType,
        error_message: str,
        failed_at: str,
        raw_value: bytes | None,
        raw_size: int | None = None,
    ) -> DeadLetter:
        """The dead letter of one rejected message, bytes decoded as UTF-8 with replacement.

        ``raw_size``: the original value's size when ``raw_value`` was cut already (the re-keying hop).
        """
        raw = raw_value or b""
        size = len(raw) if raw_size is None else raw_size
        return cls.from_values(
            {
                "original_topic": topic,
                "original_partition": partition,
                "original_offset": offset,
                "original_key": None if key is None else key[:MAX_DLQ_KEY_BYTES].decode("utf-8", "replace"),
                "error_type": error_type,
                "error_message": error_message,
                "failed_at": failed_at,
                "raw_value": raw[:MAX_DLQ_RAW_BYTES].decode("utf-8", "replace"),
                "raw_value_bytes": size,
                "raw_value_truncated": size > MAX_DLQ_RAW_BYTES or len(raw) > MAX_DLQ_RAW_BYTES,
            }
        )
