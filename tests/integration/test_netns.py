"""Workers on separate hosts: one worker per Linux network namespace, each with its own address.

The test builds a small private network of its own: a bridge in the root
namespace holding ``10.213.<n>.1/24`` (``<n>`` chosen so that the subnet
overlaps nothing already configured), and one network namespace per worker,
joined to the bridge by a veth pair, holding ``10.213.<n>.<10 + i>/24``. The
namespaces get no default route, so nothing they send can leave that subnet.
A separate single-node Kafka (``scripts/kafka.sh`` with ``KAFKA_HOST``) listens
on the bridge address only.

Every worker runs under ``ip netns exec`` with the same ``WEB_PORT``, binding
and advertising (``WEB_HOST``) its namespace's address, so the only thing that
tells workers apart is their address: a lookup proxied through ``localhost``
would reach the asking worker itself, not the owner. Inside a namespace only
its own address, the bridge (Kafka) and the other namespaces are reachable.

The scenario is test_failover's: three workers, traffic, SIGKILL of one while
traffic flows; then every accepted transaction has a feature record and every
survivor answers every user's lookup with the oracle's value, at least some of
them through the owner at another address.

Everything (namespaces, links, bridge, broker, its data) is created here and
removed in the fixture teardown, even on failure. Without the privileges to
create network namespaces the test is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import (
    FAUST,
    REPO,
    TopicReader,
    Worker,
    assignment,
    http_get,
    send_paced,
    wait_for,
)
from tests.integration.streams import owner_partition, replay
from tests.integration.test_failover import MESSAGES, RATE_PER_S, traffic
from tests.oracle import assert_record_matches
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

WORKERS = 3
PARTITIONS = 6
WEB_PORT = 6066  # the same in every namespace: only the address tells the workers apart
NET_PREFIX = "10.213"  # the test's own /24 is NET_PREFIX.<n>.0/24, on its own bridge only
KAFKA_SH = REPO / "scripts" / "kafka.sh"
ROUTED_HEADER = "X-Velocity-Routed"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip <args>``; on failure (with check) raise naming the command and its stderr."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def free_subnet() -> ipaddress.IPv4Network:
    """A random NET_PREFIX.<n>.0/24 that overlaps no address or route of the root namespace."""
    taken: list[ipaddress.IPv4Network] = []
    for entry in json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = entry.get("dst", "default")
        if dst != "default":
            taken.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    for link in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        for a in link.get("addr_info", []):
            taken.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    candidates = list(range(256))
    random.shuffle(candidates)
    for n in candidates:
        net = ipaddress.IPv4Network(f"{NET_PREFIX}.{n}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise AssertionError(f"no free {NET_PREFIX}.<n>.0/24 subnet: every one is in use on this host")


@dataclass
class Lab:
    """The test's private network and its own broker."""

    tag: str
    subnet: ipaddress.IPv4Network
    bridge: str
    bridge_ip: str
    namespaces: list[tuple[str, str]] = field(default_factory=list)  # (name, address)
    bootstrap: str = ""
    kafka_env: dict[str, str] = field(default_factory=dict)
    kafka_data: Path | None = None


