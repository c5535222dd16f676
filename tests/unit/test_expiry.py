"""SPEC 4 "Expiry": the floor arithmetic, the head reader, stream times, and the sweep over a real RocksDB."""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction
from pathlib import Path

import orjson
import pytest
import rocksdict
from hypothesis import given
from hypothesis import strategies as st

from records.transaction import Transaction
from tables.expiry import StreamTimes, Sweeper, expiry_floor, head_latest_ts, stream_time_key
from tables.window import UserWindow

finite = st.floats(min_value=1.0, max_value=4e9, allow_nan=False, allow_infinity=False)
ttls = st.one_of(st.integers(min_value=1, max_value=10**7).map(float), st.floats(0.001, 1e7))


@given(stream_time=finite, ttl=ttls, m=finite)
def test_the_floor_decides_exactly_like_real_arithmetic(stream_time: float, ttl: float, m: float) -> None:
    expired = m < expiry_floor(stream_time, ttl)
    assert expired == (Fraction(m) < Fraction(stream_time) - Fraction(ttl))


def test_a_user_exactly_at_the_floor_is_kept() -> None:
    floor = expiry_floor(5000.0, 1000.0)
    assert not 4000.0 < floor
    assert math.nextafter(4000.0, 0.0) < floor


def window_with(*timestamps: float) -> UserWindow:
    w = UserWindow("u", lateness_s=3600.0, chunk_rows=4)
    for i, ts in enumerate(timestamps):
        w.apply(Transaction(f"t{i}", "u", 1.5, "m", "c", ts, False), computed_at_s=ts)
    return w


@pytest.mark.parametrize(
    "timestamps", [(1_700_000_000.0,), (1.5, 2.25), (1e9, 1e9 + 0.1, 1e9 + 7, 1e9 + 8, 1e9 + 9)]
)
def test_head_latest_ts_reads_what_the_window_stored(timestamps: tuple[float, ...]) -> None:
    w = window_with(*timestamps)
    assert head_latest_ts(w.encode_head()) == w.latest_ts_s == max(timestamps)


def test_head_latest_ts_falls_back_to_parsing_other_layouts() -> None:
    assert head_latest_ts(orjson.dumps({"next_seq": 1, "latest_ts_s": 12.5, "v": 1})) == 12.5
    assert head_latest_ts(orjson.dumps({"v": 1, "latest_ts_s": None, "tail": []})) is None
    assert head_latest_ts(b"not json") is None


def test_stream_time_is_read_once_advances_only_forward_and_is_written_when_it_moved() -> None:
    store = {stream_time_key(3): orjson.dumps(1000.0)}
    reads: list[bytes] = []

    def read(key: bytes) -> bytes | None:
        reads.append(key)
        return store.get(key)

    times = StreamTimes(ttl_s=100.0)
    assert times.get(3, read) == 1000.0
    assert times.floor(3, read) == 900.0
    assert reads == [stream_time_key(3)]  # cached after the first read
    assert times.is_expired(3, 899.5, read) and not times.is_expired(3, 900.0, read)
    times.advance(3, 950.0, read)
    assert times.take_write(3) is None  # older than the stream time: nothing moved
    times.advance(3, 1200.0, read)
    assert times.take_write(3) == (stream_time_key(3), orjson.dumps(1200.0))
    assert times.take_write(3) is None
    assert times.floor(3, read) == 1100.0
    times.clear()
    assert times.get(3, read) == 1000.0  # the store again (nothing wrote it here)
    assert len(reads) == 2


def test_without_a_ttl_nothing_expires() -> None:
    times = StreamTimes(ttl_s=0.0)
    assert times.floor(0, lambda key: orjson.dumps(1e9)) is None
    assert not times.is_expired(0, 1.0, lambda key: orjson.dumps(1e9))


def test_a_partition_without_a_stored_stream_time_starts_at_its_first_accepted_timestamp() -> None:
    times = StreamTimes(ttl_s=10.0)
    assert times.floor(1, lambda key: None) is None
    times.advance(1, 500.0, lambda key: None)
    assert times.floor(1, lambda key: None) == 490.0


class Store:
    """A real RocksDB laid out like one partition of the user-state table."""

    OFFSET_KEY = b"__faust\x00offset__"

    def __init__(self, path: Path) -> None:
        self.db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))

    def add_user(self, user_id: str, *timestamps: float) -> UserWindow:
        w = window_with(*timestamps)
        self.db[user_id.encode()] = w.encode_head()
        for no in w.chunks:  # a chunk value is never read by the sweep
            self.db[user_id.encode() + b"\xff" + str(no).encode()] = b"[]"
        return w


