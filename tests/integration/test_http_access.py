"""HTTP access on real workers: bearer tokens and scopes, the peer token between workers, web TLS,
and the hardening of every view (bad ``at``, long user ids, path traversal, hung owners, slow clients).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.client import LookupFailed, VelocityClient
from tests.certs import self_signed
from tests.integration.conftest import Topics, Worker, assignment, http_get, produce, wait_for
from tests.integration.streams import Stream, owner_partition
from tests.oracle import Oracle, assert_record_matches

pytestmark = pytest.mark.integration

READ = "it-read-token-0123456789"
OPS = "it-ops-token-0123456789a"
PEER = "it-peer-token-0123456789"
TOKENS = f"# integration tests\n{READ} read\n{OPS} ops  # the live page\n\n{PEER} peer\n"
LATENESS_S = 3600.0
MAX_AT_S = 253402300799.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tokens_env(directory: Path) -> dict[str, str]:
    path = directory / "tokens"
    path.write_text(TOKENS)
    return {"HTTP_AUTH_TOKENS_FILE": str(path), "HTTP_PEER_TOKEN": PEER}


def path_of(user: str) -> str:
    return "/features/" + urllib.parse.quote(user, safe="")


def batch_of(users: list[str], at: str | None = None) -> str:
    query = [("user_id", u) for u in users] + ([] if at is None else [("at", at)])
    return "/features?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


async def seed(topics: Topics, users: list[str], now: float) -> Oracle:
    """Three transactions per user, produced; the oracle of what every lookup must answer."""
    stream = Stream()
    for i, user in enumerate(users):
        for k in range(3):
            ts = now - 900 + 120 * k + i
            stream.add_tx(user, "direct", topics.partitions, f"{user}-{k}", ts, 10.0 * (k + 1), f"m{k}")
    await produce([(m.key, m.value, m.partition) for m in stream.messages], topics.transactions)
    oracle = Oracle()
    for m in stream.messages:
        assert m.txn is not None
        oracle.process(m.txn)
    return oracle


def answered(worker: Worker, users: list[str], headers: dict[str, str] | None = None) -> bool:
    return all(worker.get(path_of(u), headers)[0] == 200 for u in users)


def assert_clean(status: int, body: Any) -> None:
    """No 5xx but the documented ones, a JSON error object, no stack trace."""
    assert status < 500 or status in (503, 504), (status, body)
    assert "Traceback" not in str(body) and 'File "' not in str(body), body
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str), (status, body)


# --- tokens and scopes -----------------------------------------------------------------------


async def test_scopes_and_the_peer_token_on_two_workers(topics: Topics, spawn: Any, tmp_path: Path) -> None:
    env = {**tokens_env(tmp_path), "HTTP_REQUEST_TIMEOUT_S": "3"}
    a = spawn(**env)
    a.wait_ready()  # /ready is open by default
    b = spawn(**env)
    owners = wait_for(
        lambda: assignment([a, b], topics.partitions, every_worker_owns=True), 120, "partitions split"
    )
    users = [f"user-{i:02d}" for i in range(24)]
    oracle = await seed(topics, users, time.time())
    wait_for(lambda: answered(a, users, bearer(READ)), 90, "every user answered through worker a")
    user = users[0]

    # /features needs read (or ops, which implies it: SPEC 2): 401 without a token or with an unknown one.
    for path in (path_of(user), batch_of(users[:3])):
        for headers, want in (
            (None, 401),
            (bearer("not-a-known-token-0123"), 401),
            ({"Authorization": f"Basic {READ}"}, 401),
            (bearer(OPS), 200),
            (bearer(READ), 200),
            (bearer(PEER), 200),
        ):
            status, head, body = a.get(path, headers)
            assert status == want, (path, headers, status, body)
            assert_clean(status, body)
            if want == 401:
                assert head["WWW-Authenticate"].startswith("Bearer"), head
            if want == 403:
                assert 'error="insufficient_scope"' in head["WWW-Authenticate"], head
    # /stats, the live page and its files need ops.
    for path in ("/stats", "/stats?scope=worker", "/", "/static/dashboard.js"):
        assert a.get(path)[0] == 401, path
        assert a.get(path, bearer(READ))[0] == 403, path
        assert a.get(path, bearer(OPS))[0] == 200, path
    # The open paths need nothing; an unknown path without a token says nothing about itself.
    for path in ("/health", "/ready"):
        assert a.get(path)[0] == 200, path
    assert a.get("/metrics")[0] == 401 and a.get("/metrics", bearer(OPS))[0] == 200  # SPEC 2: ops
    assert a.get("/no-such-page")[0] == 401
    assert a.get("/no-such-page", bearer(OPS))[0] == 404

    # Every user from both workers: the one not owning it asks the owner with the peer token.
    owned = {a.port: 0, b.port: 0}
    for u in users:
        owned[owners[owner_partition(u, topics.partitions)].port] += 1
        _, want_body = oracle.lookup(u)
        for worker in (a, b):
            status, _, body = worker.get(path_of(u), bearer(READ))
            assert status == 200, (worker.port, u, body)
            assert_record_matches(body, want_body or {})
    assert all(owned.values()), owned
    for worker in (a, b):
        status, _, body = worker.get(batch_of(users), bearer(READ))
        assert status == 200 and [item["status"] for item in body["results"]] == [200] * len(users), body

    # The cluster view gathers /stats of both workers (with the peer token).
    status, _, body = a.get("/stats", bearer(OPS))
    assert status == 200
    assert sorted(w["worker"] for w in body["workers"]) == sorted(
        f"http://127.0.0.1:{w.port}" for w in (a, b)
    )
    assert not [w for w in body["workers"] if "error" in w], body["workers"]

    # The client sends its token; without one it is refused, never retried into a wrong answer.
    async with VelocityClient([a.url, b.url], token=READ) as client:
        got = await client.features(user)
        assert got is not None
        assert_record_matches(got, oracle.lookup(user)[1] or {})
        many = await client.features_many(users)
        assert all(many[u] is not None for u in users)
    async with VelocityClient([a.url], retries=0) as anonymous:
        with pytest.raises(LookupFailed, match="401"):
            await anonymous.features(user)

    # A hung owner: the lookup answers 503/504 within HTTP_REQUEST_TIMEOUT_S, the asked worker stays up.
    of_b = next(u for u in users if owners[owner_partition(u, topics.partitions)] is b)
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, _, body = http_get(a.url + path_of(of_b), bearer(READ), timeout_s=8.0)
        took = time.monotonic() - started
        assert status in (503, 504) and isinstance(body["error"], str), (status, body)
        assert took < 3.0 + 1.5, took
        assert http_get(a.url + "/health", timeout_s=2.0)[0] == 200
        status, _, body = http_get(a.url + "/stats", bearer(OPS), timeout_s=8.0)
        assert status == 200 and any("error" in w for w in body["workers"]), body
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)

    # No token ever reaches a log.
    for worker in (a, b):
        log = worker.log_path.read_text(errors="replace")
        for token in (READ, OPS, PEER):
            assert token not in log, f"a token in the log of worker {worker.port}"


BAD_FILES: dict[str, tuple[str | None, str | None, str]] = {
    # name: (file text, or None for a missing file; HTTP_PEER_TOKEN; what the one line says)
    "missing": (None, PEER, "is not a readable file"),
    "no scope": (f"{PEER} peer\n{READ}\n", PEER, "line 2: a token needs its scopes"),
    "unknown scope": (f"{PEER} peer\n# x\n{READ} admin\n", PEER, "line 3: unknown scope 'admin'"),
    "duplicate": (f"{PEER} peer\n{READ} read\n{READ} ops\n", PEER, "line 3: the same token as line 2"),
    "short token": (f"{PEER} peer\nshort-token read\n", PEER, "line 2: the token is shorter than 16"),
    "no peer token": (TOKENS, None, "HTTP_PEER_TOKEN (a token of scope peer in that file) is needed"),
    "peer token not peer": (TOKENS, READ, "HTTP_PEER_TOKEN is not a token of scope peer"),
}


def test_bad_tokens_files_stop_the_worker_with_one_line(spawn: Any, tmp_path: Path) -> None:
    workers: dict[str, Worker] = {}
    for n, (name, (text, peer, _)) in enumerate(BAD_FILES.items()):
        path = tmp_path / f"tokens-{n}"
        if text is not None:
            path.write_text(text)
        env = {"HTTP_AUTH_TOKENS_FILE": str(path)}
        if peer is not None:
            env["HTTP_PEER_TOKEN"] = peer
        workers[name] = spawn(**env)  # all at once: each exits before it touches Kafka
    wait_for(lambda: not any(w.alive() for w in workers.values()), 90, "every worker to refuse to start")
    for name, worker in workers.items():
        assert worker.proc is not None and worker.proc.returncode != 0, name
        lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
        assert len(lines) == 1, (name, lines)
        line = lines[0]
        assert line.startswith("velocity: cannot start: "), (name, line)
        assert BAD_FILES[name][2] in line, (name, line)
        if "line " in BAD_FILES[name][2]:
            assert worker.env["HTTP_AUTH_TOKENS_FILE"] in line, (name, line)
        for token in (READ, OPS, PEER):
            assert token not in line, (name, line)


# --- web TLS ---------------------------------------------------------------------------------


def https_get(
    url: str, cafile: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], Any]:
    """:func:`http_get` over https, trusting ``cafile`` (with host name checks)."""
    context = ssl.create_default_context(cafile=cafile)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as r:
            status, head, body = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, head, body = e.code, dict(e.headers), e.read()
    try:
        return status, head, json.loads(body)
    except ValueError:
        return status, head, body.decode("utf-8", "replace")


class TlsWorker(Worker):
    """A worker spawned with WEB_SSL_CERTFILE: reached over https, trusting that certificate."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        return https_get(self.url + path, self.env["WEB_SSL_CERTFILE"], headers)


