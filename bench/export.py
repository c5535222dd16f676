"""``make bench-export``: how fast ``faust -A app export`` turns retained history into a training set.

Writes N simulated transactions (default 1,000,000: 100,000 users over 23 h,
the benchmark suite's stream) to a fresh topic, then runs the real command
(``faust -A app export``) to Parquet and to CSV, and reports rows/s of each
(wall clock of the whole process, startup included) and its peak RSS.
Results go to ``bench/results/export.json`` and ``export.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import (
    FAUST,
    PARTITIONS,
    REPO,
    Proc,
    StreamSpec,
    base_env,
    bootstrap,
    create_topics,
    generate,
    prefill,
)

RESULTS = REPO / "bench" / "results"


def run_export(topic: str, output: Path) -> dict[str, Any]:
    env = base_env()
    env.update(
        BROKER_URL=f"kafka://{bootstrap()}",
        APP_ID=f"bench-export-{uuid.uuid4().hex[:6]}",
        TRANSACTIONS_TOPIC=topic,
        TOPIC_PARTITIONS=str(PARTITIONS),
    )
    started = time.monotonic()
    log = output.with_suffix(".log")
    proc = Proc.start("export", [FAUST, "-A", "app", "export", "--output", str(output)], env, log)
    samples: list[float] = []
    while proc.alive():
        samples.append(proc.rss_mb() or 0.0)
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    text = log.read_text()
    if proc.popen.returncode != 0:
        raise SystemExit(f"bench-export: the export failed:\n{text}")
    summary = next(line for line in text.splitlines() if line.startswith("export: ") and " rows " in line)
    rows = int(summary.split()[1])
    return {
        "format": output.suffix.lstrip("."),
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed),
        "bytes": output.stat().st_size,
        "peak_rss_mb": round(max(samples, default=0.0), 1),  # VmRSS sampled every 0.5 s
        "median_rss_mb": round(sorted(samples)[len(samples) // 2], 1) if samples else None,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--topic", help="export this existing topic instead of producing a new one")
    args = parser.parse_args()
    topic = args.topic or f"bench-export-{uuid.uuid4().hex[:8]}"
    if not args.topic:
        print(f"bench-export: {args.transactions} transactions of {args.users} users to {topic}", flush=True)
        messages = generate(StreamSpec(users=args.users, messages=args.transactions), uuid.uuid4().hex[:6])
        asyncio.run(create_topics([topic]))
        started = time.monotonic()
        asyncio.run(prefill(topic, messages))
        print(f"bench-export: produced in {time.monotonic() - started:.1f}s", flush=True)
        del messages
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name in ("train.parquet", "train.csv"):
            result = run_export(topic, Path(tmp) / name)
            print(f"bench-export: {json.dumps(result)}", flush=True)
            runs.append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"transactions": args.transactions, "users": args.users, "partitions": PARTITIONS, "runs": runs}
    (RESULTS / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# faust -A app export: {args.transactions:,} transactions, {args.users:,} users, "
        f"{PARTITIONS} partitions",
        "",
        "| format | rows | seconds (whole process) | rows/s | file size | peak RSS | median RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['format']} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']:,} | "
            f"{r['bytes'] / 1e6:.1f} MB | {r['peak_rss_mb']} MB | {r['median_rss_mb']} MB |"
        )
    (RESULTS / "export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
