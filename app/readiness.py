"""Whether this worker is ready (SPEC 7 ``/ready``), and which input partitions it owns."""

from __future__ import annotations

from typing import Any

from app.faust_ext import connect, recovery_completed
from app.main import app, settings


class Readiness:
    """Ready = partitions assigned once, table recovery finished, and not rebalancing now."""

    def __init__(self) -> None:
        self._assigned_once = False

    async def on_partitions_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self._assigned_once = True

    def is_ready(self) -> bool:
        return bool(
            self._assigned_once and recovery_completed(app) and not app.rebalancing and not app.in_recovery
        )


readiness = Readiness()
connect(app.on_partitions_assigned, readiness.on_partitions_assigned)


def is_ready() -> bool:
    return readiness.is_ready()


def input_topics() -> tuple[str, str]:
    return settings.transactions_topic, settings.rekey_topic


def owned_partitions() -> list[int]:
    """Partitions of the input topic this worker actively owns (standbys excluded)."""
    return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.transactions_topic)
