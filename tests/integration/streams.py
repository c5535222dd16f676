"""Generated input streams for the integration tests, with their expected outcomes.

Each user's messages take one path (direct, unkeyed, wrong key, wrong
partition), so the order in which the worker sees them is the order we sent
them, and the brute-force oracle can replay them in that order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from tests.oracle import Oracle

H = 3600.0
D = 86400.0


def owner_partition(user_id: str, partitions: int) -> int:
    return int(murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class Message:
    key: bytes | None
    value: bytes
    partition: int | None
    user: str | None = None  # set for valid transactions
    txn: dict[str, Any] | None = None  # the validated view (defaults applied)
    invalid: str | None = None  # expected error_type for invalid messages


@dataclass
class Stream:
    messages: list[Message] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def add_tx(
        self,
        user: str,
        path: str,
        partitions: int,
        txid: str,
        ts: float,
        amount: float,
        merchant: str,
        **extra: Any,
    ) -> None:
        body: dict[str, Any] = {
            "transaction_id": txid,
            "user_id": user,
            "amount": amount,
            "merchant_id": merchant,
            "timestamp": ts,
            **extra,
        }
        owner = owner_partition(user, partitions)
        key: bytes | None
        if path == "direct":
            key, partition = user.encode(), owner
        elif path == "unkeyed":
            key, partition = None, 0
        elif path == "wrong-key":
            key, partition = b"someone-else", 1 % partitions
        elif path == "wrong-partition":
            key, partition = user.encode(), (owner + 1) % partitions
        else:
            raise ValueError(path)
        txn = {
            "transaction_id": txid,
            "user_id": user,
            "amount": float(amount),
            "merchant_id": merchant,
            "merchant_category": extra.get("merchant_category") or "unknown",
            "timestamp": float(ts),
            "is_online": bool(extra.get("is_online") or False),
        }
        self.messages.append(Message(key, orjson.dumps(body), partition, user, txn))
        if user not in self.users:
            self.users.append(user)

    def add_invalid(self, key: bytes | None, value: bytes, partition: int, error_type: str) -> None:
        self.messages.append(Message(key, value, partition, invalid=error_type))


def crafted_user(stream: Stream, user: str, path: str, partitions: int, base: float) -> None:
    """Window edges, ties, out-of-order, duplicates, late events and eviction for one user."""
    add = stream.add_tx
    p = partitions
    add(user, path, p, f"{user}-a", base, 10.0, "m1", merchant_category="grocery")
    add(user, path, p, f"{user}-b", base + H, 20.0, "m2")  # 1h edge: a is out of b's 1h window
    add(user, path, p, f"{user}-c", base + H, 20.0, "m3", is_online=True)  # tie with b
    add(user, path, p, f"{user}-d", base + H / 2, 5.0, "m1")  # out of order, within lateness
    add(user, path, p, f"{user}-b", base + H, 999.0, "m9")  # duplicate of b: b's record again
    add(user, path, p, f"{user}-e", base + D, 7.0, "m4")  # 24h edge: a is out of e's 24h window
    add(user, path, p, f"{user}-f", base + D - H - 0.5, 1.0, "m5")  # late: < M - L
    add(user, path, p, f"{user}-g", base + D - H, 2.0, "m5")  # exactly M - L: accepted
    add(user, path, p, f"{user}-a", base, 10.0, "m1")  # duplicate of a, older than M - L: LateEvent
    add(user, path, p, f"{user}-h", base + D + 2 * H, 30.0, "m6")  # evicts a, d, b, c (ts <= M-24h-L)
    add(user, path, p, f"{user}-a", base + D + 2 * H, 11.0, "m1")  # a's id again: evicted, so new
    add(user, path, p, f"{user}-i", base + D + 2 * H + 0.25, 30.0, "m6")  # equal amounts around


def random_user(
    stream: Stream, rng: random.Random, user: str, path: str, partitions: int, base: float, n: int
) -> None:
    ts = base
    ids: list[str] = []
    for k in range(n):
        roll = rng.random()
        if roll < 0.1 and ids:
            txid = rng.choice(ids)  # duplicate (maybe republished, maybe late, maybe new again)
        else:
            txid = f"{user}-{k}"
            ids.append(txid)
        step = rng.choice([0.0, 0.5, 30.0, 600.0, 1800.0, H, 4 * H])
        ts += step
        jitter = rng.choice([0.0, 0.0, 0.0, -60.0, -1800.0, -H, -H - 1])  # some late
        amount = rng.choice([5.0, 12.5, 12.5, 99.99, 250.0, 0.0, 1234.56])
        stream.add_tx(user, path, partitions, txid, max(1.0, ts + jitter), amount, f"m{rng.randrange(6)}")
    # A last, plainly accepted transaction, so every user ends on a record.
    stream.add_tx(user, path, partitions, f"{user}-last", ts + 1.0, 1.0, "m0")


def changed(base: dict[str, Any], **changes: Any) -> bytes:
    """``base`` as JSON with ``changes`` applied (``...`` removes the field)."""
    body = dict(base)
    for k, v in changes.items():
        if v is ...:
            body.pop(k)
        else:
            body[k] = v
    return orjson.dumps(body)


def invalid_messages(stream: Stream, partitions: int, now: float) -> None:
    good = {
        "transaction_id": "x",
        "user_id": "bad-user",
        "amount": 1.0,
        "merchant_id": "m",
        "timestamp": now - 10,
    }

    def variant(**changes: Any) -> bytes:
        return changed(good, **changes)

    cases: list[tuple[bytes | None, bytes, str]] = [
        (b"k-decode", b"{not json", "DecodeError"),
        (b"k-array", b"[1, 2]", "DecodeError"),
        (None, b'{"amount": NaN}', "DecodeError"),
        (b"bad-user", variant(amount="12"), "ValidationError"),
        (b"bad-user", variant(amount=-1), "ValidationError"),
        (b"bad-user", variant(transaction_id=...), "ValidationError"),
        (b"bad-user", variant(timestamp=now + 3600), "ValidationError"),
        (b"bad-user", variant(is_online="yes"), "ValidationError"),
        (b"bad-user", variant(user_id="u" * 129), "ValidationError"),
        (b"\xff\xfe", b"\xff\xfe\x00", "DecodeError"),
    ]
    for i, (key, value, error_type) in enumerate(cases):
        stream.add_invalid(key, value, i % partitions, error_type)


def replay(stream: Stream) -> tuple[Oracle, set[str]]:
    """The oracle after the whole stream in order, and the ids of the transactions it accepted."""
    oracle = Oracle()
    accepted: set[str] = set()
    for m in stream.messages:
        if m.txn is None:
            continue
        verdict, _ = oracle.process(m.txn)
        if verdict != "late":
            accepted.add(m.txn["transaction_id"])
    return oracle, accepted
