"""Operator commands: ``faust -A app simulate``."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from faust.cli import option

from app.kafka_admin import bootstrap_servers, ensure_topics
from app.main import app, settings, topic_specs
from app.simulator import TrafficConfig, TrafficModel

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
) -> None:
    """Produce realistic synthetic transactions to the input topic."""
    if rate <= 0:
        raise SystemExit("simulate: --rate must be > 0")
    await ensure_topics(settings.broker_url, topic_specs(settings))
    model = TrafficModel(
        TrafficConfig(
            users=users,
            heavy_users=heavy_users,
            fraud_burst_every=fraud_every,
            out_of_order_share=out_of_order,
            seed=seed,
            run_id=f"{seed}-{secrets.token_hex(4)}",
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker_url), linger_ms=5)
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
            now = time.monotonic()
            if now - last_report >= progress_every:
                self.say(
                    f"simulate: sent {sent} ({(sent - sent_at_report) / (now - last_report):.0f} tx/s), "
                    f"fraud bursts {model.bursts}, elapsed {now - started:.0f}s"
                )
                last_report, sent_at_report = now, sent
            await asyncio.sleep(TICK_S)
        await producer.flush()
    finally:
        await producer.stop()
    total = time.monotonic() - started
    self.say(
        f"simulate: done, {sent} transactions in {total:.1f}s ({sent / total:.0f} tx/s), "
        f"{model.bursts} fraud bursts"
    )
