"""Synthetic card traffic: Zipf-like user activity, realistic amounts, fraud bursts.

Pure Python (no Kafka): :class:`TrafficModel` yields transaction dicts and
records the labels to come (:class:`Label`); the ``simulate`` command
(app/commands.py) paces and produces both.

The transaction stream depends only on the seed (and the run id in the ids):
the label choices draw from random generators of their own, and drift (see
:meth:`TrafficModel.start_drift`) draws nothing, so neither changes which
transactions are generated.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

# category -> (median amount, log-normal sigma, share of online purchases)
CATEGORIES: dict[str, tuple[float, float, float]] = {
    "grocery": (38.0, 0.6, 0.1),
    "restaurants": (27.0, 0.5, 0.05),
    "fuel": (45.0, 0.3, 0.0),
    "online_retail": (52.0, 0.9, 1.0),
    "travel": (310.0, 0.8, 0.7),
    "electronics": (180.0, 0.9, 0.6),
    "pharmacy": (21.0, 0.5, 0.2),
    "entertainment": (16.0, 0.6, 0.8),
}
MERCHANTS_PER_CATEGORY = 200
MAX_AMOUNT = 99_999.0


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    users: int = 1000
    zipf_s: float = 0.7  # activity of the k-th user ~ 1 / k**s
    heavy_users: int = 2  # users that each carry heavy_share of all traffic
    heavy_share: float = 0.05
    out_of_order_share: float = 0.02  # events stamped up to max_delay_s in the past
    max_delay_s: float = 120.0
    fraud_burst_every: int = 5000  # one burst per this many transactions (0: never)
    fraud_burst_size: int = 25
    fraud_burst_span_s: float = 180.0
    seed: int = 7
    run_id: str = ""  # prefix of transaction ids; distinct per run so reruns are not duplicates
    drift_factor: float = 3.0  # once drift is on, amounts of the drift segment's users are multiplied by this
    drift_segment: float = 0.25  # share of users in the drift segment (by a stable hash of seed and user id)
    label_negatives: float = 0.0  # share of regular (non-burst) transactions labelled 0
    unkeyed_labels: float = 0.0  # share of labels to be sent without a key


class Label(NamedTuple):
    """A label to come (SPEC 10): ``label`` 1 for a burst transaction, 0 for a regular one."""

    transaction_id: str
    user_id: str
    label: int
    keyed: bool  # False: sent with no key (SPEC 10 allows key user_id or none)


def hash_share(seed: int, user_id: str) -> float:
    """A stable number in [0, 1) for ``user_id`` under ``seed`` (the same in every process and run)."""
    digest = hashlib.blake2b(f"{seed}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class TrafficModel:
    """Endless stream of transaction dicts stamped around the given clock."""

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        n = max(1, config.users)
        weights = [1.0 / (k**config.zipf_s) for k in range(1, n + 1)]
        self.user_ids = [f"user-{k:06d}" for k in range(n)]
        self.rng.shuffle(self.user_ids)
        heavy = [f"heavy-{k:02d}" for k in range(config.heavy_users)]
        self.user_ids += heavy
        regular_total = sum(weights)
        share = min(config.heavy_share, 0.9 / max(1, len(heavy)))
        heavy_weight = regular_total * share / (1.0 - share * len(heavy)) if heavy else 0.0
        weights += [heavy_weight] * len(heavy)
        self.cum_weights = list(itertools.accumulate(weights))
        # Each user shops mostly at a few favourite categories.
        self._favourites: dict[str, list[str]] = {}
        self._seq = itertools.count()
        self.bursts = 0
        #: The labels generated and not yet taken by :meth:`take_labels`, in generation order.
        self.labels: list[Label] = []
        # Own generators, so label choices never move the transaction stream (nor each other).
        self._negative_rng = random.Random(f"negatives-{config.seed}")
        self._unkeyed_rng = random.Random(f"unkeyed-{config.seed}")
        #: Whether drift is on (:meth:`start_drift`).
        self.drifting = False
        self._segment: dict[str, bool] = {}

    def in_drift_segment(self, user_id: str) -> bool:
        """Whether ``user_id`` is in the drift segment (fixed by the seed; heavy users like any other)."""
        inside = self._segment.get(user_id)
        if inside is None:
            inside = hash_share(self.config.seed, user_id) < self.config.drift_segment
            self._segment[user_id] = inside
        return inside

    def start_drift(self) -> None:
        """From now on, amounts of the drift segment's users are multiplied by ``drift_factor`` (capped)."""
        self.drifting = True

    def stop_drift(self) -> None:
        self.drifting = False

    def _favourite_categories(self, user_id: str) -> list[str]:
        fav = self._favourites.get(user_id)
        if fav is None:
            fav = self.rng.sample(list(CATEGORIES), 3)
            self._favourites[user_id] = fav
        return fav

    def _one(
        self,
        user_id: str,
        now_s: float,
        category: str | None = None,
        amount_scale: float = 1.0,
        ts_s: float | None = None,
    ) -> dict[str, Any]:
        rng = self.rng
        if category is None:
            fav = self._favourite_categories(user_id)
            category = rng.choice(fav) if rng.random() < 0.85 else rng.choice(list(CATEGORIES))
        median, sigma, online_share = CATEGORIES[category]
        if self.drifting and self.in_drift_segment(user_id):
            amount_scale *= self.config.drift_factor
        amount = round(min(median * math.exp(rng.gauss(0.0, sigma)) * amount_scale, MAX_AMOUNT), 2)
        if ts_s is None:
            ts_s = now_s
            if rng.random() < self.config.out_of_order_share:
                ts_s -= rng.uniform(0.0, self.config.max_delay_s)
        return {
            "transaction_id": f"tx-{self.config.run_id or self.config.seed}-{next(self._seq):010d}",
            "user_id": user_id,
            "amount": amount,
            "merchant_id": f"{category}-{rng.randrange(MERCHANTS_PER_CATEGORY):04d}",
            "merchant_category": category,
            "timestamp": round(ts_s, 3),
            "is_online": rng.random() < online_share,
        }

    def burst(self, now_s: float) -> list[dict[str, Any]]:
        """A card-testing / takeover pattern: many merchants, minutes apart, rising amounts."""
        cfg = self.config
        user_id = self.rng.choices(self.user_ids, cum_weights=self.cum_weights)[0]
        self.bursts += 1
        span = cfg.fraud_burst_span_s
        out = []
        for i in range(cfg.fraud_burst_size):
            ts = now_s - span + span * (i + 1) / cfg.fraud_burst_size
            category = self.rng.choice(["electronics", "online_retail", "travel"])
            out.append(self._one(user_id, now_s, category, amount_scale=1.0 + i / 5.0, ts_s=ts))
        self.labels.extend(self._label(tx["transaction_id"], user_id, 1) for tx in out)
        return out

    def _label(self, transaction_id: str, user_id: str, label: int) -> Label:
        share = self.config.unkeyed_labels
        keyed = not (share > 0 and self._unkeyed_rng.random() < share)
        return Label(transaction_id, user_id, label, keyed)

    def take_labels(self) -> list[Label]:
        """The labels generated since the last call (in generation order): the labels to come."""
        labels, self.labels = self.labels, []
        return labels

    def take(self, n: int, now_s: float) -> Iterator[dict[str, Any]]:
        """``n`` regular transactions (and any bursts that fall due), stamped ~``now_s``."""
        cfg = self.config
        users = self.rng.choices(self.user_ids, cum_weights=self.cum_weights, k=n)
        negatives = cfg.label_negatives
        for user_id in users:
            tx = self._one(user_id, now_s)
            if negatives > 0 and self._negative_rng.random() < negatives:
                self.labels.append(self._label(tx["transaction_id"], user_id, 0))
            yield tx
            if cfg.fraud_burst_every and (int(tx["transaction_id"][-10:]) + 1) % cfg.fraud_burst_every == 0:
                yield from self.burst(now_s)
