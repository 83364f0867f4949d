"""Errors raised by the privacy accounting shared by organizations and auditors."""

from __future__ import annotations

from fedhft.errors import FedHFTError


class AccountingError(FedHFTError):
    """Base class of the errors raised by :mod:`fedhft.accounting`."""


class BudgetExhaustedError(AccountingError, RuntimeError):
    """A DP release would take the organization past its privacy budget.

    Raised *before* any training step or release, so nothing was spent.

    Attributes:
        spent: ε already recorded in the privacy ledger.
        requested: ε the ledger would reach if the refused release were made.
        budget: the policy's ε budget.
    """

    def __init__(self, *, spent: float, requested: float, budget: float) -> None:
        self.spent = spent
        self.requested = requested
        self.budget = budget
        super().__init__(
            f"privacy budget exhausted: spent ε={spent:.4g}, this release would bring the "
            f"total to ε={requested:.4g}, budget ε={budget:.4g}; refuse the round, raise "
            f"`privacy.noise_multiplier`, or lower the local steps or sample rate"
        )
