"""`fedhft ledger rebuild`: restore a lost privacy ledger from the verified audit log.

The audit log is verified first (chain, signatures, ε recomputed from the logged
mechanism parameters, the policy's budget, δ and accountant); only a log without errors
is used. Every `privacy_spend` record (DP-SGD rounds and one-shot Gaussian releases)
becomes one ledger record, so the rebuilt ledger's ε is the audit log's. An existing
ledger is never replaced without ``--force``.

With ``--state`` the rebuilt records are checked against the client's evidence record
(`fedhft.sdk.privacy.check_rebuilt_ledger`): a rebuild from the complete audit log
reproduces the lost ledger's records exactly and the client starts on it; one from an
older audit log is refused before anything is written.

Exit status: 0 when the ledger was written, 1 when the audit log fails verification, the
ε of the rebuilt ledger disagrees with it or the rebuilt ledger lacks releases the state
folder recorded, 2 when the inputs cannot be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedhft.accounting import MechanismRecord, compute_epsilon
from fedhft.audit import (
    EventType,
    check_chain,
    epsilon_tolerance,
    payload_problems,
    verify_log,
)
from fedhft.policies import Accountant
from fedhft.sdk import EvidenceError, LedgerError, PrivacyLedger
from fedhft.sdk.privacy import check_rebuilt_ledger

from ._audit import (
    CertsOption,
    ExpectHeadOption,
    KeyOption,
    ServerKeyOption,
    ServerLogOption,
    _fail_input,
    _print_findings,
    _resolve_inputs,
)

ledger_app = typer.Typer(help="Inspect and restore the privacy ledger.", no_args_is_help=True)


@ledger_app.command("rebuild")
def rebuild(
    audit_log: Annotated[
        Path, typer.Option("--audit-log", help="The organization's audit log (JSON Lines).")
    ],
    policy: Annotated[
        Path, typer.Option("--policy", help="The organization's policy (ledger path, budget).")
    ],
    certs: CertsOption = None,
    key: KeyOption = None,
    server_log: ServerLogOption = None,
    server_key: ServerKeyOption = None,
    expect_head: ExpectHeadOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the ledger; default `privacy.ledger_path`."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing ledger file.")
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="The client's state folder: the rebuilt ledger must hold every release "
            "its evidence record remembers (refused before writing otherwise).",
        ),
    ] = None,
) -> None:
    """Rebuild the privacy ledger from the spend records of a verified audit log.

    A log cut off at a record boundary still verifies on its own; pass the server's log
    (``--server-log``) or a head hash noted earlier (``--expect-head``) to catch that, and
    the client's state folder (``--state``) to check the rebuilt records against the
    releases it recorded.
    """
    inputs = _resolve_inputs(audit_log, server_log, policy, certs, key, server_key)
    organization_policy = inputs.policy
    assert organization_policy is not None  # --policy is required
    for note in inputs.notes:
        typer.echo(f"note: {note}", err=True)
    report = verify_log(
        audit_log,
        public_key=inputs.public_key,
        server_log=server_log,
        server_public_key=inputs.server_public_key,
        policy=organization_policy,
        expected_head=expect_head,
    )
    if report.errors:
        _print_findings(report)
        typer.echo(
            f"FAILED: {audit_log} does not verify ({len(report.errors)} error(s)); "
            "no ledger written",
            err=True,
        )
        raise typer.Exit(code=1)
    chain = check_chain(audit_log.read_bytes(), public_key=inputs.public_key, source=str(audit_log))
    records = tuple(
        MechanismRecord(
            round=int(payload["round"]),
            mechanism=payload["mechanism"],
            noise_multiplier=float(payload["noise_multiplier"]),
            sample_rate=float(payload["sample_rate"]),
            steps=int(payload["steps"]),
            max_grad_norm=payload["max_grad_norm"],
            noise_source=payload["noise_source"],
        )
        for entry in chain.records
        if entry.record.event == EventType.PRIVACY_SPEND
        and not payload_problems(entry.record.event, entry.record.payload)
        for payload in (entry.record.payload,)
    )
    privacy = organization_policy.privacy
    path = out if out is not None else Path(privacy.ledger_path)
    accountant = Accountant(privacy.accountant)
    epsilon = compute_epsilon(records, accountant=accountant, delta=privacy.delta)
    logged = report.epsilon[-1].recomputed if report.epsilon else 0.0
    if logged is None or abs(epsilon - logged) > epsilon_tolerance(
        accountant.value, logged, rtol=1e-3
    ):
        typer.echo(
            f"FAILED: the rebuilt ledger's ε = {epsilon:.6g} disagrees with the audit log's "
            f"({logged}); no ledger written",
            err=True,
        )
        raise typer.Exit(code=1)
    if state is not None:
        try:
            check_rebuilt_ledger(state, path, records)
        except EvidenceError as error:
            typer.echo(f"FAILED: {error}; no ledger written", err=True)
            raise typer.Exit(code=1) from error
    try:
        ledger = PrivacyLedger.rebuild(
            path,
            records,
            organization=organization_policy.organization,
            accountant=accountant,
            delta=privacy.delta,
            epsilon_budget=privacy.epsilon,
            force=force,
        )
    except LedgerError as error:
        _fail_input(str(error))
    typer.echo(
        f"wrote {path}: {len(records)} release(s) from {audit_log}; ε = {ledger.spent():.6g} "
        f"at δ = {privacy.delta:g} ({privacy.accountant.value}), the audit log's ε = "
        f"{logged:.6g}, budget {privacy.epsilon:g}"
    )