def kafka_sh(command: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAFKA_SH), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    if shutil.which("ip") is None:
        pytest.skip("network namespaces cannot be created here: iproute2's `ip` is not installed")
    tag = uuid.uuid4().hex[:6]
    subnet = free_subnet()
    hosts = list(subnet.hosts())
    net = Lab(tag, subnet, bridge=f"vbr{tag}", bridge_ip=str(hosts[0]))
    created_ns: list[str] = []
    created_links: list[str] = []
    try:
        # The one allowed skip: no permission (or no kernel support) for network namespaces.
        probe = f"velo-{tag}-0"
        added = ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            pytest.skip(
                "network namespaces cannot be created here (`ip netns add` failed: "
                f"{added.stderr.strip()}); this test needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
            )
        created_ns.append(probe)

        ip("link", "add", net.bridge, "type", "bridge")
        created_links.append(net.bridge)
        ip("addr", "add", f"{net.bridge_ip}/{subnet.prefixlen}", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
        for i in range(WORKERS):
            ns = f"velo-{tag}-{i}"
            if ns not in created_ns:
                ip("netns", "add", ns)
                created_ns.append(ns)
            address = str(hosts[9 + i])  # .10, .11, ...
            outside = f"vh{tag}{i}"
            ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
            created_links.append(outside)
            ip("link", "set", outside, "master", net.bridge)
            ip("link", "set", outside, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            # Only the subnet itself: no default route, so nothing can leave it.
            routes = ip("-n", ns, "-4", "route", "show").stdout
            assert "default" not in routes, routes
            net.namespaces.append((ns, address))

        # A broker of our own, listening on (and advertising) the bridge address only.
        port = free_port(net.bridge_ip, consecutive=2)  # kafka.sh's controller uses KAFKA_PORT + 1
        net.kafka_data = tmp_path / "kafka"
        net.kafka_env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_DATA_DIR": str(net.kafka_data),
            "KAFKA_HOST": net.bridge_ip,
            "KAFKA_ADVERTISED_HOST": net.bridge_ip,
        }
        started = kafka_sh("start", net.kafka_env, timeout_s=180)
        if started.returncode != 0:
            raise AssertionError(
                f"scripts/kafka.sh start on {net.bridge_ip}:{port} failed:\n{started.stderr}"
            )
        net.bootstrap = f"{net.bridge_ip}:{port}"
        yield net
    finally:
        problems: list[str] = []
        if net.kafka_env:
            stopped = kafka_sh("stop", net.kafka_env, timeout_s=120)
            if stopped.returncode != 0:
                problems.append(f"kafka.sh stop: {stopped.stderr.strip()}")
            failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
            if failed and net.kafka_data is not None:
                log = net.kafka_data / "logs" / "server.log"
                if log.exists():
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                    sys.stderr.write(f"\n--- broker log ({log}) ---\n{tail}\n")
        # Deleting a namespace removes the veth pair whose end is inside it; the bridge goes last.
        for ns in reversed(created_ns):
            done = ip("netns", "del", ns, check=False)
            if done.returncode != 0:
                problems.append(f"ip netns del {ns}: {done.stderr.strip()}")
        for link in reversed(created_links):
            if ip("link", "show", link, check=False).returncode == 0:
                done = ip("link", "del", link, check=False)
                if done.returncode != 0:
                    problems.append(f"ip link del {link}: {done.stderr.strip()}")
        if problems:
            raise AssertionError("test_netns could not clean up:\n  " + "\n  ".join(problems))


@dataclass
class NsWorker(Worker):
    """A worker running inside a network namespace, reached at that namespace's address."""

    netns: str = ""
    host: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> NsWorker:
        with self.log_path.open("ab") as log:
            # `ip netns exec` execs the command itself: the PID is the worker's.
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, FAUST, "-A", "app", "worker", "-l", "info"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        return http_get(self.url + path, headers)


@dataclass
class NetTopics:
    transactions: str
    features: str
    dlq: str


@pytest.fixture
def net_topics(lab: Lab) -> NetTopics:
    tag = uuid.uuid4().hex[:10]
    t = NetTopics(f"tx-{tag}", f"features-{tag}", f"dlq-{tag}")

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=lab.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(n, PARTITIONS, 1) for n in (t.transactions, t.features, t.dlq)]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    return t


@pytest.fixture
def ns_spawn(
    lab: Lab, net_topics: NetTopics, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[int], NsWorker]]:
    """``ns_spawn(i)`` starts a worker in namespace i; all are stopped (by PID) before the network goes."""
    app_id = f"velocity-ns-{uuid.uuid4().hex[:8]}"
    workers: list[NsWorker] = []

    def _spawn(i: int) -> NsWorker:
        ns, address = lab.namespaces[i]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "TOPIC_", "WEB_"))}
        env.update(
            BROKER_URL=f"kafka://{lab.bootstrap}",
            APP_ID=app_id,
            APP_STORE="rocksdb://",
            APP_DATADIR=str(tmp_path / f"worker-{i}"),
            WEB_PORT=str(WEB_PORT),
            WEB_BIND=address,
            WEB_HOST=address,
            TOPIC_PARTITIONS=str(PARTITIONS),
            TRANSACTIONS_TOPIC=net_topics.transactions,
            FEATURES_TOPIC=net_topics.features,
            DLQ_TOPIC=net_topics.dlq,
            PYTHONUNBUFFERED="1",
        )
        worker = NsWorker(env, tmp_path / f"worker-{i}.log", WEB_PORT, netns=ns, host=address)
        workers.append(worker)
        return worker.start()

    yield _spawn
    # SIGTERM all at once, then wait; whatever is still alive after the deadline gets SIGKILL.
    alive = [w for w in workers if w.alive()]
    for w in alive:
        assert w.proc is not None
        w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 45
    for w in alive:
        assert w.proc is not None
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(timeout=30)
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for w in workers:
            sys.stderr.write(f"\n--- log of worker {w.url} ({w.netns}) ---\n{w.tail()}\n")


@pytest.fixture
async def net_readers(lab: Lab, net_topics: NetTopics) -> AsyncIterator[tuple[TopicReader, TopicReader]]:
    async with (
        TopicReader(net_topics.features, bootstrap=lab.bootstrap) as features,
        TopicReader(net_topics.dlq, bootstrap=lab.bootstrap) as dlq,
    ):
        yield features, dlq


