"""Errors raised while writing, reading and verifying audit logs and receipts.

Every message names the file, the record (line and sequence number) or the payload field
at fault and what is allowed. None ever contains a key, a signature input or a payload
value that was refused for looking secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedhft.errors import FedHFTError

if TYPE_CHECKING:
    from ._findings import Finding


class AuditError(FedHFTError):
    """Base class of every error raised by `fedhft.audit`."""


class AuditPayloadError(AuditError, ValueError):
    """An event payload cannot go into an audit record (not JSON, too big, bad field)."""


class SecretPayloadError(AuditPayloadError):
    """A payload field is named like a secret (key, share, gradient, ...).

    Audit logs leave the organization (auditors, the consortium), so they must never
    carry raw data, gradients, keys or shares; see `audit/FORMAT.md`.
    """


class AuditLogError(AuditError, ValueError):
    """An existing log cannot be resumed: its chain or a signature does not verify."""


class TornTailError(AuditLogError):
    """The log ends in an incomplete record, as a crash during a write leaves it.

    Resuming requires `repair=True`, which truncates the torn bytes and records a
    `log_repaired` event; the torn tail is never dropped silently.
    """


class ReceiptError(AuditError, ValueError):
    """An upload receipt is malformed or its server signature does not verify."""


class KeyLoadError(AuditError, ValueError):
    """A public key or certificate file cannot be used to verify a party's records."""


class AuditVerificationError(AuditError, ValueError):
    """Verification of an audit log found problems; ``findings`` lists every one."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = list(findings)
        lines = [finding.line_text() for finding in self.findings]
        super().__init__(f"audit verification failed ({len(lines)} findings):\n" + "\n".join(lines))
