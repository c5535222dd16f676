"""Operator commands: ``faust -A app simulate``, ``faust -A app lag``."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter, deque
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.cli import option

from app.kafka_admin import TopicSpec, client_options, ensure_topics
from app.main import app, settings, topic_specs
from app.simulator import Label, TrafficConfig, TrafficModel

log = logging.getLogger(__name__)

TICK_S = 0.05


@app.command(
    option("--rate", type=float, default=200.0, show_default=True, help="Transactions per second."),
    option("--users", type=int, default=1000, show_default=True, help="Regular users (Zipf-like activity)."),
    option(
        "--heavy-users",
        type=int,
        default=2,
        show_default=True,
        help="Heavy users, each carrying 5% of the traffic.",
    ),
    option(
        "--duration",
        type=float,
        default=60.0,
        show_default=True,
        help="Seconds to run (0: until interrupted).",
    ),
    option("--max-messages", type=int, default=0, help="Stop after this many messages (0: no limit)."),
    option(
        "--fraud-every",
        type=int,
        default=5000,
        show_default=True,
        help="One fraud burst per N transactions (0: none).",
    ),
    option(
        "--out-of-order",
        type=float,
        default=0.02,
        show_default=True,
        help="Share of events stamped up to 2 minutes late.",
    ),
    option("--seed", type=int, default=7, show_default=True, help="Random seed."),
    option(
        "--progress-every", type=float, default=5.0, show_default=True, help="Seconds between progress lines."
    ),
    option(
        "--label-delay",
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds after a fraud transaction that its label (1) goes to LABELS_TOPIC (<0: no labels).",
    ),
    option(
        "--label-negatives",
        type=float,
        default=0.02,
        show_default=True,
        help="Share of regular transactions that also get a label (0) after --label-delay.",
    ),
    option(
        "--unkeyed-labels",
        type=float,
        default=0.0,
        show_default=True,
        help="Share of labels sent with no key (SPEC 10: key user_id or none).",
    ),
    option(
        "--drift-at",
        type=float,
        default=-1.0,
        show_default=True,
        help="Seconds into the run when amounts of the drift segment start to drift (<0: never).",
    ),
    option(
        "--drift-factor",
        type=float,
        default=3.0,
        show_default=True,
        help="Once drift is on, the drift segment's amounts are multiplied by this (capped at 99,999).",
    ),
    option(
        "--drift-segment",
        type=float,
        default=0.25,
        show_default=True,
        help="Share of users that drift (a stable choice from --seed).",
    ),
)
async def simulate(
    self: Any,
    rate: float,
    users: int,
    heavy_users: int,
    duration: float,
    max_messages: int,
    fraud_every: int,
    out_of_order: float,
    seed: int,
    progress_every: float,
    label_delay: float,
    label_negatives: float,
    unkeyed_labels: float,
    drift_at: float,
    drift_factor: float,
    drift_segment: float,
) -> None:
    """Produce realistic synthetic transactions to the input topic."""
    if rate <= 0:
        raise SystemExit("simulate: --rate must be > 0")
    for name, share in (
        ("--label-negatives", label_negatives),
        ("--unkeyed-labels", unkeyed_labels),
        ("--drift-segment", drift_segment),
    ):
        if not 0.0 <= share <= 1.0:
            raise SystemExit(f"simulate: {name} must be between 0 and 1")
    if not drift_factor > 0:
        raise SystemExit("simulate: --drift-factor must be > 0")
    specs = topic_specs(settings)
    if label_delay >= 0:
        specs.append(TopicSpec(settings.labels_topic, settings.topic_partitions, must_match=False))
    await ensure_topics(settings.broker_url, specs)
    labels: deque[tuple[float, Label]] = deque()  # (due, label), due in order
    labelled: Counter[str] = Counter()
    model = TrafficModel(
        TrafficConfig(
            users=users,
            heavy_users=heavy_users,
            fraud_burst_every=fraud_every,
            out_of_order_share=out_of_order,
            seed=seed,
            run_id=f"{seed}-{secrets.token_hex(4)}",
            drift_factor=drift_factor,
            drift_segment=drift_segment,
            label_negatives=label_negatives if label_delay >= 0 else 0.0,
            unkeyed_labels=unkeyed_labels,
        )
    )
    producer = AIOKafkaProducer(**client_options(settings.broker_url), linger_ms=5)
    await producer.start()
    started = last_report = time.monotonic()
    sent = sent_at_report = 0
    self.say(
        f"simulate: {rate:g} tx/s to {settings.transactions_topic!r} on {settings.broker_url} "
        f"({users} users + {heavy_users} heavy, a fraud burst every {fraud_every} tx)"
    )
    try:
        while True:
            elapsed = time.monotonic() - started
            if (duration and elapsed >= duration) or (max_messages and sent >= max_messages):
                break
            if 0 <= drift_at <= elapsed and not model.drifting:
                model.start_drift()
                self.say(
                    f"simulate: drift on: amounts x{drift_factor} for {drift_segment * 100:g}% of users "
                    "from now"
                )
            due = int(elapsed * rate) + 1 - sent
            if max_messages:
                due = min(due, max_messages - sent)
            if due > 0:
                for tx in model.take(due, time.time()):
                    await producer.send(
                        settings.transactions_topic,
                        value=orjson.dumps(tx),
                        key=tx["user_id"].encode("utf-8"),
                    )
                    sent += 1
            new_labels = model.take_labels()  # taken even without labels, so they do not pile up
            if label_delay >= 0:
                # One due time per tick, never earlier than the last: the deque stays in due order.
                due_at = time.monotonic() + label_delay
                labels.extend((due_at, label) for label in new_labels)
                labelled += await send_labels(producer, labels, time.monotonic())
            now = time.monotonic()
            if now - last_report >= progress_every:
                self.say(
                    f"simulate: sent {sent} ({(sent - sent_at_report) / (now - last_report):.0f} tx/s), "
                    f"fraud bursts {model.bursts}, elapsed {now - started:.0f}s"
                )
                last_report, sent_at_report = now, sent
            await asyncio.sleep(TICK_S)
        labelled += await send_labels(producer, labels, math.inf)  # the run is over: the rest now
        await producer.flush()
    finally:
        await producer.stop()
    total = time.monotonic() - started
    self.say(
        f"simulate: done, {sent} transactions in {total:.1f}s ({sent / total:.0f} tx/s), "
        f"{model.bursts} fraud bursts"
        + (
            f", {labelled['fraud']} fraud (1) and {labelled['legit']} legitimate (0) labels "
            f"to {settings.labels_topic!r} ({labelled['unkeyed']} unkeyed)"
            if label_delay >= 0
            else ""
        )
    )


async def send_labels(
    producer: AIOKafkaProducer, labels: deque[tuple[float, Label]], until: float
) -> Counter[str]:
    """Send the labels due by ``until``: SPEC 10's ``{transaction_id, label, labeled_at}``.

    Each is keyed by its user, or sent with no key if it is unkeyed. Returns how many went
    out: ``fraud`` (label 1), ``legit`` (label 0), ``unkeyed`` (of either).
    """
    sent: Counter[str] = Counter()
    while labels and labels[0][0] <= until:
        _, label = labels.popleft()
        value = {"transaction_id": label.transaction_id, "label": label.label, "labeled_at": time.time()}
        key = label.user_id.encode("utf-8") if label.keyed else None
        await producer.send(settings.labels_topic, value=orjson.dumps(value), key=key)
        sent["fraud" if label.label else "legit"] += 1
        sent["unkeyed"] += 0 if label.keyed else 1
    return sent


def lag_table(rows: list[tuple[str, int, int | None, int]]) -> tuple[list[str], int]:
    """``(topic, partition, committed or None, end offset)`` rows -> the printed lines and the total lag.

    A partition the group never committed counts from offset 0 (its whole
    retained log is behind), as ``kafka-consumer-groups --describe`` shows ``-``.
    """
    width = max([len("TOPIC"), *(len(t) for t, _, _, _ in rows)])
    lines = [f"{'TOPIC':<{width}}  PARTITION  COMMITTED        END        LAG"]
    total = 0
    for topic, partition, committed, end in sorted(rows):
        lag = max(0, end - (committed or 0))
        total += lag
        shown = "-" if committed is None else str(committed)
        lines.append(f"{topic:<{width}}  {partition:>9}  {shown:>9}  {end:>9}  {lag:>9}")
    lines.append(f"{'total':<{width}}  {'':>9}  {'':>9}  {'':>9}  {total:>9}")
    return lines, total


async def group_offsets(group: str, topics: list[str]) -> list[tuple[str, int, int | None, int]]:
    """Committed and end offsets of ``group`` on every partition of ``topics`` (read-only: joins nothing)."""
    options = client_options(settings.broker_url)
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await admin.start()
    try:
        await consumer.start()
        try:
            # aiokafka has no public call that refreshes the consumer's own metadata before a subscription.
            await consumer._client.force_metadata_update()  # noqa: SLF001
            tps = []
            for topic in topics:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    raise SystemExit(f"lag: topic {topic!r} does not exist on {settings.broker_url}")
                tps += [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    rows = []
    for tp in tps:
        meta = committed.get(tp)
        offset = None if meta is None or meta.offset < 0 else int(meta.offset)
        rows.append((tp.topic, tp.partition, offset, int(ends[tp])))
    return rows


async def worker_stats(url: str) -> dict[str, Any] | None:
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"{url}/stats") as r:
            if r.status != 200:
                return None
            body: dict[str, Any] = await r.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


@app.command(
    option("--max-lag", type=int, default=None, help="Exit with status 1 when the total lag is above this."),
    option(
        "--url",
        type=str,
        default=None,
        help="A worker's web address, for the freshness the workers report (default: this host's WEB_PORT).",
    ),
)
async def lag(self: Any, max_lag: int | None, url: str | None) -> None:
    """Per-partition committed offset, end offset and lag of the app's group, and the workers' freshness."""
    topics = [settings.transactions_topic, settings.rekey_topic]
    try:
        rows = await group_offsets(settings.app_id, topics)
    except KafkaError as exc:
        raise SystemExit(f"lag: cannot read offsets from {settings.broker_url}: {exc}") from None
    lines, total = lag_table(rows)
    self.say(f"group {settings.app_id!r} on {settings.broker_url}:")
    for line in lines:
        self.say(line)
    url = url or f"http://localhost:{settings.web_port}"
    stats = await worker_stats(url.rstrip("/"))
    if stats is None:
        self.say(f"workers: no answer from {url}/stats (freshness unknown)")
    else:
        stats = stats.get("cluster", {})
        p50, p99 = stats.get("freshness_p50_s"), stats.get("freshness_p99_s")

        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v * 1000:.1f} ms"

        self.say(
            f"workers: {stats.get('workers_answering')}/{stats.get('workers')} answering, "
            f"rate {stats.get('rate_tx_s', 0):.1f} tx/s, freshness p50 {ms(p50)}, p99 {ms(p99)}"
        )
    if max_lag is not None and total > max_lag:
        self.say(f"lag: total {total} is above --max-lag {max_lag}")
        raise SystemExit(1)
