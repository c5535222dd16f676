"""``faust -A app dlq``: dead letters (SPEC 9)."""
