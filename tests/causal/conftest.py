"""Fixtures of the causal-LM tests (built in `tiny_causal`)."""

from tiny_causal import tiny_causal as tiny_causal
from tiny_causal import tiny_causal_models as tiny_causal_models
