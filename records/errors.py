"""Every error Velocity raises on purpose, under one root.

The dead-letter error types of SPEC 6 are defined here, once: each is the
``error_type`` of a :class:`RejectedMessage` subclass, and :data:`ERROR_TYPES`
lists them for metrics and summaries.
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorType = Literal["DecodeError", "ValidationError", "LateEvent", "ProcessingError"]

#: The SPEC 6 ``error_type`` values, in the order metrics and pages list them.
ERROR_TYPES: tuple[ErrorType, ...] = get_args(ErrorType)


class VelocityError(Exception):
    """The root of Velocity's own errors."""


class RejectedMessage(VelocityError):
    """A message that cannot be accepted; it goes to the dead-letter topic."""

    error_type: ErrorType = "ProcessingError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DecodeError(RejectedMessage):
    """Not strict JSON, or not a JSON object."""

    error_type: ErrorType = "DecodeError"


class ValidationError(RejectedMessage):
    """A field breaks a rule of SPEC 3."""

    error_type: ErrorType = "ValidationError"


class LateEvent(RejectedMessage):
    """Older than the user's latest timestamp minus ``ALLOWED_LATENESS_S`` (SPEC 4)."""

    error_type: ErrorType = "LateEvent"


class ProcessingError(RejectedMessage):
    """Anything unexpected while processing a message; the stream goes on."""

    error_type: ErrorType = "ProcessingError"


class StateCorruptError(VelocityError, ValueError):
    """A stored head or chunk of a user's state could not be decoded."""


class SettingsError(VelocityError, ValueError):
    """A bad configuration value; the message names the variable."""


class TopicMismatchError(VelocityError):
    """An existing co-partitioned topic has the wrong number of partitions."""
