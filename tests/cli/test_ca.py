"""`fedhft ca init` / `fedhft ca issue`: files that load and verify, and no key on screen."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedhft.cli import app
from fedhft.protocol import (
    Role,
    certificate_fingerprint,
    load_ca,
    load_credentials,
    verify_identity_certificate,
    verify_sealing_certificate,
    verify_server_identity_certificate,
    verify_tls_client_certificate,
    verify_tls_server_certificate,
)

runner = CliRunner()


def _private_material(folder: Path) -> list[str]:
    """Every private key of a folder in the forms it could leak: PEM lines and raw hex."""
    leaks: list[str] = []
    for path in folder.glob("*.key"):
        pem = path.read_bytes()
        leaks += [line for line in pem.decode().splitlines() if "-----" not in line]
        key = serialization.load_pem_private_key(pem, password=None)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        leaks.append(der.hex())
    return leaks


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A CA created through the CLI."""
    result = runner.invoke(
        app, ["ca", "init", "--consortium", "northern-health", "--out", str(tmp_path / "ca")]
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "ca"


def test_init_writes_a_ca_and_prints_its_fingerprint_only(tmp_path: Path) -> None:
    """`ca init` writes ca.crt and a 0600 ca.key and prints the fingerprint, not the key."""
    out = tmp_path / "ca"
    result = runner.invoke(
        app, ["ca", "init", "--consortium", "northern-health", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ca = load_ca(out)
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
    assert certificate_fingerprint(ca.certificate) in result.output
    assert "PRIVATE KEY" not in result.output
    for leak in _private_material(out):
        assert leak not in result.output


def test_issue_org_writes_credentials_that_verify(ca_dir: Path, tmp_path: Path) -> None:
    """`ca issue --org` writes TLS, identity and sealing credentials the CA verifies."""
    out = tmp_path / "st-mary"
    result = runner.invoke(
        app, ["ca", "issue", "--ca", str(ca_dir), "--org", "st-mary", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    credentials = load_credentials(out)
    ca_certificate = load_ca(ca_dir).certificate
    assert credentials.role is Role.ORGANIZATION
    assert verify_tls_client_certificate(credentials.tls_certificate, ca_certificate) == "st-mary"
    verify_identity_certificate(credentials.identity_certificate, ca_certificate, "st-mary")
    assert credentials.sealing_certificate is not None
    verify_sealing_certificate(credentials.sealing_certificate, ca_certificate, "st-mary")
    for name in ("tls.key", "identity.key", "sealing.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
        assert f"{out / name}  private, mode 0600" in result.output
    assert "PRIVATE KEY" not in result.output
    for leak in _private_material(out) + _private_material(ca_dir):
        assert leak not in result.output


def test_issue_server_writes_credentials_that_verify(ca_dir: Path, tmp_path: Path) -> None:
    """`ca issue --server` writes a serverAuth certificate with the requested SANs."""
    out = tmp_path / "server"
    result = runner.invoke(
        app,
        [
            *("ca", "issue", "--ca", str(ca_dir)),
            *("--server", "localhost", "--ip", "10.0.0.7", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    credentials = load_credentials(out)
    ca_certificate = load_ca(ca_dir).certificate
    assert credentials.role is Role.SERVER
    assert verify_tls_server_certificate(credentials.tls_certificate, ca_certificate) == "localhost"
    verify_server_identity_certificate(
        credentials.identity_certificate, ca_certificate, "localhost"
    )
    assert "10.0.0.7" in str(credentials.tls_certificate.extensions)
    for leak in _private_material(out):
        assert leak not in result.output


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["--org", "st-mary", "--server", "localhost"],
        ["--org", "st-mary", "--ip", "10.0.0.1"],
    ],
    ids=["neither", "both", "ip-for-org"],
)
def test_issue_needs_exactly_one_holder(ca_dir: Path, tmp_path: Path, arguments: list[str]) -> None:
    """`ca issue` exits 2 unless given exactly one of --org/--server (and --ip with --server)."""
    result = runner.invoke(
        app, ["ca", "issue", "--ca", str(ca_dir), "--out", str(tmp_path / "x"), *arguments]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_errors_exit_1_with_a_message(ca_dir: Path, tmp_path: Path) -> None:
    """A bad id, a missing CA or an occupied folder exits 1 and says why."""
    bad = runner.invoke(
        app, ["ca", "issue", "--ca", str(ca_dir), "--org", "St Mary", "--out", str(tmp_path / "a")]
    )
    assert bad.exit_code == 1
    assert "lower-case letters" in bad.output
    missing = runner.invoke(
        app,
        [
            *("ca", "issue", "--ca", str(tmp_path / "nope")),
            *("--org", "st-mary", "--out", str(tmp_path / "b")),
        ],
    )
    assert missing.exit_code == 1
    assert "cannot read" in missing.output
    again = runner.invoke(
        app, ["ca", "init", "--consortium", "northern-health", "--out", str(ca_dir)]
    )
    assert again.exit_code == 1
    assert "never overwritten" in again.output
