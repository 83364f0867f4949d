"""Independent verification of an organization's audit log (ARCHITECTURE.md §6, issue 6).

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
  every receipt's signature verifies with the server's key;
- bound history (with the server's log): every log head and round spend the server
  signed into a receipt is a record of the client's log, the head being that upload's
  `update_committed` and the spend a `privacy_spend` of its round;
- the policy (when given): each DP-SGD spend's σ is the policy's, or for ``auto`` the σ
  the client's own solver (`fedhft.accounting.auto_noise_multiplier`) finds for the logged
  sample rate and steps, leaving room for the log's one-shot Gaussian releases.

Notes:
    A hash chain cannot by itself reveal that its last records were cut off at a line
    boundary, nor that its own party rewrote and re-signed it. The server's log does:
    each receipt binds the hash of the client's record at that upload (rewriting any
    earlier record changes it) and its spend record, and an upload the server accepted
    whose receipt the client log lacks, with no later bound head to show the log went
    on, is a truncated tail. A head hash an auditor noted earlier (``expected_head``)
    catches truncation too.
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

from ._chain import ChainResult, LoggedRecord, check_chain
from ._events import EventType, payload_problems
from ._findings import Check, EpsilonPoint, Finding, Severity, VerificationReport
from ._keys import key_fingerprint
from ._recompute import MechanismUse, epsilon_tolerance, recompute_epsilon
from .errors import ReceiptError
from .receipts import verify_receipt_payload

_SIGMA_RTOL = 1e-6
"""σ from the same solver on the same inputs agrees to float rounding."""

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
    if policy is not None:
        _check_noise_multipliers(chain, policy, source, report)

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
    if server_chain is not None:
        _check_bound_history(chain, server_chain, source, report)
    _check_uploads(chain, server_chain, server_public_key, source, report)
    return report


def _accepted(chain: ChainResult, server_chain: ChainResult) -> list[LoggedRecord]:
    """The server's valid `upload_accepted` records for the client log's party."""
    return [
        entry
        for entry in _of(server_chain, EventType.UPLOAD_ACCEPTED)
        if entry.record.payload["organization"] == chain.party
    ]


def _bound_heads(chain: ChainResult, server_chain: ChainResult | None) -> dict[str, int]:
    """Client record hash → its seq, for every log head the server's receipts bind."""
    if server_chain is None:
        return {}
    seqs = {entry.record.digest(): entry.record.seq for entry in chain.records}
    heads = (e.record.payload.get("audit_head_sha256") for e in _accepted(chain, server_chain))
    return {head: seqs[head] for head in heads if isinstance(head, str) and head in seqs}


def _check_bound_history(
    chain: ChainResult, server_chain: ChainResult, source: str, report: VerificationReport
) -> None:
    """Every log head and spend the server signed must be in the client log, as what the
    receipt says it is."""
    by_digest = {entry.record.digest(): entry for entry in chain.records}
    server_source = report.server_log_path or "server log"
    # Once the server log shows receipts binding history at all, an upload whose receipt
    # binds none was sent by a client that withheld its head: its history is unpinned.
    binding_in_use = any(
        "audit_head_sha256" in entry.record.payload
        for entry in _of(server_chain, EventType.UPLOAD_ACCEPTED)
    )
    for accepted in _accepted(chain, server_chain):
        payload = accepted.record.payload
        round_number, cluster, upload = _upload_key(payload)
        label = f"round {round_number}, cluster {cluster}"

        def finding(message: str, accepted: LoggedRecord = accepted) -> None:
            report.findings.append(
                Finding(
                    server_source,
                    Check.BOUND_HISTORY,
                    message,
                    line=accepted.line,
                    seq=accepted.record.seq,
                )
            )

        head = payload.get("audit_head_sha256")
        if head is None and binding_in_use:
            finding(
                f"the receipt for {label} binds no log head of `{chain.party}`, though the "
                "server's other receipts do: the client withheld it, so this log's history "
                "up to that upload is not pinned"
            )
        if isinstance(head, str):
            entry = by_digest.get(head)
            if entry is None:
                finding(
                    f"the receipt for {label} binds the client log head {head[:16]}..., which "
                    f"no record of {source} has: the log was rewritten or truncated after "
                    "that upload"
                )
            elif (
                entry.record.event != EventType.UPDATE_COMMITTED
                or not _valid(entry)
                or (_upload_key(entry.record.payload) != (round_number, cluster, upload))
            ):
                finding(
                    f"the receipt for {label} binds client record seq {entry.record.seq}, "
                    "which is not the update_committed of that upload"
                )
        spend = payload.get("spend_sha256")
        if isinstance(spend, str):
            entry = by_digest.get(spend)
            if entry is None:
                finding(
                    f"the receipt for {label} binds the round's privacy_spend record "
                    f"{spend[:16]}..., which {source} does not hold: the spend was rewritten"
                )
            elif (
                entry.record.event != EventType.PRIVACY_SPEND
                or entry.record.payload.get("round") != round_number
            ):
                finding(
                    f"the receipt for {label} binds client record seq {entry.record.seq}, "
                    f"which is not a privacy_spend of round {round_number}"
                )


