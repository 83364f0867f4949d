"""Errors raised by the organization-side SDK.

Every error derives from :class:`SdkError` (itself a :class:`fedhft.errors.FedHFTError`);
leaf errors also subclass the fitting built-in so callers may catch either.
"""

from __future__ import annotations

from fedhft.accounting import BudgetExhaustedError as BudgetExhaustedError
from fedhft.errors import FedHFTError


class SdkError(FedHFTError):
    """Base class of the errors raised by :mod:`fedhft.sdk`."""


class LedgerError(SdkError, RuntimeError):
    """The privacy ledger file is missing, corrupted, or belongs to another setting."""


class LedgerMissingError(LedgerError):
    """The privacy ledger is missing although this organization already took part.

    Attributes:
        evidence: what shows earlier participation (state files, audit records).
    """

    def __init__(self, message: str, *, evidence: tuple[str, ...]) -> None:
        self.evidence = evidence
        super().__init__(message)


class SumAlreadyEnteredError(SdkError, RuntimeError):
    """A staged update already entered a cluster's secure sum over another roster.

    Entering a second, differently composed sum with the same update would let the
    server subtract the two sums and learn the difference of the contributions.
    """


class DataError(SdkError, ValueError):
    """A data set file or its content is invalid (missing column, bad label, empty)."""


class ServerUnreachableError(SdkError, ConnectionError):
    """The aggregation server stayed unreachable through every reconnection attempt."""


class RunMismatchError(SdkError, RuntimeError):
    """The server runs another run than this organization's state records, or holds
    fewer completed rounds than this organization saw completed (its state was reset or
    restored from elsewhere)."""


class EvidenceError(SdkError, RuntimeError):
    """The privacy ledger or audit log cannot be written, or is not the file (or no
    longer holds the records) this organization's state recorded last time."""