def over_tls(worker: Worker) -> TlsWorker:
    worker.__class__ = TlsWorker
    return cast(TlsWorker, worker)


async def test_web_tls_two_workers_route_over_https(topics: Topics, spawn: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    env = {**tokens_env(tmp_path), "WEB_SSL_CERTFILE": str(cert), "WEB_SSL_KEYFILE": str(key)}
    a = over_tls(spawn(**env))
    a.wait_ready()
    b = over_tls(spawn(**env))
    owners = wait_for(
        lambda: assignment([a, b], topics.partitions, every_worker_owns=True), 120, "partitions split"
    )
    users = [f"tls-user-{i:02d}" for i in range(16)]
    oracle = await seed(topics, users, time.time())
    wait_for(lambda: answered(a, users, bearer(READ)), 90, "every user answered through worker a")
    assert {owners[owner_partition(u, topics.partitions)].port for u in users} == {a.port, b.port}
    for u in users:
        for worker in (a, b):  # one of the two asks the other, over https
            status, _, body = worker.get(path_of(u), bearer(READ))
            assert status == 200, (worker.port, u, body)
            assert_record_matches(body, oracle.lookup(u)[1] or {})
    status, _, body = b.get(batch_of(users), bearer(READ))
    assert status == 200 and {item["status"] for item in body["results"]} == {200}, body
    status, _, body = a.get("/stats", bearer(OPS))
    assert status == 200
    assert sorted(w["worker"] for w in body["workers"]) == sorted(w.url for w in (a, b))
    assert not [w for w in body["workers"] if "error" in w], body["workers"]

    # Plain http to the TLS port gets no answer; a certificate nobody trusts is refused by the client.
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{a.port}/health", timeout_s=5.0)
    other, _ = self_signed(tmp_path / "other")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        https_get(a.url + "/health", str(other), timeout_s=5.0)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with VelocityClient([a.url, b.url], token=READ, ssl=trusting) as client:
        got = await client.features(users[3])
        assert got is not None
        assert_record_matches(got, oracle.lookup(users[3])[1] or {})


# --- hardening -------------------------------------------------------------------------------

MAX_ID = 40
BAD_ATS = [
    "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309", "", "1" * 400, "-1", "-0.5", "abc",
    "true", "null", "[1]", '"1700000000"', "1e12", "0x10", "1_000", "1e-400e", "1.", "01",
]  # fmt: skip


def valid_at(raw: str) -> float | None:
    """The ``at`` the worker must accept (strict JSON, finite, 0..year 9999), else None."""
    try:
        value = json.loads(raw, parse_constant=lambda _: math.nan)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    if not math.isfinite(value) or not 0 <= value <= MAX_AT_S:
        return None
    return value


def raw_request(port: int, target: bytes) -> tuple[int, bytes]:
    """``GET target`` sent byte for byte (no client-side normalization): (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_hardening_of_every_view_on_a_live_worker(topics: Topics, spawn: Any) -> None:
    w = spawn(HTTP_MAX_USER_ID_CHARS=str(MAX_ID))
    w.wait_ready()
    now = time.time()
    users = ["u-1", "u-2", "x" * MAX_ID, "{braces}", "a/b", "ü-ß", "..", "%2e%2e"]
    oracle = await seed(topics, users, now)
    wait_for(lambda: answered(w, users), 90, "every user answered")

    # Without HTTP_AUTH_TOKENS_FILE every path answers without a token, as before.
    for path in ("/", "/stats", "/stats?scope=worker", "/metrics", "/health", "/ready", "/static/index.html"):
        assert w.get(path)[0] == 200, path

    for raw in BAD_ATS:
        for path in (path_of("u-1"), path_of("nobody"), batch_of(["u-1", "nobody"])):
            status, _, body = w.get(path + ("&" if "?" in path else "?") + "at=" + urllib.parse.quote(raw))
            assert status == 400, (raw, path, body)
            assert_clean(status, body)
    for path in (path_of("u-1"), batch_of(["u-1"])):
        many = path + ("&" if "?" in path else "?") + "&".join([f"at={now}"] * 50)
        status, _, body = w.get(many)
        assert status == 400 and "at most one at" in body["error"], body
    long_id = "y" * (MAX_ID + 1)
    for path in (path_of(long_id), batch_of(["u-1", long_id]), path_of("é" * (MAX_ID + 1))):
        status, _, body = w.get(path)
        assert status == 400 and f"HTTP_MAX_USER_ID_CHARS={MAX_ID}" in body["error"], (path, body)
        assert long_id not in body["error"]
    assert w.get(path_of("z" * MAX_ID))[0] == 404

    # Path traversal on /static (and around it): 404, a JSON error, nothing of any file.
    main_py = Path(__file__).resolve().parents[2] / "app" / "main.py"
    for target in (
        b"/static/../app/main.py",
        b"/static/%2e%2e/app/main.py",
        b"/static/%2e%2e%2fapp%2fmain.py",
        b"/static/..%2F..%2Fapp%2Fmain.py",
        b"/static/....//app/main.py",
        b"/static//etc/passwd",
        b"/static/%2Fetc%2Fpasswd",
        main_py.as_posix().encode(),
        b"/static/" + main_py.as_posix().encode(),
        b"/../app/main.py",
        b"/static/vendor/../../main.py",
    ):
        status, body = raw_request(w.port, target)
        assert status == 404, (target, status, body)
        parsed = json.loads(body)
        assert set(parsed) == {"error"} and "import" not in parsed["error"] and "root:" not in body.decode()

    # Any user id, any at: the status the SPEC gives, never a 500 or a stack trace.
    tried: list[str] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        user=st.one_of(
            st.sampled_from(users),
            st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=MAX_ID + 5),
        ),
        raw_at=st.one_of(
            st.none(),
            st.sampled_from(BAD_ATS),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.integers(-(10**20), 10**20).map(str),
            st.floats(now - 2 * LATENESS_S, now + LATENESS_S).map(repr),
            st.text(max_size=12),
        ),
    )
    def any_lookup(user: str, raw_at: str | None) -> None:
        tried.append(user)
        at = None if raw_at is None else valid_at(raw_at)
        refused = len(user) > MAX_ID or (raw_at is not None and at is None)
        if refused:
            want_status, want = 400, None
        else:
            want_status, want = oracle.lookup(user, at)
        query = "" if raw_at is None else "?at=" + urllib.parse.quote(raw_at, safe="")
        status, _, body = w.get(path_of(user) + query)
        assert_clean(status, body)
        assert status == want_status, (user, raw_at, status, body)
        if want is not None:
            assert_record_matches(body, want)
        status, _, body = w.get(batch_of([user, "u-2"], raw_at))
        assert_clean(status, body)
        if refused:  # the whole batch
            assert status == 400, (user, raw_at, body)
        else:
            assert status == 200, (user, raw_at, body)
            item = body["results"][0]
            assert item["user_id"] == user and item["status"] == want_status, (item, want_status)
            if want is not None:
                assert_record_matches(item["features"], want)

    any_lookup()
    assert len(tried) >= 60, len(tried)


class Stallers:
    """``n`` connections that never finish a request: half stall after a few bytes, half send
    their head a byte at a time. A connection the server closes is counted and opened again."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.open = 0
        self.closed_by_server = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._one(i % 2 == 0)) for i in range(self.n)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, dribble: bool) -> None:
        head = b"GET /features/u-1 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 4000
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.open += 1
            try:
                writer.write(head[:9])
                sent = 9
                while True:  # one byte every 0.2 s (dribbling), or nothing; until the server closes
                    try:
                        if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                            break
                    except TimeoutError:
                        if dribble and sent < len(head):
                            writer.write(head[sent : sent + 1])
                            sent += 1
            except ConnectionError:
                pass
            finally:
                self.open -= 1
                writer.close()
            self.closed_by_server += 1