def lookup_until_200(worker: NsWorker, user: str, deadline: float) -> dict[str, Any]:
    """A lookup, retried while the worker answers 503 + Retry-After; any other answer fails."""
    while True:
        status, headers, body = worker.get("/features/" + urllib.parse.quote(user))
        if status == 200:
            assert isinstance(body, dict), (worker.url, user, body)
            return body
        assert status == 503, (worker.url, user, status, body)
        assert "Retry-After" in headers, (worker.url, user, headers)
        if time.monotonic() > deadline:
            raise AssertionError(f"{worker.url} still answers 503 for {user!r}: {body}")
        time.sleep(min(1.0, float(headers["Retry-After"])))


def cluster_view_is_by_address(asked: NsWorker, survivors: list[NsWorker]) -> bool:
    """The asking worker's /stats gathers the other survivors' figures at their own addresses."""
    status, _, body = asked.get("/stats")
    if status != 200:
        return False
    listed = {w.get("worker"): w for w in body["workers"]}
    for peer in survivors:
        entry = listed.get(peer.url)
        if entry is None or "error" in entry:
            return False
    return True


async def test_workers_in_separate_network_namespaces_route_by_address_and_survive_a_kill(
    lab: Lab,
    net_topics: NetTopics,
    ns_spawn: Callable[[int], NsWorker],
    net_readers: tuple[TopicReader, TopicReader],
) -> None:
    features, dlq = net_readers
    started = time.monotonic()

    workers = [ns_spawn(0)]
    wait_for(workers[0].ready_body, 120, f"worker {workers[0].url} to be ready")
    for i in range(1, WORKERS):  # scale out 1 -> 2 -> 3, one namespace each
        workers.append(ns_spawn(i))
        wait_for(
            lambda: assignment(workers, PARTITIONS, every_worker_owns=True),
            150,
            f"partitions spread over {len(workers)} workers",
        )
    assert len({w.host for w in workers}) == WORKERS and len({w.port for w in workers}) == 1

    stream = traffic(PARTITIONS, seed=int(signal.SIGKILL))
    oracle, accepted = replay(stream)

    sent = [0]
    sender = asyncio.create_task(
        send_paced(stream.messages, net_topics.transactions, RATE_PER_S, sent, bootstrap=lab.bootstrap)
    )
    while sent[0] < MESSAGES // 3:
        if sender.done():
            sender.result()  # raise what stopped it
        await asyncio.sleep(0.05)
    victim = workers[1]
    victim.stop(signal.SIGKILL)
    survivors = [w for w in workers if w is not victim]
    await sender
    assert sent[0] == MESSAGES

    await features.until(
        lambda ms: {v["transaction_id"] for _, v, _ in ms} >= accepted,
        180,
        "a feature record for every accepted transaction",
    )
    owners = wait_for(lambda: assignment(survivors, PARTITIONS), 150, "survivors owning every partition")

    users = sorted({m.user for m in stream.messages if m.user})
    deadline = time.monotonic() + 90
    proxied: list[tuple[NsWorker, str, NsWorker]] = []  # (asked, user, owner at another address)
    for user in users:
        _, want = oracle.lookup(user)
        assert want is not None
        for w in survivors:
            assert_record_matches(lookup_until_200(w, user, deadline), want)
            owner = owners[owner_partition(user, PARTITIONS)]
            if owner.host != w.host:
                proxied.append((w, user, owner))

    # Lookups were answered through owners at other addresses: the assignment the answers were
    # checked against still holds, and the asked worker refuses to answer those users itself.
    assert assignment(survivors, PARTITIONS) == owners, "ownership moved during the lookups"
    assert {w.host for w, _, _ in proxied} == {w.host for w in survivors}, (
        f"every survivor must have proxied some lookup: {[(w.url, u, o.url) for w, u, o in proxied]}"
    )
    for asked in survivors:
        _, user, owner = next(p for p in proxied if p[0] is asked)
        status, _, body = asked.get("/features/" + urllib.parse.quote(user), {ROUTED_HEADER: "1"})
        assert status == 503, (
            f"{asked.url} answered {user!r} (owned by {owner.url}) without proxying: {status} {body}"
        )
    # And each survivor gathers the other's figures over the network at the other's canonical URL.
    for asked in survivors:
        wait_for(
            functools.partial(cluster_view_is_by_address, asked, survivors),
            30,
            f"{asked.url}/stats listing its peers",
        )

    letters = await dlq.until(lambda ms: True, 5, "a read of the dead-letter topic")
    assert letters == []
    sys.stderr.write(
        f"\ntest_netns: {len(proxied)} of {len(users) * len(survivors)} lookups proxied between "
        f"{sorted(w.host for w in survivors)}; scenario took {time.monotonic() - started:.0f}s\n"
    )
