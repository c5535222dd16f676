"""bench/sched.py: the steady scenario's account of the worker's time without a CPU."""

from __future__ import annotations

import os
from pathlib import Path

from bench.sched import Sample, read_sample, summarize


def _samples(
    waits_ms: list[float], cpu_ms_each: float, busy_ticks_each: int, all_ticks_each: int
) -> list[Sample]:
    out, t, cpu, wait, busy, total = [], 0.0, 0, 0, 0, 0
    out.append(Sample(t, cpu, wait, busy, total))
    for w in waits_ms:
        t += 0.1
        cpu += int(cpu_ms_each * 1e6)
        wait += int(w * 1e6)
        busy += busy_ticks_each
        total += all_ticks_each
        out.append(Sample(t, cpu, wait, busy, total))
    return out


def test_shares_and_the_wait_per_interval() -> None:
    waits = [0.0] * 90 + [10.0] * 9 + [60.0]  # 100 intervals of 100 ms: 10 s
    summary = summarize(_samples(waits, cpu_ms_each=50.0, busy_ticks_each=3, all_ticks_each=4), cpus=2)
    assert summary["intervals"] == 100
    assert summary["main_thread_cpu_cores"] == 0.5  # 50 ms of every 100
    assert summary["main_thread_runq_wait_share"] == round((9 * 10 + 60) / 10_000, 3)
    # bench.harness.quantile: the 99th percentile of 100 intervals is the 99th of them (rank 98 from 0).
    assert summary["runq_wait_ms_per_100ms"] == {"p50": 0.0, "p99": 10.0, "max": 60.0}
    assert summary["machine_busy_cores"] == 1.5  # 3 of every 4 ticks busy, on 2 CPUs


def test_an_interval_longer_than_100_ms_counts_per_100_ms() -> None:
    samples = [Sample(0.0, 0, 0, 0, 0), Sample(0.2, 0, int(30e6), 0, 1)]  # 30 ms waited in 200 ms
    assert summarize(samples, cpus=1)["runq_wait_ms_per_100ms"]["max"] == 15.0


def test_too_few_samples_say_so() -> None:
    assert summarize([Sample(0.0, 0, 0, 0, 0)], cpus=2) == {"intervals": 0}


def test_reads_the_main_thread_and_the_machine(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "schedstat").write_text("1500 700 9\n")
    (tmp_path / "stat").write_text("cpu  10 2 3 80 5 0 1 0 0 0\ncpu0 5 1 1 40 2 0 0 0 0 0\n")
    sample = read_sample(42, proc=tmp_path)
    assert sample is not None
    assert (sample.cpu_ns, sample.wait_ns) == (1500, 700)
    assert (sample.busy_ticks, sample.all_ticks) == (10 + 2 + 3 + 1, 101)  # idle 80 and iowait 5 are not busy
    assert read_sample(43, proc=tmp_path) is None  # gone


def test_reads_this_process_on_linux() -> None:
    sample = read_sample(os.getpid())
    if Path("/proc/self/schedstat").exists():  # the bench runs on Linux; elsewhere there is nothing to read
        assert sample is not None and sample.cpu_ns > 0 and sample.all_ticks > 0
    else:
        assert sample is None