def _policy_noise_multiplier(
    policy: OrganizationPolicy, payload: Mapping[str, Any], reserved: list[Mapping[str, Any]]
) -> float | None:
    """σ the policy implies for a DP-SGD spend with the logged rate and steps: the fixed
    value, or `auto` re-solved by the client's own solver; None if it cannot be solved."""
    privacy = policy.privacy
    if privacy.noise_multiplier != "auto":
        return float(privacy.noise_multiplier)
    # Imported here: the accountant pulls in Opacus and torch, which the rest of
    # verification never needs.
    from fedhft.accounting import BudgetExhaustedError, MechanismRecord, auto_noise_multiplier

    records = tuple(
        MechanismRecord(
            round=int(r["round"]),
            mechanism="gaussian",
            noise_multiplier=float(r["noise_multiplier"]),
            sample_rate=float(r["sample_rate"]),
            steps=int(r["steps"]),
            max_grad_norm=r["max_grad_norm"],
            noise_source=r["noise_source"],
        )
        for r in reserved
    )
    try:
        return auto_noise_multiplier(
            policy,
            sample_rate=float(payload["sample_rate"]),
            steps_per_round=int(payload["steps"]),
            reserved=records,
        )
    except (BudgetExhaustedError, ValueError, ArithmeticError):
        return None


def _check_noise_multipliers(
    chain: ChainResult, policy: OrganizationPolicy, source: str, report: VerificationReport
) -> None:
    """Each DP-SGD spend's σ (and steps) must be what the policy implies."""
    spends = _of(chain, EventType.PRIVACY_SPEND)
    reserved = [e.record.payload for e in spends if e.record.payload["mechanism"] == "gaussian"]
    solved: dict[tuple[float, int], float | None] = {}
    local_steps = policy.training.local_steps
    for entry in spends:
        payload = entry.record.payload
        if payload["mechanism"] != "dp-sgd":
            continue

        def finding(message: str, entry: LoggedRecord = entry) -> None:
            report.findings.append(
                Finding(
                    source, Check.NOISE_MULTIPLIER, message, line=entry.line, seq=entry.record.seq
                )
            )

        if local_steps is not None and int(payload["steps"]) != local_steps:
            finding(
                f"round {payload['round']} logs {payload['steps']} DP-SGD steps; the policy's "
                f"training.local_steps is {local_steps}"
            )
        key = (float(payload["sample_rate"]), int(payload["steps"]))
        if key not in solved:
            solved[key] = _policy_noise_multiplier(policy, payload, reserved)
        expected = solved[key]
        logged = float(payload["noise_multiplier"])
        if expected is None:
            finding(
                f"round {payload['round']}: no σ fits the policy's budget at the logged sample "
                f"rate {key[0]:g} and {key[1]} steps, yet σ = {logged:.6g} was logged"
            )
        elif not math.isclose(logged, expected, rel_tol=_SIGMA_RTOL):
            source_of = (
                "`auto` re-solved for the logged sample rate and steps"
                if policy.privacy.noise_multiplier == "auto"
                else "the policy's noise_multiplier"
            )
            finding(
                f"round {payload['round']} logs σ = {logged:.6g}, but {source_of} gives "
                f"{expected:.6g}: the spend record does not match the policy"
            )


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
    bound_heads = _bound_heads(chain, server_chain)
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
            # A later record the server bound proves the log went on past this upload
            # without its receipt (a crash before it arrived); without one, the receipt
            # may as well have been cut off the end of the log.
            went_on = any(seq > located.entry.record.seq for seq in bound_heads.values())
            report.findings.append(
                Finding(
                    source,
                    Check.RECEIPT_MISSING,
                    f"committed upload ({label}) was accepted by the server, but the client "
                    "log holds no receipt for it"
                    + (
                        " (the log went on past it: a crash before the receipt arrived?)"
                        if went_on
                        else "; nothing the server bound comes later, so the log may have "
                        "been truncated after the upload (or the client crashed before "
                        "logging the receipt and never uploaded again)"
                    ),
                    line=located.entry.line,
                    seq=located.entry.record.seq,
                    severity=Severity.WARNING if went_on else Severity.ERROR,
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
