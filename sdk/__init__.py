"""The organization-side SDK: masked adapters, DP-SGD training, privacy ledger."""

__all__: list[str] = []