async def test_slow_clients_block_neither_lookups_nor_the_stream(topics: Topics, spawn: Any) -> None:
    w = spawn(HTTP_REQUEST_TIMEOUT_S="4")
    w.wait_ready()
    now = time.time()
    users = [f"slow-{i}" for i in range(8)]
    oracle = await seed(topics, users, now)
    wait_for(lambda: answered(w, users), 90, "every user answered")

    stallers = Stallers(w.port, 100)
    stallers.start()
    try:
        deadline = time.monotonic() + 30
        while stallers.open < 100:
            assert time.monotonic() < deadline, f"only {stallers.open} slow connections opened"
            await asyncio.sleep(0.05)
        # With 100 connections stalled, every lookup answers within its 2 s deadline.
        for user in users * 3:
            status, _, body = await asyncio.to_thread(http_get, w.url + path_of(user), None, 2.0)
            assert status == 200, body
            assert_record_matches(body, oracle.lookup(user)[1] or {})
            assert (await asyncio.to_thread(http_get, w.url + "/health", None, 2.0))[0] == 200
        # The stream goes on: a new transaction shows up in its user's features.
        more = Stream()
        more.add_tx(users[0], "direct", topics.partitions, "slow-0-new", now + 1, 77.0, "m9")
        await produce([(m.key, m.value, m.partition) for m in more.messages], topics.transactions)
        deadline = time.monotonic() + 30
        while True:
            status, _, body = await asyncio.to_thread(http_get, w.url + path_of(users[0]), None, 2.0)
            if status == 200 and body["transaction_id"] == "slow-0-new":
                break
            assert time.monotonic() < deadline, f"the new transaction never showed: {body}"
            await asyncio.sleep(0.2)
        # The server drops connections that never finish their head (HTTP_REQUEST_TIMEOUT_S).
        deadline = time.monotonic() + 30
        while stallers.closed_by_server < 100:
            assert time.monotonic() < deadline, f"only {stallers.closed_by_server} stalled connections closed"
            await asyncio.sleep(0.2)
        assert (await asyncio.to_thread(http_get, w.url + "/health", None, 2.0))[0] == 200
    finally:
        await stallers.stop()
    assert w.alive()
