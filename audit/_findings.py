"""Findings of an audit verification and the report that collects them.

Single checks raise (a receipt signature, resuming a broken log); a verification of a
whole log instead collects one finding per problem, each naming the file, line and
sequence number, so an auditor sees everything that is wrong in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import AuditVerificationError


class Severity(StrEnum):
    """How a finding bears on the verdict: only errors make a log fail."""

    ERROR = "error"
    WARNING = "warning"
    NOTICE = "notice"


class Check(StrEnum):
    """Which property a finding is about (stable names for scripts and the report)."""

    PARSE = "parse"
    CANONICAL = "canonical"
    SIGNATURE = "signature"
    CHAIN = "chain"
    SEQUENCE = "sequence"
    TIME = "time"
    PARTY = "party"
    PAYLOAD = "payload"
    TORN_TAIL = "torn-tail"
    HEAD = "head"
    REPAIRED = "repaired"
    EPSILON_RECOMPUTED = "epsilon-recomputed"
    EPSILON_DECREASED = "epsilon-decreased"
    BUDGET = "budget"
    POLICY = "policy"
    NOISE = "noise"
    SPEND_BEFORE_UPLOAD = "spend-before-upload"
    RECEIPT_MISSING = "receipt-missing"
    UPLOAD_MISSING = "upload-missing"
    RECEIPT_SIGNATURE = "receipt-signature"
    KEY = "key"
    BOUND_HISTORY = "bound-history"
    NOISE_MULTIPLIER = "noise-multiplier"


@dataclass(frozen=True)
class Finding:
    """One problem (or remark) about one record, or about the log as a whole."""

    source: str
    check: Check
    message: str
    line: int | None = None
    seq: int | None = None
    severity: Severity = Severity.ERROR

    def line_text(self) -> str:
        """`FILE:LINE: seq N: error [check] message`, one line for the CLI."""
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        record = "" if self.seq is None else f" seq {self.seq}:"
        return f"{where}:{record} {self.severity.value} [{self.check.value}] {self.message}"

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object."""
        return {
            "source": self.source,
            "line": self.line,
            "seq": self.seq,
            "check": self.check.value,
            "severity": self.severity.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class EpsilonPoint:
    """Cumulative ε after one `privacy_spend` record: as logged and as recomputed."""

    seq: int
    round: int
    mechanism: str
    accountant: str
    delta: float
    logged: float
    recomputed: float | None


@dataclass
class VerificationReport:
    """Everything `verify_log` established about one log (and its server counterpart)."""

    log_path: str
    party: str | None = None
    records: int = 0
    head_sha256: str | None = None
    last_seq: int | None = None
    findings: list[Finding] = field(default_factory=list)
    epsilon: list[EpsilonPoint] = field(default_factory=list)
    checked_receipts: int = 0
    server_log_path: str | None = None
    budget_epsilon: float | None = None
    budget_delta: float | None = None

    @property
    def ok(self) -> bool:
        """True when no finding is an error (warnings and notices do not fail a log)."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        """The findings of severity error."""
        return [finding for finding in self.findings if finding.severity is Severity.ERROR]

    def raise_if_failed(self) -> None:
        """Raise `AuditVerificationError` listing every error finding, if there is one."""
        if self.errors:
            raise AuditVerificationError(self.errors)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object (the `verification` part of `report.json`)."""
        return {
            "log": self.log_path,
            "server_log": self.server_log_path,
            "party": self.party,
            "records": self.records,
            "last_seq": self.last_seq,
            "head_sha256": self.head_sha256,
            "ok": self.ok,
            "checked_receipts": self.checked_receipts,
            "findings": [finding.to_json() for finding in self.findings],
        }
