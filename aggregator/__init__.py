"""The consortium's aggregation server."""

__all__: list[str] = []