def make_sweeper(store: Store, floor: float | None) -> Sweeper:
    return Sweeper(
        open_dbs=lambda: {0: store.db},
        floor=lambda partition, db: floor,
        offset_key=lambda: Store.OFFSET_KEY,
    )


def test_the_sweep_queues_exactly_the_users_below_the_floor(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.db[Store.OFFSET_KEY] = b"123"
    store.db[stream_time_key(0)] = orjson.dumps(5000.0)
    expired = {f"old{i:03d}" for i in range(40)}
    for user in expired:
        store.add_user(user, 100.0, 200.0, 300.0, 400.0, 500.0)  # a chunk too
    store.add_user("edge", 1000.0)  # M == floor: kept
    for i in range(30):
        store.add_user(f"new{i:03d}", 2000.0 + i)
    sweeper = make_sweeper(store, floor=1000.0)
    sweeper.KEYS_PER_TURN = 7  # many turns
    assert asyncio.run(sweeper.sweep([0]))
    assert set(sweeper.queued[0]) == expired
    popped = [sweeper.pop(0) for _ in range(41)]
    assert popped[:40] == sorted(expired) and popped[40] is None  # in key order, each once
    assert not sweeper.has_queued(0)


def test_a_partition_where_nothing_fell_behind_since_the_last_pass_is_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.add_user("a", 1500.0)
    floor: list[float] = [1000.0]
    sweeper = Sweeper(lambda: {0: store.db}, lambda p, db: floor[0], lambda: None)
    assert asyncio.run(sweeper.sweep([0])) and sweeper.last_pass_keys == 1
    floor[0] = 1400.0  # still below the oldest M kept (1500)
    assert asyncio.run(sweeper.sweep([0])) and sweeper.last_pass_keys == 0
    sweeper.note_latest(0, 1200.0)  # a user accepted with an old timestamp since
    store.add_user("b", 1200.0)
    assert asyncio.run(sweeper.sweep([0])) and sweeper.last_pass_keys == 2
    assert set(sweeper.queued[0]) == {"b"}


def test_a_rebalance_stops_a_pass_and_drops_the_queues(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    for i in range(50):
        store.add_user(f"u{i:02d}", 10.0)
    sweeper = make_sweeper(store, floor=100.0)
    sweeper.KEYS_PER_TURN = 10

    async def scenario() -> bool:
        task = asyncio.ensure_future(sweeper.sweep([0]))
        await asyncio.sleep(0)  # the first turn ran
        sweeper.on_rebalance()
        return await task

    assert asyncio.run(scenario()) is False
    assert sweeper.queued == {} and sweeper.passes == 0


def test_standby_and_unknown_partitions_are_not_swept(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.add_user("a", 10.0)
    assert asyncio.run(make_sweeper(store, floor=100.0).sweep([]))
    no_time = make_sweeper(store, floor=None)
    assert asyncio.run(no_time.sweep([0])) and no_time.queued == {}


def test_a_full_queue_makes_the_pass_wait_for_deletions_and_tick_an_idle_partition(tmp_path: Path) -> None:
    """The pass goes on from its last key once the hot path has made room: one pass, every user once."""
    store = Store(tmp_path / "db")
    expired = [f"x{i:02d}" for i in range(20)]
    for user in expired:
        store.add_user(user, 10.0)
    store.add_user("zz-kept", 500.0)
    ticks: list[int] = []
    deleted: list[str] = []

    async def tick(partition: int) -> None:
        ticks.append(partition)

    sweeper = Sweeper(lambda: {0: store.db}, lambda p, db: 100.0, lambda: None, send_tick=tick)
    sweeper.KEYS_PER_TURN, sweeper.MAX_QUEUED, sweeper.WAIT_S = 3, 5, 0.001

    async def hot_path() -> None:  # deletes what is queued, but only once a tick has come
        while len(deleted) < len(expired):
            await asyncio.sleep(0.002)
            if ticks:
                while (user := sweeper.pop(0)) is not None:
                    deleted.append(user)

    async def scenario() -> bool:
        drainer = asyncio.ensure_future(hot_path())
        done = await sweeper.sweep([0])
        await asyncio.wait_for(drainer, 5)
        return done

    assert asyncio.run(scenario())
    assert deleted == expired and ticks and set(ticks) == {0}  # a tick per wait with no batch since
    assert sweeper.last_pass_keys == len(expired) + 1
