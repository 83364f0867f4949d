"""`fedhft ca ...`: create the consortium CA and issue organization and server credentials.

Run by the consortium operator, offline. The commands print which files they wrote and
the SHA-256 fingerprints of the certificates (for operators to compare out of band);
they never print key material.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fedhft.protocol import (
    Credentials,
    certificate_fingerprint,
    init_ca,
    issue_organization,
    issue_server,
    load_ca,
)
from fedhft.protocol.errors import ProtocolError

ca_app = typer.Typer(
    help="Consortium certificate authority: create it, issue credentials.",
    no_args_is_help=True,
)


@ca_app.command("init")
def init(
    consortium: Annotated[
        str, typer.Option("--consortium", help="Consortium id (as in the consortium file).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to create the CA in.")],
    days: Annotated[int, typer.Option("--days", help="Validity of the CA certificate.")] = 3650,
) -> None:
    """Create the consortium CA: ca.crt (share it) and ca.key (mode 0600, keep it offline)."""
    try:
        ca = init_ca(consortium, out, valid_days=days)
    except ProtocolError as exc:
        _fail(exc)
    typer.echo(f"created the CA of consortium {ca.consortium!r} in {out}")
    typer.echo(f"  {out / 'ca.crt'}  sha256 {certificate_fingerprint(ca.certificate)}")
    typer.echo(f"  {out / 'ca.key'}  private, mode 0600")


@ca_app.command("issue")
def issue(
    ca_dir: Annotated[Path, typer.Option("--ca", help="The CA folder (from `ca init`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the credentials to.")],
    organization: Annotated[
        str | None, typer.Option("--org", help="Issue to this organization id.")
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Issue to the server at this host name.")
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", help="Server only: an IP address to add as a SAN (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Validity of the certificates.")] = 825,
) -> None:
    """Issue TLS, identity (and sealing) credentials to one organization or the server."""
    if (organization is None) == (server is None):
        typer.echo("error: give exactly one of --org ORG and --server HOSTNAME", err=True)
        raise typer.Exit(code=2)
    if ip and server is None:
        typer.echo("error: --ip applies to --server only", err=True)
        raise typer.Exit(code=2)
    try:
        ca = load_ca(ca_dir)
        if organization is not None:
            credentials = issue_organization(ca, organization, out, valid_days=days)
        else:
            assert server is not None
            credentials = issue_server(ca, server, out, ip_addresses=ip or (), valid_days=days)
    except ProtocolError as exc:
        _fail(exc)
    _report(credentials, out)


def _report(credentials: Credentials, out: Path) -> None:
    typer.echo(
        f"issued {credentials.role.value} credentials for {credentials.name!r} "
        f"(consortium {credentials.consortium!r}) in {out}"
    )
    certificates = [
        ("ca.crt", credentials.ca_certificate),
        ("tls.crt", credentials.tls_certificate),
        ("identity.crt", credentials.identity_certificate),
    ]
    keys = ["tls.key", "identity.key"]
    if credentials.sealing_certificate is not None:
        certificates.append(("sealing.crt", credentials.sealing_certificate))
        keys.append("sealing.key")
    for name, certificate in certificates:
        typer.echo(f"  {out / name}  sha256 {certificate_fingerprint(certificate)}")
    for name in keys:
        typer.echo(f"  {out / name}  private, mode 0600")


def _fail(error: ProtocolError) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)
