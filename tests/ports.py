"""Free TCP ports for servers the tests and benchmarks start.

A port the OS hands out with ``bind(0)`` comes from the kernel's ephemeral range, the very
range it also uses for the local end of outgoing connections. A server that binds it later
(a broker restarted on the same port, its controller on port + 1, a worker restarted on its
web port) can then find it taken by some client's connection: ``Address already in use``.
So the ports handed out here are below that range, where the kernel never puts a client
socket, and each is handed out once per process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 20000  # above the usual fixed service ports (9092, 19092, 8080, ...)
_handed_out: set[int] = set()
_random = random.SystemRandom()  # not the seeded module-level generator the tests may use


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", consecutive: int = 1) -> int:
    """A port ``p`` with ``p .. p + consecutive - 1`` free on ``host``, outside the ephemeral range."""
    low, high = _ephemeral_range()
    if low - _LOWEST > 1000:
        first, last = _LOWEST, low - consecutive
    else:  # an unusual range: use the ports above it
        first, last = high + 1, 65535 - consecutive
    for _ in range(500):
        port = _random.randint(first, last)
        ports = range(port, port + consecutive)
        if any(p in _handed_out for p in ports):
            continue
        if all(_bindable(host, p) for p in ports):
            _handed_out.update(ports)
            return port
    raise AssertionError(f"no {consecutive} consecutive free port(s) on {host} in {first}..{last}")
