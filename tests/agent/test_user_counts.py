"""UserCounts (tables/user_state.py): exact user counts, computed a bounded slice per event-loop turn."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from tables.user_state import UserCounts
from tables.window import chunk_key, head_key

OFFSET_KEY = b"__faust\0offset__"


class FakeDB:
    """Keys in a dict; ``keys()`` iterates a snapshot taken when it is called, as a RocksDB iterator does."""

    def __init__(self, keys: list[bytes]) -> None:
        self.data = dict.fromkeys(keys, b"")

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.data))


def users(prefix: str, n: int, chunks: int = 0) -> list[bytes]:
    keys = [head_key(f"{prefix}{i}") for i in range(n)]
    keys += [chunk_key(f"{prefix}{i}", c) for i in range(n) for c in range(chunks)]
    return keys


async def test_counts_heads_only_and_yields_between_slices() -> None:
    dbs = {0: FakeDB([*users("a", 12_000, chunks=1), OFFSET_KEY]), 1: FakeDB(users("b", 7))}
    counts = UserCounts(lambda: dbs, lambda: OFFSET_KEY)
    counts.KEYS_PER_TURN = 1000
    task = asyncio.ensure_future(counts.recount([0, 1]))
    turns = 0
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    assert await task is True
    assert counts.complete and counts.total() == 12_007
    assert turns >= 24  # 24,001 keys in partition 0, 1,000 a turn: the loop ran in between


async def test_users_created_while_counting_are_counted_once() -> None:
    dbs = {0: FakeDB(users("a", 3000)), 1: FakeDB(users("b", 10))}
    counts = UserCounts(lambda: dbs, lambda: None)
    counts.KEYS_PER_TURN = 500
    counts.on_rebalance()
    task = asyncio.ensure_future(counts.recount([0, 1]))
    await asyncio.sleep(0)  # partition 0's snapshot is taken, its count under way
    for i in range(5):  # the agent creates users in both partitions meanwhile
        dbs[0].data[head_key(f"new-a{i}")] = b""
        counts.on_new_user(0)
        dbs[1].data[head_key(f"new-b{i}")] = b""  # partition 1 not started: its snapshot will have them
        counts.on_new_user(1)
    assert await task is True
    assert counts.total() == 3000 + 5 + 10 + 5
    counts.on_new_user(1)  # after the count: counted at once
    assert counts.total() == 3021


async def test_a_rebalance_abandons_the_count_and_keeps_the_last_figure() -> None:
    dbs = {0: FakeDB(users("a", 5000))}
    counts = UserCounts(lambda: dbs, lambda: None)
    counts.KEYS_PER_TURN = 100
    assert await counts.recount([0]) is True and counts.total() == 5000
    counts.on_rebalance()
    task = asyncio.ensure_future(counts.recount([0]))
    await asyncio.sleep(0)
    counts.on_rebalance()
    assert await task is False
    assert not counts.complete and counts.total() == 5000  # the last complete figure
