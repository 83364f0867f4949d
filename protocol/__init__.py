"""Protocol code shared by client and server: secure aggregation and wire formats."""

__all__: list[str] = []
