"""Code generated from `protocol/proto` by `generate.py`; do not edit."""
