"""Benchmark design: Faust with no state -- the floor of Faust itself.

One agent reads the input topic as raw bytes, decodes each value with orjson
and publishes one small JSON record per message (``user_id``,
``transaction_id``, ``computed_at``), keyed by ``user_id``, to the output
topic. No table, no validation, no dead letters: whatever a stateful design
costs on top of this is the price of its state, not of Faust.

Faust settings are the defaults except what the harness needs: broker, app
id, datadir, web port on 127.0.0.1, ``topic_partitions=8`` and
``consumer_auto_offset_reset="earliest"`` (a fresh app id must read the
pre-filled topic from its start) -- and the transport tuning Velocity ships
(producer linger 20 ms, 256 KiB batches, 8 MiB fetches, 5,000 records per
poll), so that the ratio Velocity / pass-through measures what Velocity's
work costs, not the tuning (with Faust's defaults this agent is slower:
1,844 vs 2,923 tx/s with linger 0 vs 5 ms in one side-by-side run).

Run from the repository root (configuration from the environment, see
:func:`command` for the argv)::

    BENCH_BOOTSTRAP=localhost:9092 BENCH_INPUT=tx-x BENCH_OUTPUT=out-x \\
    BENCH_GROUP=bench-x BENCH_DATADIR=/tmp/x BENCH_WEB_PORT=36100 \\
    .venv/bin/faust -A bench.designs.faust_passthrough worker -l info

``-l info``: Faust rejects ``-l warning`` (its choices are crit, error, warn,
info, debug; exit status 2), and at ``warn`` or above its worker keeps its
terminal spinner and, for it, sets the root logger to DEBUG
(``faust.worker.Worker._setup_spinner_handler``), so every library debug call
builds a log record: measured ~20-40% slower than ``-l info`` here, though
nothing more is printed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import faust
import orjson

BOOTSTRAP = os.environ.get("BENCH_BOOTSTRAP", "localhost:9092")
INPUT = os.environ.get("BENCH_INPUT", "bench-input")
OUTPUT = os.environ.get("BENCH_OUTPUT", "bench-output")
GROUP = os.environ.get("BENCH_GROUP", "bench-faust-passthrough")
DATADIR = os.environ.get("BENCH_DATADIR", "/tmp/bench-faust-passthrough")
WEB_PORT = int(os.environ.get("BENCH_WEB_PORT", "6066"))
PARTITIONS = 8


def command(faust: str) -> list[str]:
    """The worker's argv, to run from the repository root with the BENCH_* environment."""
    return [faust, "-A", "bench.designs.faust_passthrough", "worker", "-l", "info"]


app = faust.App(
    GROUP,
    broker=f"kafka://{BOOTSTRAP}",
    datadir=DATADIR,
    web_port=WEB_PORT,
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    topic_partitions=PARTITIONS,
    consumer_auto_offset_reset="earliest",
    # Velocity's transport settings (app/settings.py defaults), see above.
    producer_linger=0.020,
    producer_max_batch_size=262_144,
    consumer_max_fetch_size=8 * 1024 * 1024,
    broker_max_poll_records=5000,
)

_raw: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
input_topic = app.topic(INPUT, partitions=PARTITIONS, **_raw)
output_topic = app.topic(OUTPUT, partitions=PARTITIONS, **_raw)


@app.agent(input_topic)
async def passthrough(stream: faust.StreamT[bytes]) -> None:
    # The broker does not auto-create topics: make sure the output exists
    # (a no-op when the harness created it) before the first record.
    await output_topic.maybe_declare()
    async for value in stream:
        tx = orjson.loads(value)
        user_id = tx["user_id"]
        record = {
            "user_id": user_id,
            "transaction_id": tx["transaction_id"],
            "computed_at": time.time(),
        }
        await output_topic.send(key=user_id.encode("utf-8"), value=orjson.dumps(record))
