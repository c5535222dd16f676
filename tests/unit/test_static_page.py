"""The live page works offline: everything it loads is served by the worker itself."""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"


def test_page_loads_nothing_from_another_host() -> None:
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert refs, "the page references its scripts and styles"
    for ref in refs:
        assert ref.startswith("/static/") or ref.startswith("data:"), ref
        if ref.startswith("/static/"):
            assert (STATIC / ref.removeprefix("/static/")).is_file(), ref
    js = (STATIC / "dashboard.js").read_text()
    assert not re.search(r"https?://", js), "the page script talks only to its own worker"


def test_the_page_sends_the_token_of_its_fragment_on_every_data_call() -> None:
    """With HTTP_AUTH_TOKENS_FILE, /#token=<ops token> lets the page's own calls through (README)."""
    js = (STATIC / "dashboard.js").read_text()
    assert 'new URLSearchParams(location.hash.slice(1)).get("token")' in js
    calls = re.findall(r"fetch\(([^;]+)\);", js)
    assert len(calls) == 2 and all("headers: AUTH" in c for c in calls), calls
