"""`fedhft audit ...`: verify signed audit logs and render compliance reports.

Exit status: 0 when the log verifies, 1 when verification found problems (one line per
finding, naming the file, line and record), 2 when the inputs cannot be used (missing
file, no key for the party, invalid policy).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.audit import (
    KeyLoadError,
    VerificationReport,
    build_report,
    check_chain,
    find_party_key,
    find_server_key,
    load_public_key,
    parse_time,
    verify_log,
    write_report,
)
from fedhft.policies import OrganizationPolicy, PolicyError, load_organization_policy


class EpsilonCheck(StrEnum):
    EVERY = "every"
    LAST = "last"


audit_app = typer.Typer(
    help="Verify audit logs and produce compliance reports.", no_args_is_help=True
)

LogArgument = Annotated[
    Path, typer.Argument(help="The organization's audit log (JSON Lines).", show_default=False)
]
ServerLogOption = Annotated[
    Path | None,
    typer.Option(
        "--server-log",
        help="The aggregation server's audit log: cross-checks uploads and the log heads "
        "and spends its receipts bind (catches rewritten or truncated history).",
    ),
]
PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="The organization's policy file (budget, δ, accountant, σ: `auto` re-solved).",
    ),
]
CertsOption = Annotated[
    Path | None,
    typer.Option(
        "--certs",
        help="Folder of <party>.pem / <party>.crt certificates or public keys (and "
        "optionally ca.pem / ca.crt, against which they are checked).",
    ),
]
KeyOption = Annotated[
    Path | None,
    typer.Option("--key", help="The organization's public key or certificate (overrides --certs)."),
]
ExpectHeadOption = Annotated[
    str | None,
    typer.Option("--expect-head", help="A record hash noted earlier; the log must hold it."),
]
ServerKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--server-key", help="The server's public key or certificate (overrides --certs)."
    ),
]


def _fail_input(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@dataclass(frozen=True)
class _LogFacts:
    party: str | None
    times: list[datetime]


def _facts_of(path: Path) -> _LogFacts:
    """The party a log names and the times of its first and last records (unverified:
    only used to pick the certificate, which must then verify every record)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail_input(f"cannot read {path}: {exc.strerror}")
    chain = check_chain(data, public_key=None, source=str(path))
    times: list[datetime] = []
    for entry in (chain.records[:1] + chain.records[-1:]) if chain.records else []:
        with contextlib.suppress(ValueError):
            times.append(parse_time(entry.record.time))
    return _LogFacts(party=chain.party, times=times)


@dataclass(frozen=True)
class _Inputs:
    public_key: Ed25519PublicKey
    server_public_key: Ed25519PublicKey | None
    policy: OrganizationPolicy | None
    notes: list[str]


def _resolve_inputs(
    log: Path,
    server_log: Path | None,
    policy_path: Path | None,
    certs: Path | None,
    key: Path | None,
    server_key: Path | None,
) -> _Inputs:
    for path in (log, server_log):
        if path is not None and not path.is_file():
            _fail_input(f"{path} does not exist or is not a file")
    policy = None
    if policy_path is not None:
        try:
            policy = load_organization_policy(policy_path)
        except PolicyError as exc:
            _fail_input("invalid policy:\n" + "\n".join(exc.problems))
    notes: list[str] = []
    try:
        if key is not None:
            public_key = load_public_key(key)
            notes.append(f"organization key taken as given from {key} (not checked by a CA)")
        elif certs is not None:
            facts = _facts_of(log)
            party = facts.party or (policy.organization if policy else None)
            if party is None:
                _fail_input(f"{log} has no readable record naming its party; pass --key")
            party_key = find_party_key(certs, party, at=facts.times)
            public_key = party_key.public_key
            if not party_key.ca_checked:
                notes.append(f"{party_key.source} not checked against a CA (no ca.crt in {certs})")
        else:
            _fail_input("give the organization's key: --certs DIR or --key FILE")
        server_public_key = None
        if server_key is not None:
            server_public_key = load_public_key(server_key)
            notes.append(f"server key taken as given from {server_key} (not checked by a CA)")
        elif certs is not None:
            server_facts = _facts_of(server_log) if server_log is not None else None
            try:
                server_party_key = find_server_key(
                    certs,
                    server_facts.party if server_facts else None,
                    at=server_facts.times if server_facts else (),
                )
            except KeyLoadError:
                if server_log is not None:
                    raise
                # Without a server certificate receipts stay unchecked (a warning).
            else:
                server_public_key = server_party_key.public_key
                if not server_party_key.ca_checked:
                    notes.append(
                        f"{server_party_key.source} not checked against a CA (no ca.crt in {certs})"
                    )
    except KeyLoadError as exc:
        _fail_input(str(exc))
    return _Inputs(public_key, server_public_key, policy, notes)


