"""The RocksDB bindings comparison, run in a virtualenv of its own.

python-rocksdb (``faust-streaming-rocksdb``) changes Faust's behaviour just by
being importable (see bench/rocksdb_bindings.py), so the project's venv has
one RocksDB binding, rocksdict, and never imports ``rocksdb``. The
comparison needs both: :func:`compare` builds, once, a separate venv with
the pinned :data:`REQUIREMENTS` under ``$VELOCITY_CACHE`` (default
``~/.cache/velocity``, where scripts/kafka.sh caches the broker) and runs
bench/rocksdb_bindings.py there in a subprocess, which prints its result as
one JSON line. When the venv cannot be built (no network, no ``ensurepip``),
:func:`compare` returns ``{"skipped": reason}`` instead of figures.

    .venv/bin/python -m bench.run --only rocksdb_bindings   # through the suite
    .venv/bin/python -m bench.rocksdb_env --users 10000 --ops 100000   # on its own
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUIREMENTS = ("faust-streaming==0.15.3", "rocksdict==0.3.29", "faust-streaming-rocksdb==0.9.3")
SCRIPT = Path(__file__).resolve().with_name("rocksdb_bindings.py")
BUILD_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 1800.0


class EnvUnavailable(Exception):
    """The comparison's venv could not be built; the message says why."""


def venv_dir() -> Path:
    cache = os.environ.get("VELOCITY_CACHE") or str(Path.home() / ".cache" / "velocity")
    return Path(cache) / "bench-rocksdb-venv"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _stamp() -> str:
    return "\n".join(REQUIREMENTS) + "\n"


def _isolated_env() -> dict[str, str]:
    """The caller's environment without anything that would let the venv see the project's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def _step(argv: list[str], deadline: float, what: str) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise EnvUnavailable(f"{what}: out of time")
    try:
        proc = subprocess.run(
            argv, env=_isolated_env(), capture_output=True, text=True, timeout=remaining, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnvUnavailable(f"{what}: timed out") from None
    except OSError as exc:
        raise EnvUnavailable(f"{what}: {exc}") from None
    if proc.returncode != 0:
        raise EnvUnavailable(
            f"{what} exited with {proc.returncode}: {_last_line(proc.stderr or proc.stdout)}"
        )


def ensure_venv(timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """The comparison's venv, built on first use (or when :data:`REQUIREMENTS` change); its path.

    A lock next to it serialises concurrent runs; the stamp file, written
    last, lists the requirements a complete build installed.
    """
    venv = venv_dir()
    stamp = venv / "velocity-requirements.txt"
    deadline = time.monotonic() + timeout_s
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvUnavailable(f"{venv} is being built by another run (lock held)") from None
                time.sleep(1.0)
        if stamp.is_file() and stamp.read_text() == _stamp() and _python(venv).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        try:
            # The interpreter behind the project's venv, so both run the same Python.
            _step([sys.executable, "-m", "venv", str(venv)], deadline, "python -m venv")
            pip = [str(_python(venv)), "-m", "pip", "--disable-pip-version-check", "--no-input"]
            _step([*pip, "install", "-q", *REQUIREMENTS], deadline, "pip install " + " ".join(REQUIREMENTS))
            _step([str(_python(venv)), "-c", "import faust, rocksdict, rocksdb"], deadline, "import check")
        except EnvUnavailable:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        stamp.write_text(_stamp())
    return venv


def compare(
    n_users: int, n_ops: int, restore_keys: int, rounds: int = 1, timeout_s: float = RUN_TIMEOUT_S
) -> dict[str, Any]:
    """rocksdb_bindings.compare() in the comparison's venv; ``{"skipped": reason}`` without one.

    A venv that exists but whose run fails raises (a broken benchmark, not a missing environment).
    """
    try:
        venv = ensure_venv()
    except EnvUnavailable as exc:
        return {"skipped": f"no venv for the comparison at {venv_dir()}: {exc}"}
    argv = [
        str(_python(venv)),
        str(SCRIPT),
        "--users",
        str(n_users),
        "--ops",
        str(n_ops),
        "--restore-keys",
        str(restore_keys),
        "--rounds",
        str(rounds),
        "--json",
    ]
    # A scratch working directory: nothing of the repository is importable from the venv.
    with tempfile.TemporaryDirectory(prefix="rocksdb-bindings-") as cwd:
        proc = subprocess.run(
            argv, cwd=cwd, env=_isolated_env(), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"rocksdb_bindings.py exited with {proc.returncode}: {_last_line(proc.stderr)}")
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"rocksdb_bindings.py printed no JSON result: {_last_line(proc.stdout)}")
    result: dict[str, Any] = json.loads(line)
    result["venv"] = str(venv)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--restore-keys", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1, help="best of N rounds")
    args = ap.parse_args()
    print(json.dumps(compare(args.users, args.ops, args.restore_keys, args.rounds), indent=2))


if __name__ == "__main__":
    main()
