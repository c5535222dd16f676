"""How long a process's main thread waited for a CPU while it could run (Linux scheduler statistics).

``/proc/<pid>/schedstat`` holds, for the process's main thread, the CPU time
it got and the time it spent runnable on a run queue without a CPU (both in
nanoseconds); ``/proc/stat`` the machine's busy and idle time. Sampled every
100 ms during the steady scenario, they say how much of a latency tail is the
worker not being on a CPU at all -- time no code of the worker can win back.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import quantile

INTERVAL_S = 0.1


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    cpu_ns: int  # the main thread's CPU time
    wait_ns: int  # the main thread's time runnable but waiting for a CPU
    busy_ticks: int  # the machine's non-idle time (all CPUs, clock ticks)
    all_ticks: int


def read_sample(pid: int, proc: Path = Path("/proc")) -> Sample | None:
    """The main thread's and the machine's counters now (None: the process or /proc is gone)."""
    try:
        cpu_ns, wait_ns, _ = (proc / str(pid) / "schedstat").read_text().split()[:3]
        fields = [int(x) for x in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return Sample(time.monotonic(), int(cpu_ns), int(wait_ns), sum(fields) - idle, sum(fields))


def summarize(samples: list[Sample], cpus: int) -> dict[str, Any]:
    """Shares of the wall time, and the run-queue wait per 100 ms interval (p50, p99, worst)."""
    if len(samples) < 2:
        return {"intervals": 0}
    first, last = samples[0], samples[-1]
    wall_ns = (last.t - first.t) * 1e9
    per_100ms = [
        (b.wait_ns - a.wait_ns) / 1e6 * (INTERVAL_S / (b.t - a.t))
        for a, b in itertools.pairwise(samples)
        if b.t > a.t
    ]

    def q(p: float) -> float:
        return round(quantile(per_100ms, p) or 0.0, 2)  # the bench's one quantile rule

    ticks = last.all_ticks - first.all_ticks
    return {
        "intervals": len(per_100ms),
        "main_thread_cpu_cores": round((last.cpu_ns - first.cpu_ns) / wall_ns, 3),
        "main_thread_runq_wait_share": round((last.wait_ns - first.wait_ns) / wall_ns, 3),
        "runq_wait_ms_per_100ms": {"p50": q(0.5), "p99": q(0.99), "max": round(max(per_100ms), 2)},
        "machine_busy_cores": round(cpus * (last.busy_ticks - first.busy_ticks) / ticks, 2)
        if ticks
        else None,
    }


class SchedWatch:
    """Samples ``pid`` every 100 ms in a thread of its own, between :meth:`start` and :meth:`stop`."""

    def __init__(self, pid: int, cpus: int) -> None:
        self.pid = pid
        self.cpus = cpus
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sched-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = read_sample(self.pid)
            if sample is None:
                return
            self.samples.append(sample)
            self._stop.wait(INTERVAL_S)

    def start(self) -> SchedWatch:
        self._thread.start()
        return self

    def stop(self, since: float | None = None) -> dict[str, Any]:
        """Stop sampling; the summary of the samples from ``since`` (time.monotonic()) on."""
        self._stop.set()
        self._thread.join(timeout=5)
        kept = [s for s in self.samples if since is None or s.t >= since]
        return summarize(kept, self.cpus)
