"""The traffic model (app/simulator.py): injected drift, labels of both classes, unkeyed labels."""

from __future__ import annotations

from typing import Any

import pytest

from app.simulator import MAX_AMOUNT, Label, TrafficConfig, TrafficModel

NOW = 1_800_000_000.0


class RecordingModel(TrafficModel):
    """Remembers which transactions came from a fraud burst (as the test's own ground truth)."""

    def __init__(self, config: TrafficConfig) -> None:
        super().__init__(config)
        self.burst_ids: set[str] = set()

    def burst(self, now_s: float) -> list[dict[str, Any]]:
        out = super().burst(now_s)
        self.burst_ids.update(tx["transaction_id"] for tx in out)
        return out


def config(**kw: Any) -> TrafficConfig:
    base: dict[str, Any] = {
        "users": 400,
        "heavy_users": 2,
        "fraud_burst_every": 300,
        "seed": 5,
        "run_id": "t",
    }
    return TrafficConfig(**(base | kw))


def run(model: TrafficModel, batches: int, size: int = 200, t0: float = NOW) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(batches):
        out.extend(model.take(size, t0 + i))
    return out


def without_amount(tx: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tx.items() if k != "amount"}


# --------------------------------------------------------------------------- drift


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_drift_multiplies_the_amounts_of_exactly_the_segment_users_from_its_start(factor: float) -> None:
    plain = TrafficModel(config(drift_factor=factor))
    drifted = TrafficModel(config(drift_factor=factor))
    before_plain, before_drifted = run(plain, 10), run(drifted, 10)
    assert before_plain == before_drifted  # nothing drifts before the start
    drifted.start_drift()
    after_plain, after_drifted = run(plain, 30, t0=NOW + 10), run(drifted, 30, t0=NOW + 10)

    # The same transactions: drift moves no random draw, only amounts change.
    assert [without_amount(tx) for tx in after_plain] == [without_amount(tx) for tx in after_drifted]
    in_segment = out_of_segment = 0
    for base, tx in zip(after_plain, after_drifted, strict=True):
        if drifted.in_drift_segment(tx["user_id"]):
            in_segment += 1
            # Both are rounded to cents from the same draw: equal up to the rounding.
            assert tx["amount"] == pytest.approx(
                min(base["amount"] * factor, MAX_AMOUNT), abs=0.005 * factor + 0.006
            )
            assert tx["amount"] != base["amount"] or base["amount"] == MAX_AMOUNT
        else:
            out_of_segment += 1
            assert tx["amount"] == base["amount"]
    assert in_segment > 500 and out_of_segment > 500  # both kinds were exercised


def test_drifted_amounts_stay_under_the_cap() -> None:
    plain = TrafficModel(config(drift_factor=10_000.0))
    drifted = TrafficModel(config(drift_factor=10_000.0))
    drifted.start_drift()
    capped = 0
    for base, tx in zip(run(plain, 20), run(drifted, 20), strict=True):
        assert tx["amount"] <= MAX_AMOUNT
        if drifted.in_drift_segment(tx["user_id"]):
            expected = min(base["amount"] * 10_000.0, MAX_AMOUNT)
            assert tx["amount"] == pytest.approx(expected, abs=0.005 * 10_000.0 + 0.006)
            capped += tx["amount"] == MAX_AMOUNT
    assert capped > 100


def test_stopping_drift_restores_the_plain_amounts() -> None:
    plain, drifted = TrafficModel(config()), TrafficModel(config())
    drifted.start_drift()
    run(plain, 5), run(drifted, 5)
    drifted.stop_drift()
    assert run(plain, 5, t0=NOW + 5) == run(drifted, 5, t0=NOW + 5)


def test_the_segment_is_fixed_by_the_seed() -> None:
    users = [f"user-{k:06d}" for k in range(2000)] + ["heavy-00", "heavy-01"]
    a, b = TrafficModel(config(seed=5)), TrafficModel(config(seed=5, users=10))
    other = TrafficModel(config(seed=6))
    segment = {u for u in users if a.in_drift_segment(u)}
    assert segment == {u for u in users if b.in_drift_segment(u)}  # not tied to the user count or draws
    assert segment != {u for u in users if other.in_drift_segment(u)}


@pytest.mark.parametrize("share", [0.25, 0.1, 0.6])
def test_the_segment_holds_about_the_requested_share_of_users(share: float) -> None:
    model = TrafficModel(config(users=20_000, heavy_users=400, heavy_share=0.001, drift_segment=share))
    regular = [u for u in model.user_ids if u.startswith("user-")]
    heavy = [u for u in model.user_ids if u.startswith("heavy-")]
    assert len(regular) == 20_000 and len(heavy) == 400
    assert sum(map(model.in_drift_segment, regular)) / len(regular) == pytest.approx(share, abs=0.015)
    # Heavy users are not left out: they are in the segment in proportion too.
    assert sum(map(model.in_drift_segment, heavy)) / len(heavy) == pytest.approx(share, abs=0.1)


