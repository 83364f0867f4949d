"""Fixtures of the example tests (the helpers are in `example_helpers`)."""

from example_helpers import example_env as example_env
