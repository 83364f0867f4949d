"""Signed, hash-chained audit logs and their independent verification."""

__all__: list[str] = []
