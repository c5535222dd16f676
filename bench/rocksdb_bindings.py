"""Faust's two RocksDB bindings side by side, on the workload of Velocity's table.

Runs in a venv of its own, never the project's (which has rocksdict only):

    .venv/bin/python -m bench.run --only rocksdb_bindings    # builds the venv once, then runs this
    ~/.cache/velocity/bench-rocksdb-venv/bin/python bench/rocksdb_bindings.py \
        [--users 10000] [--ops 100000] [--restore-keys 100000] [--json]

bench/rocksdb_env.py builds that venv (faust-streaming, rocksdict and
faust-streaming-rocksdb, pinned) and calls this script in it. It imports
nothing of the project.

Faust (faust/stores/rocksdb.py) talks to RocksDB through either ``rocksdict``
(Rust bindings, RocksDB 8; Faust's default when importable, ``USE_ROCKSDICT``)
or ``python-rocksdb`` (the ``rocksdb`` module of ``faust-streaming-rocksdb``,
Cython, RocksDB 6), chosen per table with ``options={"driver": ...}``. This
drives Faust's own :class:`faust.stores.rocksdb.Store` for each driver, in one
process, with the options Faust opens the databases with, on the same
operation sequence:

* ``process``: per transaction, one ``get`` of the user's head (1-4 KB of
  JSON-like bytes), one ``set`` of the new head and, once in
  :data:`CHUNK_EVERY` transactions, the write of a sealed chunk (~8 KB) --
  what ``tables/user_state.py`` does for a transaction that misses its LRU cache.
  It goes through ``Store.get``/``Store.__setitem__`` with a current event set,
  as inside an agent (Faust writes these with one ``put`` each; it does not
  batch them). Users are drawn Zipf-like, as by ``app/simulator.py``, and all
  have a head already (a warm worker).
* ``restore``: ``Store.apply_changelog_batch`` with ``restore_keys`` changelog
  records in batches of 1000 per partition (``Table.recovery_buffer_size``),
  i.e. Faust's recovery path: one ``WriteBatch`` per partition and batch, plus
  the persisted-offset write.
* ``raw_get_put``: the ``process`` sequence straight on the bindings' ``get``/
  ``put`` (no Faust layer), to show how much of the difference Faust's own
  Python overhead hides. It runs on the same database as ``process``, in
  alternating blocks of :data:`PROCESS_BLOCK` transactions, so that both see
  the same memtable flushes and background compactions.

Each round opens fresh databases (one for the restore, then one pre-filled,
untimed, with every user's head through the changelog path) and interleaves
the drivers batch by batch and block by block, so that a noisy neighbour or a
background compaction hits both alike; best of ``rounds``. Figures are per
second of wall time and, steadier on a shared machine, per second of the
calling thread's CPU time (RocksDB's own flush/compaction threads excluded).

The ratio is rocksdict / python-rocksdb (> 1: rocksdict faster). ``--json`` prints
``compare()``'s result as one JSON line, which is what the harness reads.
Installing ``faust-streaming-rocksdb`` has a side effect on Faust with
rocksdict: ``faust.stores.rocksdb.ERRORS_ROCKS_IO_ERROR`` becomes
``rocksdb.errors.RocksIOError`` instead of ``Exception``, so rocksdict's
"lock" errors (plain ``Exception``) are no longer retried on partition
assignment; and every RocksDB table gets a ``rocksdb.BackupEngine``. Hence
the separate venv.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import tempfile
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PARTITIONS = 8
CHUNK_EVERY = 64
RESTORE_BATCH = 1000
PROCESS_BLOCK = 5000
DRIVERS = ("rocksdict", "python-rocksdb")
_CHUNK_SEPARATOR = b"\xff"


def driver_available(driver: str) -> bool:
    try:
        if driver == "rocksdict":
            import rocksdict  # noqa: F401
        else:
            import rocksdb  # noqa: F401
    except ImportError:
        return False
    return True


class _Message:
    """The attributes of a Kafka message that the Store reads."""

    __slots__ = ("key", "offset", "partition", "tp", "value")

    def __init__(self, tp: Any, offset: int, key: bytes, value: bytes | None) -> None:
        self.tp = tp
        self.partition = tp.partition
        self.offset = offset
        self.key = key
        self.value = value


class _Event:
    """Stands for the event being processed (``faust.current_event()``)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: _Message) -> None:
        self.message = message


def _row(rng: random.Random, i: int) -> bytes:
    category = rng.choice(["grocery", "fuel", "travel", "electronics", "restaurants"])
    return (
        f'["tx-7-{rng.getrandbits(32):08x}-{i:010d}",{1.7e9 + rng.random() * 86400:.3f},'
        f'{rng.random() * 300:.2f},"{category}-{rng.randrange(200):04d}","{category}",'
        f"{'true' if rng.random() < 0.3 else 'false'},{i}]"
    ).encode()


def _blob(rng: random.Random, size: int) -> bytes:
    """JSON-like bytes of about ``size`` (compressible like Velocity's heads and chunks)."""
    parts = [b'{"v":1,"last":1700000000.0,"rows":[']
    n = 0
    while sum(map(len, parts)) < size:
        parts.append(_row(rng, n) + b",")
        n += 1
    return b"".join(parts)[:size]


