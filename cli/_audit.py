"""`fedhft audit ...`: verify signed audit logs and render compliance reports.

Exit status: 0 when the log verifies, 1 when verification found problems (one line per
finding, naming the file, line and record), 2 when the inputs cannot be used (missing
file, no key for the party, invalid policy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.audit import (
    KeyLoadError,
    VerificationReport,
    find_party_key,
    find_server_key,
    load_public_key,
    verify_log,
)
from fedhft.audit._chain import check_chain
from fedhft.audit._report import build_report, write_report
from fedhft.policies import OrganizationPolicy, PolicyError, load_organization_policy

audit_app = typer.Typer(
    help="Verify audit logs and produce compliance reports.", no_args_is_help=True
)

LogArgument = Annotated[
    Path, typer.Argument(help="The organization's audit log (JSON Lines).", show_default=False)
]
ServerLogOption = Annotated[
    Path | None,
    typer.Option("--server-log", help="The aggregation server's audit log, to cross-check."),
]
PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="The organization's policy file (budget, δ, accountant)."),
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
ServerKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--server-key", help="The server's public key or certificate (overrides --certs)."
    ),
]


def _fail_input(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _party_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail_input(f"cannot read {path}: {exc.strerror}")
    return check_chain(data, public_key=None, source=str(path)).party


def _resolve_inputs(
    log: Path,
    server_log: Path | None,
    policy_path: Path | None,
    certs: Path | None,
    key: Path | None,
    server_key: Path | None,
) -> tuple[Ed25519PublicKey, Ed25519PublicKey | None, OrganizationPolicy | None]:
    for path in (log, server_log):
        if path is not None and not path.is_file():
            _fail_input(f"{path} does not exist or is not a file")
    policy = None
    if policy_path is not None:
        try:
            policy = load_organization_policy(policy_path)
        except PolicyError as exc:
            _fail_input("invalid policy:\n" + "\n".join(exc.problems))
    try:
        if key is not None:
            public_key = load_public_key(key)
        elif certs is not None:
            party = _party_of(log) or (policy.organization if policy else None)
            if party is None:
                _fail_input(f"{log} has no readable record naming its party; pass --key")
            public_key = find_party_key(certs, party).public_key
        else:
            _fail_input("give the organization's key: --certs DIR or --key FILE")
        server_public_key = None
        if server_key is not None:
            server_public_key = load_public_key(server_key)
        elif certs is not None:
            server_party = _party_of(server_log) if server_log is not None else None
            try:
                server_public_key = find_server_key(certs, server_party).public_key
            except KeyLoadError:
                if server_log is not None:
                    raise
                # Without a server certificate receipts stay unchecked (a warning).
                server_public_key = None
    except KeyLoadError as exc:
        _fail_input(str(exc))
    return public_key, server_public_key, policy


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
    expect_head: Annotated[
        str | None,
        typer.Option("--expect-head", help="A record hash noted earlier; the log must hold it."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the verification report as JSON.")
    ] = False,
) -> None:
    """Verify chain, signatures, ε (recomputed), budget and receipts of an audit log."""
    public_key, server_public_key, organization_policy = _resolve_inputs(
        log, server_log, policy, certs, key, server_key
    )
    report = verify_log(
        log,
        public_key=public_key,
        server_log=server_log,
        server_public_key=server_public_key,
        policy=organization_policy,
        expected_head=expect_head,
    )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
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
) -> None:
    """Write a compliance report (HTML with a plot of ε per round, and JSON).

    The report is written even when verification fails (it then says so); the exit
    status is that of the verification.
    """
    public_key, server_public_key, organization_policy = _resolve_inputs(
        log, server_log, policy, certs, key, server_key
    )
    document, verification = build_report(
        log,
        public_key=public_key,
        server_log=server_log,
        server_public_key=server_public_key,
        policy=organization_policy,
    )
    html_path, json_path = write_report(document, out)
    typer.echo(f"wrote {html_path} and {json_path}")
    typer.echo(_summary(verification))
    if not verification.ok:
        raise typer.Exit(code=1)
