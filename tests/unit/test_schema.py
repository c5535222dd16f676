"""The published schemas (records/schema.py) against what the window computes and what readers decode."""

from __future__ import annotations

import typing
from types import NoneType, UnionType
from typing import Any

import faust
import orjson
import pytest
from faust.types import Message

from records.schema import DeadLetter, FeaturesLookup, UserFeatures
from records.transaction import Transaction
from tables.window import UserWindow

T0 = 1_700_000_000.0


def window_outputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records and lookups of a small stream, covering null and non-null optional fields."""
    window = UserWindow("carol", 3600.0, chunk_rows=2)
    records = []
    for i, (dt, amount, merchant) in enumerate(
        [(0, 10.0, "m1"), (60, 20.5, "m2"), (30, 3.25, "m1"), (90, 7.0, "m3")]
    ):
        txn = Transaction(f"t{i}", "carol", amount, merchant, "grocery", T0 + dt, i % 2 == 0)
        outcome = window.apply(txn, computed_at_s=T0 + 100)
        assert outcome.features is not None
        records.append(outcome.features)
    lookups = [window.lookup(at, T0 + 100) for at in (None, T0 - 10, T0 + 45)]
    return records, lookups


def conforms(value: Any, annotation: Any) -> bool:
    """``value`` is an instance of the (possibly optional) field annotation; ints are not floats' only."""
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(conforms(value, a) for a in typing.get_args(annotation))
    if annotation is NoneType or annotation is None:
        return value is None
    if annotation is float:
        return isinstance(value, float)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def test_window_records_have_exactly_the_published_fields_and_types() -> None:
    records, lookups = window_outputs()
    fields = typing.get_type_hints(UserFeatures)
    for record in records:
        assert sorted(record) == sorted(UserFeatures.field_names)
        for name, value in record.items():
            assert conforms(value, fields[name]), (name, value, fields[name])
    lookup_fields = typing.get_type_hints(FeaturesLookup)
    assert any(lookup["transaction_id"] is None for lookup in lookups)
    for lookup in lookups:
        assert set(lookup) == set(FeaturesLookup.field_names)
        for name, value in lookup.items():
            assert conforms(value, lookup_fields[name]), (name, value, lookup_fields[name])


def test_encoding_is_the_flat_json_of_the_values() -> None:
    records, lookups = window_outputs()
    for values in records:
        assert orjson.loads(UserFeatures.from_values(values).encode()) == values
        assert UserFeatures.encode_values(values) == UserFeatures.from_values(values).encode()
    for values in lookups:
        assert orjson.loads(FeaturesLookup.from_values(values).encode()) == values
    # A record built by Faust's own __init__ (as a downstream producer would) encodes the same.
    assert orjson.loads(UserFeatures(**records[0]).encode()) == records[0]


def test_a_downstream_faust_app_reads_the_topic_as_user_features() -> None:
    records, _ = window_outputs()
    downstream = faust.App("velocity-downstream-test", autodiscover=False)
    topic = downstream.topic("ml-features", key_type=bytes, value_type=UserFeatures)
    for offset, values in enumerate(records):
        raw = UserFeatures.encode_values(values)  # as the hot path writes it
        message = Message("ml-features", 0, offset, 0.0, 0, [], b"carol", raw, None)
        record = topic.schema.loads_value(downstream, message)
        assert isinstance(record, UserFeatures)
        assert record.asdict() == values
        assert record.tx_count_24h == values["tx_count_24h"]


@pytest.mark.parametrize("record_type", [UserFeatures, FeaturesLookup, DeadLetter])
def test_records_carry_no_faust_metadata(record_type: Any) -> None:
    values = dict.fromkeys(record_type._options.fields, None)
    assert set(orjson.loads(record_type(**values).dumps())) == set(values)