def test_no_segment_and_everyone_in_the_segment() -> None:
    none, everyone = TrafficModel(config(drift_segment=0.0)), TrafficModel(config(drift_segment=1.0))
    assert not any(map(none.in_drift_segment, none.user_ids))
    assert all(map(everyone.in_drift_segment, everyone.user_ids))


# --------------------------------------------------------------------------- labels


def test_burst_transactions_are_all_labelled_1_and_negatives_are_only_regular_ones() -> None:
    model = RecordingModel(config(label_negatives=0.05))
    txs = run(model, 100)
    labels = model.take_labels()
    ids = [tx["transaction_id"] for tx in txs]
    positives = [label.transaction_id for label in labels if label.label == 1]
    negatives = [label.transaction_id for label in labels if label.label == 0]
    assert model.bursts > 50 and len(model.burst_ids) == model.bursts * model.config.fraud_burst_size
    assert sorted(positives) == sorted(model.burst_ids)  # every burst transaction once, nothing else
    assert not set(negatives) & model.burst_ids
    assert len(set(negatives)) == len(negatives)
    assert {label.label for label in labels} == {0, 1}
    regular = [tid for tid in ids if tid not in model.burst_ids]
    assert set(negatives) <= set(regular)
    assert len(negatives) / len(regular) == pytest.approx(0.05, abs=0.006)
    # Each label names the user of its transaction.
    user_of = {tx["transaction_id"]: tx["user_id"] for tx in txs}
    assert all(label.user_id == user_of[label.transaction_id] for label in labels)


@pytest.mark.parametrize("share", [0.02, 0.3])
def test_negative_labels_are_about_the_requested_share_of_regular_transactions(share: float) -> None:
    model = TrafficModel(config(fraud_burst_every=0, label_negatives=share))
    run(model, 150)  # 30,000 regular transactions
    labels = model.take_labels()
    assert all(label.label == 0 for label in labels)
    assert len(labels) / 30_000 == pytest.approx(share, rel=0.1)


def test_without_negatives_only_fraud_is_labelled() -> None:
    model = RecordingModel(config())  # the model's default: no negatives
    run(model, 20)
    labels = model.take_labels()
    assert labels and all(label.label == 1 and label.keyed for label in labels)
    assert {label.transaction_id for label in labels} == model.burst_ids


def test_labels_come_in_generation_order_and_are_taken_once() -> None:
    model = TrafficModel(config(label_negatives=0.1))
    txs = run(model, 20)
    first = model.take_labels()
    position = {tx["transaction_id"]: i for i, tx in enumerate(txs)}
    assert [position[label.transaction_id] for label in first] == sorted(
        position[label.transaction_id] for label in first
    )
    assert model.take_labels() == []
    run(model, 1)
    assert model.take_labels()


def test_a_regular_transactions_label_is_recorded_by_the_time_it_is_yielded() -> None:
    model = TrafficModel(config(fraud_burst_every=0, label_negatives=1.0))
    for tx in model.take(5, NOW):
        assert model.labels[-1] == Label(tx["transaction_id"], tx["user_id"], 0, True)


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_about_the_requested_share_of_labels_is_unkeyed(share: float) -> None:
    model = RecordingModel(config(label_negatives=0.2, unkeyed_labels=share))
    run(model, 50)
    labels = model.take_labels()
    assert len(labels) > 2000
    unkeyed = [label for label in labels if not label.keyed]
    assert len(unkeyed) / len(labels) == pytest.approx(share, abs=0.03)
    assert {label.label for label in unkeyed} == {0, 1}  # either class may go without a key


def test_label_options_change_no_transaction_and_labels_follow_the_seed() -> None:
    plain = TrafficModel(config())
    labelled = TrafficModel(config(label_negatives=0.3, unkeyed_labels=0.5))
    again = TrafficModel(config(label_negatives=0.3, unkeyed_labels=0.5))
    assert run(plain, 20) == run(labelled, 20) == run(again, 20)
    assert labelled.take_labels() == again.take_labels()
    # Which transactions are labelled does not depend on the unkeyed share.
    keyed_only = TrafficModel(config(label_negatives=0.3))
    run(keyed_only, 20)
    relabelled = TrafficModel(config(label_negatives=0.3, unkeyed_labels=0.5))
    run(relabelled, 20)
    assert [(x.transaction_id, x.label) for x in keyed_only.take_labels()] == [
        (x.transaction_id, x.label) for x in relabelled.take_labels()
    ]


def test_drift_changes_no_label() -> None:
    plain, drifted = TrafficModel(config(label_negatives=0.1)), TrafficModel(config(label_negatives=0.1))
    drifted.start_drift()
    run(plain, 20), run(drifted, 20)
    assert plain.take_labels() == drifted.take_labels()
