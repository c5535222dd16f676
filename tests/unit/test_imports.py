"""Importing settings, records or the window core builds nothing and pulls in no Faust.

Each case runs in a fresh interpreter, since this one has imported the App already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import {modules}
built = sorted(m for m in ("app.main", "agents.features", "tables.user_state") if m in sys.modules)
heavy = sorted(m for m in ("faust", "aiokafka", "rocksdict", "aiohttp", "mode") if m in sys.modules)
print(built, heavy)
"""


@pytest.mark.parametrize(
    ("modules", "faust_allowed"),
    [
        ("app.settings", False),
        ("records.errors, records.transaction", False),
        ("tables.window", False),
        ("app.metrics", False),
        ("app, records", False),
        ("records.schema", True),  # the published Faust records: Faust, but no App
    ],
)
def test_import_has_no_side_effects(modules: str, faust_allowed: bool) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=modules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin", "BROKER_URL": "not a url; and an empty server;"},
    ).stdout.strip()
    built, heavy = out.split("] [")
    assert built == "[", f"importing {modules} built the App: {out}"
    if not faust_allowed:
        assert heavy == "]", f"importing {modules} imported {heavy}"
