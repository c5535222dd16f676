"""Typed records (faust.Record) and validation at the edge of the system."""

from records.exceptions import DecodeError, RejectedMessage, ValidationError
from records.transaction import DeadLetter, Transaction, UserFeatures, parse_transaction

__all__ = [
    "DeadLetter",
    "DecodeError",
    "RejectedMessage",
    "Transaction",
    "UserFeatures",
    "ValidationError",
    "parse_transaction",
]