def _print_findings(report: VerificationReport) -> None:
    for finding in report.findings:
        typer.echo(finding.line_text())


def _summary(report: VerificationReport) -> str:
    if report.ok:
        head = f"head {report.head_sha256} (seq {report.last_seq})" if report.head_sha256 else ""
        spent = ""
        if report.epsilon:
            last = report.epsilon[-1]
            shown = last.recomputed if last.recomputed is not None else last.logged
            spent = f"; ε = {shown:.4g} at δ = {last.delta:g} ({last.accountant})"
            if report.budget_epsilon is not None:
                spent += f" of budget {report.budget_epsilon:g}"
        return f"ok: {report.log_path}: {report.records} records of `{report.party}`; {head}{spent}"
    return (
        f"FAILED: {report.log_path}: {len(report.errors)} error(s), "
        f"{len(report.findings) - len(report.errors)} other finding(s)"
    )


@audit_app.command("verify")
def verify(
    log: LogArgument,
    server_log: ServerLogOption = None,
    policy: PolicyOption = None,
    certs: CertsOption = None,
    key: KeyOption = None,
    server_key: ServerKeyOption = None,
    expect_head: ExpectHeadOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the verification report as JSON.")
    ] = False,
    epsilon_check: Annotated[
        EpsilonCheck,
        typer.Option(
            "--epsilon-check",
            help="Recompute ε after every spend, or only the last (long PRV logs).",
        ),
    ] = EpsilonCheck.EVERY,
) -> None:
    """Verify chain, signatures, ε (recomputed), budget, σ and receipts of an audit log."""
    inputs = _resolve_inputs(log, server_log, policy, certs, key, server_key)
    report = verify_log(
        log,
        public_key=inputs.public_key,
        server_log=server_log,
        server_public_key=inputs.server_public_key,
        policy=inputs.policy,
        expected_head=expect_head,
        epsilon_check="every" if epsilon_check is EpsilonCheck.EVERY else "last",
    )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        for note in inputs.notes:
            typer.echo(f"note: {note}", err=True)
        _print_findings(report)
        typer.echo(_summary(report))
    if not report.ok:
        raise typer.Exit(code=1)


@audit_app.command("report")
def report(
    log: LogArgument,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html and report.json.")],
    server_log: ServerLogOption = None,
    policy: PolicyOption = None,
    certs: CertsOption = None,
    key: KeyOption = None,
    server_key: ServerKeyOption = None,
    epsilon_check: Annotated[
        EpsilonCheck,
        typer.Option(
            "--epsilon-check",
            help="Recompute ε after every spend, or only the last (long PRV logs).",
        ),
    ] = EpsilonCheck.EVERY,
) -> None:
    """Write a compliance report (HTML with a plot of ε per round, and JSON).

    The report is written even when verification fails (it then says so); the exit
    status is that of the verification.
    """
    inputs = _resolve_inputs(log, server_log, policy, certs, key, server_key)
    document, verification = build_report(
        log,
        public_key=inputs.public_key,
        server_log=server_log,
        server_public_key=inputs.server_public_key,
        policy=inputs.policy,
        epsilon_check="every" if epsilon_check is EpsilonCheck.EVERY else "last",
    )
    for note in inputs.notes:
        typer.echo(f"note: {note}", err=True)
    html_path, json_path = write_report(document, out)
    typer.echo(f"wrote {html_path} and {json_path}")
    typer.echo(_summary(verification))
    if not verification.ok:
        raise typer.Exit(code=1)
