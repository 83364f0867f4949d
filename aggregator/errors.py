"""Errors raised by the aggregation server."""

from fedhft.errors import FedHFTError


class AggregatorError(FedHFTError):
    """Base class of the aggregation server's errors."""


class StateError(AggregatorError, RuntimeError):
    """The state folder cannot be used: missing without ``--new-run``, empty, damaged,
    incomplete, another consortium's, or of another schema version."""


class RoundError(AggregatorError, RuntimeError):
    """A round cannot proceed (too few participants, a stage that did not complete)."""
