"""The benchmark harness works end to end (not a benchmark: tiny stream, figures not judged).

Runs ``bench/run.py --size smoke`` against the local Kafka: every design
starts, consumes the pre-filled topic and is measured; the Velocity
scenarios (steady traffic with lookups, cold and warm restart, heavy user,
exactly-once) and the RocksDB binding comparison (in its own venv, or
skipped with the reason when that venv cannot be built) produce figures;
the three result files are written in the documented shape. Then the
``catchup`` scenario on its own, under exactly-once. (``rolling_restart``,
about a minute even at this size, is left to ``bench/run.py --only``.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def run_bench(out: Path, *args: str, timeout: float = 420) -> dict[str, Any]:
    env = dict(os.environ, KAFKA_PORT=BOOTSTRAP.rsplit(":", 1)[1])
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--size", "smoke", *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return result


def test_runtime_venv_has_one_rocksdb_binding() -> None:
    # python-rocksdb changes Faust's behaviour by being importable; the comparison has its own venv.
    assert importlib.util.find_spec("rocksdb") is None, (
        "python-rocksdb (faust-streaming-rocksdb) is installed in the project's venv: rebuild it "
        "(rm -rf .venv && make setup)"
    )


def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--rate", "300", "--rps", "20")
    for key, fields in SHAPE.items():
        assert key in result, key
        if fields is not None:
            assert set(result[key]) == fields, key
    assert result["notes"] is not None and isinstance(result["notes"], list)
    failed = [n for n in result["notes"] if ": failed: " in n]
    assert not failed, failed
    for design, rate in result["throughput_tx_s"].items():
        assert isinstance(rate, (int, float)) and rate > 0, (design, rate, result["notes"])
    for figure in ("freshness_ms", "lookup_ms"):
        p50, p99 = result[figure]["p50"], result[figure]["p99"]
        assert p50 is not None and p99 is not None and 0 < p50 <= p99, (figure, result[figure])
    for floor in ("delivery_floor_ms", "http_floor_ms", "machine_http_floor_ms", "batch50_ms"):
        p50, p99 = result["details"]["steady"][floor]["p50"], result["details"]["steady"][floor]["p99"]
        assert p50 is not None and p99 is not None and 0 < p50 <= p99, (floor, result["details"]["steady"])
    # A throwaway catch-up warmed the broker up first (its rate is not a result).
    warmup = result["details"]["warmup"]
    assert warmup["expected"] > 0 and warmup["records"] >= warmup["expected"], warmup
    assert "warmup" not in result["throughput_tx_s"]
    # The first pair and one more, run back to back: each a ratio of the two rates.
    pairs = result["details"]["rounds"]["pairs"]
    assert len(pairs) == 2 and pairs[0]["velocity"] == result["throughput_tx_s"]["velocity"], pairs
    for pair in pairs:
        assert pair["ratio"] == pytest.approx(pair["velocity"] / pair["faust_passthrough"]), pair
    assert min(p["ratio"] for p in pairs) <= result["details"]["rounds"]["median_ratio"], pairs
    # ... and in each round an exactly-once catch-up right after the at-least-once one.
    guarantees = result["details"]["rounds"]["guarantees"]
    assert len(guarantees) == 1 and guarantees[0]["at_least_once"] == pairs[1]["velocity"], guarantees
    assert guarantees[0]["ratio"] == pytest.approx(
        guarantees[0]["exactly_once"] / guarantees[0]["at_least_once"]
    ), guarantees
    assert result["details"]["rounds"]["exactly_once_median_ratio"] == guarantees[0]["ratio"]
    sched = result["details"]["steady"]["worker_sched"]  # the worker's main thread, from /proc
    assert sched["intervals"] > 0 and 0 < sched["main_thread_cpu_cores"] <= 1.05, sched
    assert 0 <= sched["main_thread_runq_wait_share"] < 1 and sched["machine_busy_cores"] > 0, sched
    assert result["details"]["steady"]["lookup_status"] == {
        "200": result["details"]["steady"]["lookups_timed"]
    }
    assert result["details"]["steady"]["batch50_status"] == {
        "200": result["details"]["steady"]["batch50_ms"]["timed"]
    }
    assert (
        result["recovery_records_s"] > 0 and result["time_to_ready_s"] > 0 and result["rss_mb_100k_users"] > 0
    )
    recovery = result["details"]["recovery"]
    assert recovery["changelog_records"] > 0 and recovery["last_recovery"]["records"] > 0, recovery
    assert recovery["warm"]["startup_to_ready_s"] > 0, recovery
    assert result["heavy_user_ratio"] > 0
    assert result["details"]["velocity_exactly_once"]["tx_s"] > 0
    assert result["details"]["velocity_scoring_off"]["scoring_on_vs_off"] > 0
    assert result["details"]["velocity_label_log_off"]["label_log_on_vs_off"] > 0
    assert (
        result["details"]["velocity_sasl_ssl"]["sasl_ssl_vs_plaintext"] > 0
    )  # make kafka: a SASL_SSL listener
    two = result["details"]["two_workers"]
    # At-least-once: the rebalance between the two may redo some records.
    assert two["records"] >= two["expected"] and two["vs_one_worker"] > 0, two
    bindings = result["details"]["rocksdb_bindings"]
    if "skipped" in bindings:  # its venv could not be built here (no network): a reason, no figures
        assert bindings["skipped"] and result["rocksdb_binding"] == "", bindings
    else:
        assert result["rocksdb_binding"] in ("rocksdict", "python-rocksdb"), bindings
        assert bindings["rocksdict"]["process_tx_s"] > 0 and bindings["python-rocksdb"]["process_tx_s"] > 0
    table = (tmp_path / "latest.md").read_text()
    assert "| velocity |" in table and "freshness" in table
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_smoke_catchup_scenario(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "--only", "catchup", "--guarantee", "exactly_once", "--worker-nice", "3", timeout=300
    )
    assert result["meta"]["scenarios"] == ["catchup"]
    assert not [n for n in result["notes"] if ": failed: " in n], result["notes"]
    assert [n for n in result["notes"] if "nice -n 3" in n], result["notes"]
    catchup = result["details"]["catchup"]
    assert catchup["nice"] == 3, catchup
    assert catchup["guarantee"] == "exactly_once"
    assert catchup["tx_s"] > 0 and catchup["start_to_first_output_s"] > 0 and catchup["overall_tx_s"] > 0
    assert catchup["records"] >= catchup["expected"] and isinstance(catchup["dead_letters"], int), catchup
    assert "| Velocity catch-up, exactly_once |" in (tmp_path / "latest.md").read_text()
