"""Operator commands: ``faust -A app simulate``."""
