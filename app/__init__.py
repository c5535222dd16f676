"""Velocity: ``faust -A app worker`` finds the App as ``app.app``."""

from app.main import app, settings

__all__ = ["app", "settings"]
