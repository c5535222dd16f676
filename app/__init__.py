"""Velocity's Faust app: ``faust -A app worker`` finds it as ``app.app``.

Importing this package (or ``app.settings``) builds nothing: the App is
built when ``app.app`` is first asked for, by Faust or by ``app.main``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.main import app

        return app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
