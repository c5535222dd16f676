"""The export command's pure parts: options, labels, CSV values (no Kafka)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from app.export import (
    COLUMNS,
    ExportError,
    Labels,
    _csv_value,
    check_range,
    label_from_message,
    load_labels_csv,
    parse_label,
    parse_partitions,
)
from tests.oracle import RECORD_FIELDS


def test_columns_are_the_spec_record_without_computed_at_then_the_label() -> None:
    assert list(COLUMNS) == [*RECORD_FIELDS, "label"]


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        (None, [0, 1, 2, 3]),
        ("", [0, 1, 2, 3]),
        ("2", [2]),
        ("0,2", [0, 2]),
        ("1-3", [1, 2, 3]),
        ("3, 0-1", [0, 1, 3]),
    ],
)
def test_partitions(spec: str | None, want: list[int]) -> None:
    assert parse_partitions(spec, 4) == want


@pytest.mark.parametrize("spec", ["4", "-1", "a", "3-1", "1-", "0,,1"])
def test_bad_partitions(spec: str) -> None:
    with pytest.raises(ExportError):
        parse_partitions(spec, 4)


def test_range() -> None:
    assert check_range(None, None) == (-math.inf, math.inf)
    assert check_range(1.0, 2.0) == (1.0, 2.0)
    for low, high in [(2.0, 2.0), (3.0, 2.0), (math.nan, None)]:
        with pytest.raises(ExportError):
            check_range(low, high)


def test_labels() -> None:
    assert [parse_label(v) for v in (0, 1, 1.0, True, "1", " true ", "FALSE", "0")] == [
        0,
        1,
        1,
        1,
        1,
        1,
        0,
        0,
    ]
    for bad in (2, -1, 0.5, "yes", None, "", [1]):
        with pytest.raises(ValueError):
            parse_label(bad)
    assert label_from_message(orjson.dumps({"transaction_id": "t", "label": 1, "labeled_at": 5})) == (
        "t",
        1,
        5,
    )
    assert label_from_message(orjson.dumps({"transaction_id": "t", "label": 0})) == ("t", 0, None)
    for junk in (
        b"",
        b"{",
        b"[]",
        orjson.dumps({"label": 1}),
        orjson.dumps({"transaction_id": "", "label": 1}),
        orjson.dumps({"transaction_id": "t", "label": 3}),
        orjson.dumps({"transaction_id": "t", "label": 1, "labeled_at": "x"}),
    ):
        assert label_from_message(junk) is None, junk


def test_the_latest_label_wins(tmp_path: Path) -> None:
    labels = Labels(tmp_path / "labels")
    try:
        labels.put("t", 1, 10.0)
        labels.put("t", 0, 5.0)  # older: ignored
        assert labels.get("t") == 1
        labels.put("t", 0, 20.0)
        assert labels.get("t") == 0 and labels.count == 1 and labels.get("other") is None
        csv_path = tmp_path / "l.csv"
        csv_path.write_text("label,transaction_id\n1,a\n0,b\n0,a\n")
        load_labels_csv(str(csv_path), labels)
        assert (labels.get("a"), labels.get("b"), labels.count) == (0, 0, 3)
        csv_path.write_text("id,label\n1,a\n")
        with pytest.raises(ExportError, match="needs a header"):
            load_labels_csv(str(csv_path), labels)
        csv_path.write_bytes(b"transaction_id,label\n\xff\xfe,1\n")
        with pytest.raises(ExportError, match="cannot read labels file"):
            load_labels_csv(str(csv_path), labels)
    finally:
        labels.close()


def test_csv_values_read_back_exactly() -> None:
    for value in (0.1, 1e-300, 123456789.123456789, 5e-324, 1e12 - 0.0001):
        assert float(_csv_value(value)) == value
    assert [_csv_value(v) for v in (None, True, False, 3, "a,b")] == ["", "true", "false", "3", "a,b"]
