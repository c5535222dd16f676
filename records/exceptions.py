"""Why a message was rejected at the edge (SPEC 6 ``error_type``)."""

from __future__ import annotations

from typing import Literal

ErrorType = Literal["DecodeError", "ValidationError", "LateEvent", "ProcessingError"]


class RejectedMessage(Exception):
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
