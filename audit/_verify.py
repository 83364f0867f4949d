"""Independent verification of an organization's audit log (DESIGN §6, issue 6).

`verify_log` checks, collecting one finding per problem:

- the file: every line parses, is canonical, carries a valid Ed25519 signature of the
  party's key, links to the record before it (`prev`), has the next sequence number and
  a time no earlier than the one before; a torn tail is reported; payloads follow the
  event schemas and carry nothing named like a secret;
- privacy: the ε each `privacy_spend` record claims is recomputed from the logged
  mechanism parameters (`_accounting`), never decreases, and stays within the policy's
  budget; the δ and accountant are the policy's; pseudo-random noise is flagged;
- uploads: every `update_committed` comes after a spend for its round and has a matching
  server receipt (in the client log, or accepted in the server log), every receipt and
  every server `upload_accepted` for this organization matches a committed upload, and
  every receipt's signature verifies with the server's key.

Notes:
    A hash chain cannot by itself reveal that its last records were cut off at a line
    boundary. Two things do: the receipts in the server's log (an accepted upload the
    client log lacks), and a head hash an auditor noted earlier (``expected_head``).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.policies import OrganizationPolicy, policy_hash

from ._accounting import MechanismUse, epsilon_tolerance, recompute_epsilon
from ._chain import ChainResult, LoggedRecord, check_chain
from ._events import EventType, payload_problems
from ._findings import Check, EpsilonPoint, Finding, Severity, VerificationReport
from ._keys import key_fingerprint
from ._receipts import verify_receipt_payload
from .errors import ReceiptError

UploadKey = tuple[int, int, str]
"""(round, cluster, upload_sha256): what a commitment, a receipt and an acceptance share."""


@dataclass(frozen=True)
class _Located:
    key: UploadKey
    entry: LoggedRecord


def verify_log(
    path: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey,
    server_log: str | os.PathLike[str] | None = None,
    server_public_key: Ed25519PublicKey | None = None,
    policy: OrganizationPolicy | None = None,
    expected_head: str | None = None,
    epsilon_rtol: float = 1e-3,
    epsilon_check: Literal["every", "last"] = "every",
) -> VerificationReport:
    """Verify an organization's audit log; return every finding in a report.

    ``public_key`` is the organization's identity key. With ``server_log`` (and
    ``server_public_key``) the server's log is verified too and cross-checked upload by
    upload. With ``policy`` the budget, δ and accountant are checked against it.
    ``expected_head`` is a record hash noted earlier; the log must still contain it.
    ``epsilon_check="last"`` recomputes ε only at the last spend instead of after every
    spend (for very long PRV-accounted logs, where each recomputation takes seconds);
    the logged values are then still checked for monotonicity and the budget.
    Raises `OSError` when a file cannot be read; everything else is a finding — call
    `report.raise_if_failed()` to turn errors into `AuditVerificationError`.
    """
    log_path = Path(path)
    source = str(log_path)
    chain = check_chain(log_path.read_bytes(), public_key=public_key, source=source)
    report = VerificationReport(log_path=source, party=chain.party, records=len(chain.records))
    report.findings.extend(chain.findings)
    if chain.head is not None:
        report.head_sha256 = chain.head.digest()
        report.last_seq = chain.head.seq
    if expected_head is not None:
        _check_head(chain, expected_head.lower(), source, report)
    if policy is not None:
        report.budget_epsilon = policy.privacy.epsilon
        report.budget_delta = policy.privacy.delta
        _check_policy_records(chain, policy, source, report)
    _check_privacy(chain, policy, source, report, epsilon_rtol, epsilon_check)

    server_chain: ChainResult | None = None
    if server_log is not None:
        server_path = Path(server_log)
        report.server_log_path = str(server_path)
        server_chain = check_chain(
            server_path.read_bytes(), public_key=server_public_key, source=str(server_path)
        )
        report.findings.extend(server_chain.findings)
        if server_public_key is None:
            report.findings.append(
                Finding(
                    str(server_path),
                    Check.KEY,
                    "server log signatures not checked: no server public key given",
                    severity=Severity.WARNING,
                )
            )
    _check_uploads(chain, server_chain, server_public_key, source, report)
    return report


def _valid(entry: LoggedRecord) -> bool:
    return not payload_problems(entry.record.event, entry.record.payload)


def _of(chain: ChainResult, event: EventType) -> list[LoggedRecord]:
    return [entry for entry in chain.records if entry.record.event == event and _valid(entry)]


def _check_head(
    chain: ChainResult, expected_head: str, source: str, report: VerificationReport
) -> None:
    if not any(entry.record.digest() == expected_head for entry in chain.records):
        report.findings.append(
            Finding(
                source,
                Check.HEAD,
                f"no record has the hash {expected_head[:16]}... noted earlier: the log was "
                "truncated or rewritten since",
            )
        )


def _check_policy_records(
    chain: ChainResult, policy: OrganizationPolicy, source: str, report: VerificationReport
) -> None:
    if chain.party is not None and chain.party != policy.organization:
        report.findings.append(
            Finding(
                source,
                Check.POLICY,
                f"the log is `{chain.party}`'s but the policy is `{policy.organization}`'s",
            )
        )
    loaded = _of(chain, EventType.POLICY_LOADED)
    for entry in loaded:
        payload = entry.record.payload
        if payload["consortium"] != policy.consortium:
            report.findings.append(
                Finding(
                    source,
                    Check.POLICY,
                    f"policy_loaded names consortium `{payload['consortium']}`, the policy "
                    f"`{policy.consortium}`",
                    line=entry.line,
                    seq=entry.record.seq,
                )
            )
    expected = policy_hash(policy)
    if loaded and all(entry.record.payload["policy_sha256"] != expected for entry in loaded):
        report.findings.append(
            Finding(
                source,
                Check.POLICY,
                f"no policy_loaded record carries the hash of the given policy "
                f"({expected[:16]}...): the log was produced under another policy",
                severity=Severity.WARNING,
            )
        )


def _check_privacy(
    chain: ChainResult,
    policy: OrganizationPolicy | None,
    source: str,
    report: VerificationReport,
    rtol: float,
    epsilon_check: Literal["every", "last"],
) -> None:
    uses: list[MechanismUse] = []
    last_logged: tuple[float, LoggedRecord] | None = None
    warned_pseudo = False
    spends = _of(chain, EventType.PRIVACY_SPEND)
    for index, entry in enumerate(spends):
        recompute = epsilon_check == "every" or index == len(spends) - 1
        record = entry.record
        payload = record.payload

        def finding(
            check: Check,
            message: str,
            severity: Severity = Severity.ERROR,
            entry: LoggedRecord = entry,
        ) -> None:
            report.findings.append(
                Finding(
                    source,
                    check,
                    message,
                    line=entry.line,
                    seq=entry.record.seq,
                    severity=severity,
                )
            )

        uses.append(
            MechanismUse(
                noise_multiplier=float(payload["noise_multiplier"]),
                sample_rate=float(payload["sample_rate"]),
                steps=int(payload["steps"]),
            )
        )
        accountant = str(payload["accountant"])
        delta = float(payload["delta"])
        logged = float(payload["epsilon_after"])
        recomputed: float | None = None
        if recompute:
            try:
                recomputed = recompute_epsilon(uses, accountant=accountant, delta=delta)
            except (ValueError, ArithmeticError) as exc:
                finding(Check.EPSILON_RECOMPUTED, f"ε could not be recomputed: {exc}")
        if recomputed is not None and (
            not math.isfinite(recomputed)
            or abs(logged - recomputed) > epsilon_tolerance(accountant, recomputed, rtol=rtol)
        ):
            direction = "under-reports" if logged < recomputed else "over-reports"
            finding(
                Check.EPSILON_RECOMPUTED,
                f"epsilon_after {logged:.6g} {direction} the ε recomputed from the logged "
                f"mechanisms with the {accountant} accountant at δ={delta:g}: "
                f"{recomputed:.6g}",
            )
        if last_logged is not None and logged < last_logged[0]:
            finding(
                Check.EPSILON_DECREASED,
                f"cumulative ε went down from {last_logged[0]:.6g} (line "
                f"{last_logged[1].line}) to {logged:.6g}; spent privacy never comes back",
            )
        last_logged = (logged, entry)
        report.epsilon.append(
            EpsilonPoint(
                seq=record.seq,
                round=int(payload["round"]),
                mechanism=str(payload["mechanism"]),
                accountant=accountant,
                delta=delta,
                logged=logged,
                recomputed=recomputed,
            )
        )
        if payload["noise_source"] == "pseudo" and not warned_pseudo:
            warned_pseudo = True
            finding(
                Check.NOISE,
                "noise drawn from a pseudo-random generator (experiments only): the DP "
                "guarantee does not hold against an adversary who can predict it",
                Severity.WARNING,
            )
        if policy is None:
            continue
        budget = policy.privacy
        if accountant != budget.accountant.value:
            finding(
                Check.POLICY,
                f"ε accounted with {accountant}, but the policy requires {budget.accountant.value}",
            )
        if delta > budget.delta:
            finding(
                Check.POLICY,
                f"ε reported at δ={delta:g}, weaker than the policy's δ={budget.delta:g}",
            )
        if payload["mechanism"] == "dp-sgd" and float(payload["max_grad_norm"]) != float(
            budget.max_grad_norm
        ):
            finding(
                Check.POLICY,
                f"clipping norm {payload['max_grad_norm']} differs from the policy's "
                f"max_grad_norm {budget.max_grad_norm}",
                Severity.WARNING,
            )
        at_budget = recomputed
        if recompute and (accountant != budget.accountant.value or delta != budget.delta):
            try:
                at_budget = recompute_epsilon(
                    uses, accountant=budget.accountant.value, delta=budget.delta
                )
            except (ValueError, ArithmeticError):
                at_budget = None
        spent = max(value for value in (logged, at_budget) if value is not None)
        if spent > budget.epsilon:
            finding(
                Check.BUDGET,
                f"cumulative ε {spent:.6g} exceeds the policy budget ε={budget.epsilon:g} "
                f"(δ={budget.delta:g}, {budget.accountant.value})",
            )


def _upload_key(payload: Mapping[str, Any]) -> UploadKey:
    return (int(payload["round"]), int(payload["cluster"]), str(payload["upload_sha256"]))


def _check_uploads(
    chain: ChainResult,
    server_chain: ChainResult | None,
    server_public_key: Ed25519PublicKey | None,
    source: str,
    report: VerificationReport,
) -> None:
    party = chain.party
    commits = [
        _Located(_upload_key(e.record.payload), e) for e in _of(chain, EventType.UPDATE_COMMITTED)
    ]
    receipts = [
        _Located(_upload_key(e.record.payload), e)
        for e in _of(chain, EventType.AGGREGATION_RECEIPT)
    ]
    accepted: list[_Located] = []
    if server_chain is not None:
        accepted = [
            _Located(_upload_key(e.record.payload), e)
            for e in _of(server_chain, EventType.UPLOAD_ACCEPTED)
            if e.record.payload["organization"] == party
        ]
    spend_rounds: dict[int, int] = {}
    for entry in _of(chain, EventType.PRIVACY_SPEND):
        spend_rounds.setdefault(int(entry.record.payload["round"]), entry.record.seq)

    def finding(check: Check, message: str, entry: LoggedRecord, where: str = source) -> None:
        report.findings.append(
            Finding(where, check, message, line=entry.line, seq=entry.record.seq)
        )

    # Receipts: signature, server identity, and that they are for this organization.
    expected_server = key_fingerprint(server_public_key) if server_public_key else None
    for located in receipts:
        payload = located.entry.record.payload
        if payload["organization"] != party:
            finding(
                Check.RECEIPT_SIGNATURE,
                f"receipt names organization `{payload['organization']}`, not `{party}`",
                located.entry,
            )
        if server_public_key is None:
            continue
        try:
            verify_receipt_payload(server_public_key, payload)
        except ReceiptError as exc:
            detail = (
                f" (it names server {str(payload['server'])[:16]}..., expected "
                f"{str(expected_server)[:16]}...)"
                if payload["server"] != expected_server
                else ""
            )
            finding(Check.RECEIPT_SIGNATURE, f"{exc}{detail}", located.entry)
        else:
            report.checked_receipts += 1
    if receipts and server_public_key is None:
        report.findings.append(
            Finding(
                source,
                Check.KEY,
                f"{len(receipts)} receipt signature(s) not checked: no server public key given",
                severity=Severity.WARNING,
            )
        )

    # Each commitment: spend logged before it, a receipt after it, acceptance by the server.
    receipt_pool = Counter(located.key for located in receipts)
    accepted_pool = Counter(located.key for located in accepted)
    for located in commits:
        round_number, cluster, upload = located.key
        spend_seq = spend_rounds.get(round_number)
        if spend_seq is None or spend_seq > located.entry.record.seq:
            finding(
                Check.SPEND_BEFORE_UPLOAD,
                f"update for round {round_number} committed without a privacy_spend for that "
                "round logged before it",
                located.entry,
            )
        has_receipt = receipt_pool[located.key] > 0
        has_acceptance = accepted_pool[located.key] > 0
        if has_receipt:
            receipt_pool[located.key] -= 1
        if has_acceptance:
            accepted_pool[located.key] -= 1
        label = f"round {round_number}, cluster {cluster}, upload {upload[:12]}..."
        if server_chain is None:
            if not has_receipt:
                finding(
                    Check.RECEIPT_MISSING,
                    f"committed upload ({label}) has no aggregation_receipt",
                    located.entry,
                )
            continue
        if not has_acceptance:
            finding(
                Check.RECEIPT_MISSING,
                f"committed upload ({label}) is not accepted in the server log",
                located.entry,
            )
        elif not has_receipt:
            report.findings.append(
                Finding(
                    source,
                    Check.RECEIPT_MISSING,
                    f"committed upload ({label}) was accepted by the server, but the client "
                    "log holds no receipt for it (crash before the receipt arrived?)",
                    line=located.entry.line,
                    seq=located.entry.record.seq,
                    severity=Severity.WARNING,
                )
            )
    # The other direction: receipts and acceptances must match a commitment.
    for located in receipts:
        if receipt_pool[located.key] > 0:
            receipt_pool[located.key] -= 1
            round_number, cluster, upload = located.key
            finding(
                Check.UPLOAD_MISSING,
                f"receipt for round {round_number}, cluster {cluster}, upload {upload[:12]}... "
                "matches no update_committed record",
                located.entry,
            )
    if server_chain is not None:
        server_source = report.server_log_path or "server log"
        for located in accepted:
            if accepted_pool[located.key] > 0:
                accepted_pool[located.key] -= 1
                round_number, cluster, upload = located.key
                finding(
                    Check.UPLOAD_MISSING,
                    f"server accepted an upload from `{party}` (round {round_number}, cluster "
                    f"{cluster}, upload {upload[:12]}...) that the client log does not commit "
                    "to (client log truncated or rewritten?)",
                    located.entry,
                    server_source,
                )
