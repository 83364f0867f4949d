"""Errors raised by the simulations."""

from fedhft.errors import FedHFTError


class SimulationError(FedHFTError, RuntimeError):
    """A simulation cannot run or cannot continue."""


class RayUnavailableError(SimulationError, ImportError):
    """The Ray engine was asked for but Ray is not installed."""
