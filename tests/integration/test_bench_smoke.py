"""The benchmark harness works end to end (not a benchmark: tiny stream, figures not judged).

Runs ``bench/run.py --size smoke`` against the local Kafka: every design
starts, consumes the pre-filled topic and is measured; the Velocity
scenarios (steady traffic with lookups, cold recovery, heavy user) and the
RocksDB binding comparison produce figures; the three result files are
written in the documented shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import BOOTSTRAP

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHAPE = {
    "throughput_tx_s": {
        "velocity",
        "faust_passthrough",
        "seed_faust_hopping",
        "seed_redis",
        "quix_streams",
        "aiokafka_raw_consume",
    },
    "heavy_user_ratio": None,
    "freshness_ms": {"rate_tx_s", "p50", "p99"},
    "lookup_ms": {"rps", "p50", "p99"},
    "recovery_records_s": None,
    "time_to_ready_s": None,
    "rss_mb_100k_users": None,
    "rocksdb_binding": None,
    "notes": None,
}


def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    env = dict(os.environ, KAFKA_PORT=BOOTSTRAP.rsplit(":", 1)[1])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--size",
            "smoke",
            "--rate",
            "300",
            "--rps",
            "20",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    for key, fields in SHAPE.items():
        assert key in result, key
        if fields is not None:
            assert set(result[key]) == fields, key
    assert result["notes"] is not None and isinstance(result["notes"], list)
    failed = [n for n in result["notes"] if "failed" in n]
    assert not failed, failed
    for design, rate in result["throughput_tx_s"].items():
        assert isinstance(rate, (int, float)) and rate > 0, (design, rate, result["notes"])
    for figure in ("freshness_ms", "lookup_ms"):
        p50, p99 = result[figure]["p50"], result[figure]["p99"]
        assert p50 is not None and p99 is not None and 0 < p50 <= p99, (figure, result[figure])
    assert result["details"]["steady"]["lookup_status"] == {
        "200": result["details"]["steady"]["lookups_timed"]
    }
    assert (
        result["recovery_records_s"] > 0 and result["time_to_ready_s"] > 0 and result["rss_mb_100k_users"] > 0
    )
    assert result["heavy_user_ratio"] > 0
    assert result["rocksdb_binding"] in ("rocksdict", "python-rocksdb")
    table = (tmp_path / "latest.md").read_text()
    assert "| velocity |" in table and "freshness" in table
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