class _Workload:
    """One precomputed operation sequence, identical for every driver."""

    def __init__(self, n_users: int, n_ops: int, restore_keys: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.n_ops = n_ops
        self.users = [f"user-{k:07d}".encode() for k in range(n_users)]
        self.partitions = [zlib.crc32(u) % PARTITIONS for u in self.users]
        weights = [1.0 / (k**0.7) for k in range(1, n_users + 1)]
        self.picks = rng.choices(range(n_users), weights=weights, k=n_ops)
        self.heads = [_blob(rng, rng.randint(1024, 4096)) for _ in range(64)]
        self.chunk = _blob(rng, 8192)
        self.restore = [f"user-r{k:07d}".encode() for k in range(restore_keys)]


@contextmanager
def _current_event(partition: int) -> Iterator[Callable[[int], None]]:
    """Set Faust's current event; the yielded function moves it to another partition."""
    from faust.streams import _current_event as var
    from faust.types import TP

    event = _Event(_Message(TP("bench", partition), 0, b"", b""))

    def move(p: int) -> None:
        event.message.partition = p

    ref: Any = weakref.ref(event)  # Faust types it as a reference to its EventT; ours has what Store reads
    token = var.set(ref)
    try:
        yield move
    finally:
        var.reset(token)


def _open_store(driver: str, datadir: str, name: str) -> Any:
    import faust
    from faust.stores.rocksdb import Store

    app = faust.App(f"rocksdb-bindings-{driver}", datadir=datadir, store="rocksdb://", autodiscover=False)
    table = app.Table(name, key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    return Store(
        "rocksdb://",
        app,
        table,
        table_name=name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        options={"driver": driver},
    )


def _changelog_batches(keys: list[bytes], values: list[bytes]) -> list[list[_Event]]:
    """Changelog records as Faust's recovery hands them over: per partition, 1000 at a time."""
    from faust.types import TP

    per_partition: dict[int, list[_Event]] = {p: [] for p in range(PARTITIONS)}
    for i, key in enumerate(keys):
        p = zlib.crc32(key) % PARTITIONS
        tp = TP("rocksdb-bindings-user-state-changelog", p)
        per_partition[p].append(_Event(_Message(tp, len(per_partition[p]), key, values[i % len(values)])))
    return [
        events[i : i + RESTORE_BATCH]
        for events in per_partition.values()
        for i in range(0, len(events), RESTORE_BATCH)
    ]


def _apply(store: Any, batches: list[list[_Event]]) -> None:
    ident = lambda x: x  # noqa: E731  (Faust's to_key/to_value; identity for raw bytes)
    for batch in batches:
        store.apply_changelog_batch(batch, ident, ident)


class _Clock:
    """Wall time and this thread's CPU time (what the event loop would spend), summed over blocks."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - w0
            self.cpu += time.thread_time() - c0


def _process_block(store: Any, w: _Workload, lo: int, hi: int, move: Callable[[int], None]) -> None:
    users, partitions, heads, chunk, picks = w.users, w.partitions, w.heads, w.chunk, w.picks
    get = store.get
    misses = 0
    for i in range(lo, hi):
        u = picks[i]
        move(partitions[u])
        key = users[u]
        if get(key) is None:
            misses += 1
        store[key] = heads[i & 63]
        if i % CHUNK_EVERY == CHUNK_EVERY - 1:
            store[key + _CHUNK_SEPARATOR + str(i).encode()] = chunk
    assert misses == 0, f"{misses} heads missing"


def _raw_block(dbs: list[Any], w: _Workload, lo: int, hi: int) -> None:
    users, partitions, heads, chunk, picks = w.users, w.partitions, w.heads, w.chunk, w.picks
    for i in range(lo, hi):
        u = picks[i]
        db = dbs[partitions[u]]
        key = users[u]
        db.get(key)
        db.put(key, heads[i & 63])
        if i % CHUNK_EVERY == CHUNK_EVERY - 1:
            db.put(key + _CHUNK_SEPARATOR + str(i).encode(), chunk)


def _close(store: Any) -> None:
    store._dbs.clear()  # Faust never closes its DBs; dropping them does (and releases the lock)
    gc.collect()


def _one_round(drivers: list[str], w: _Workload) -> dict[str, dict[str, float]]:
    """Every driver on the same sequence, interleaved block by block so that noise hits all."""
    datadirs = {d: tempfile.mkdtemp(prefix=f"rocksdb-bindings-{d}-") for d in drivers}
    clocks = {(d, k): _Clock() for d in drivers for k in ("restore", "process", "raw")}
    try:
        # restore: alternate drivers per changelog batch
        stores = {d: _open_store(d, datadirs[d], "restore") for d in drivers}
        for j, batch in enumerate(_changelog_batches(w.restore, w.heads)):
            for d in drivers if j % 2 == 0 else drivers[::-1]:
                with clocks[d, "restore"].timing():
                    _apply(stores[d], [batch])
        for store in stores.values():
            _close(store)
        # process / raw: a warm table (every user has a head), then alternating blocks
        stores = {d: _open_store(d, datadirs[d], "process") for d in drivers}
        warm = _changelog_batches(w.users, w.heads)
        dbs = {}
        for d in drivers:
            _apply(stores[d], warm)
            dbs[d] = [stores[d]._db_for_partition(p) for p in range(PARTITIONS)]
        with _current_event(0) as move:
            for k, lo in enumerate(range(0, w.n_ops, PROCESS_BLOCK)):
                hi = min(lo + PROCESS_BLOCK, w.n_ops)
                for d in drivers if k % 2 == 0 else drivers[::-1]:
                    with clocks[d, "process"].timing():
                        _process_block(stores[d], w, lo, hi, move)
                    with clocks[d, "raw"].timing():
                        _raw_block(dbs[d], w, lo, hi)
        for store in stores.values():
            _close(store)
        dbs.clear()
    finally:
        for path in datadirs.values():
            shutil.rmtree(path, ignore_errors=True)
    out: dict[str, dict[str, float]] = {}
    for d in drivers:
        r, p, raw = clocks[d, "restore"], clocks[d, "process"], clocks[d, "raw"]
        n_restore = len(w.restore)
        out[d] = {
            "process_tx_s": w.n_ops / p.wall,
            "process_tx_cpu_s": w.n_ops / p.cpu,
            "raw_get_put_tx_s": w.n_ops / raw.wall,
            "raw_get_put_tx_cpu_s": w.n_ops / raw.cpu,
            "restore_records_s": n_restore / r.wall,
            "restore_records_cpu_s": n_restore / r.cpu,
        }
    return out


def compare(n_users: int, n_ops: int, restore_keys: int = 100_000, rounds: int = 1) -> dict[str, Any]:
    """Run the workload on each available driver; the best of ``rounds`` per figure.

    Returns ``{"rocksdict": {...}, "python-rocksdb": {...}, "faster": name, ...}``
    with, per driver, ``process_tx_s``, ``raw_get_put_tx_s``, ``restore_records_s``
    (per second of wall time) and the same ``*_cpu_s`` per second of the
    calling thread's CPU time (steadier on a shared machine). A driver that is
    not installed maps to ``{"error": ...}``. ``faster`` judges
    ``process_tx_cpu_s`` (the per-transaction path through Faust's Store, per
    CPU-second: wall-clock rates swing by +-30% between runs on a busy machine).
    """
    w = _Workload(n_users, n_ops, restore_keys)
    out: dict[str, Any] = {}
    runnable = [d for d in DRIVERS if driver_available(d)]
    for d in DRIVERS:
        if d not in runnable:
            pip = "rocksdict" if d == "rocksdict" else "faust-streaming-rocksdb"
            out[d] = {"error": f"{pip} not installed here: run this through python -m bench.rocksdb_env"}
    if runnable:
        for _ in range(max(1, rounds)):
            for d, figures in _one_round(runnable, w).items():
                best = out.setdefault(d, {})
                for name, value in figures.items():
                    best[name] = max(best.get(name, 0.0), value)
    if len(runnable) == len(DRIVERS):
        a, b = out["rocksdict"], out["python-rocksdb"]
        out["ratio_rocksdict_over_python_rocksdb"] = {k: a[k] / b[k] for k in a}
        out["faster"] = max(DRIVERS, key=lambda d: out[d]["process_tx_cpu_s"])
    else:
        out["faster"] = runnable[0] if runnable else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--restore-keys", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1, help="best of N rounds")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line (for the harness)")
    args = ap.parse_args()
    t0 = time.monotonic()
    res = compare(args.users, args.ops, args.restore_keys, args.rounds)
    if args.json:
        print(json.dumps(res))
        return
    figures = [
        ("process_tx_s", f"process: get+set head (+chunk 1/{CHUNK_EVERY}), tx/s"),
        ("raw_get_put_tx_s", "same, raw binding get/put, tx/s"),
        ("restore_records_s", f"restore: apply_changelog_batch x{RESTORE_BATCH}, records/s"),
        ("process_tx_cpu_s", "process, tx per CPU-second (calling thread)"),
        ("raw_get_put_tx_cpu_s", "raw get/put, tx per CPU-second"),
        ("restore_records_cpu_s", "restore, records per CPU-second"),
    ]
    print(
        f"{args.users} users, {args.ops} transactions, {args.restore_keys} restored keys, "
        f"best of {args.rounds} round(s), {time.monotonic() - t0:.1f}s"
    )
    print(f"{'':48} {'rocksdict':>12} {'python-rocksdb':>15} {'ratio':>7}")
    for key, label in figures:
        cells = []
        for d in DRIVERS:
            v = res[d].get(key)
            cells.append(f"{v:,.0f}" if v is not None else res[d].get("error", "-"))
        ratio = res.get("ratio_rocksdict_over_python_rocksdb", {}).get(key)
        print(f"{label:48} {cells[0]:>12} {cells[1]:>15} {f'{ratio:.2f}' if ratio else '-':>7}")
    print(f"faster on the per-transaction path (per CPU-second): {res['faster']}")


if __name__ == "__main__":
    main()
