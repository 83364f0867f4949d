"""The consortium PKI: issuing, loading and verifying certificates and keys."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedhft.protocol import (
    CertificateAuthority,
    Role,
    init_ca,
    issue_organization,
    issue_server,
    load_ca,
    load_credentials,
    verify_identity_certificate,
    verify_sealing_certificate,
    verify_server_identity_certificate,
    verify_tls_client_certificate,
    verify_tls_server_certificate,
)
from fedhft.protocol.errors import CertificateVerificationError, CredentialsError

KEY_FILES_ORG = ("tls.key", "identity.key", "sealing.key")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """A fresh consortium CA."""
    return init_ca("northern-health", tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    """A second CA with the same consortium name: a look-alike, not the real one."""
    return init_ca("northern-health", tmp_path / "other-ca")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_files_and_key_mode(ca: CertificateAuthority) -> None:
    """`init_ca` writes a self-signed P-256 CA certificate and a 0600 key that load back."""
    assert _mode(ca.directory / "ca.key") == 0o600
    certificate = ca.certificate
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    certificate.verify_directly_issued_by(certificate)
    reloaded = load_ca(ca.directory)
    assert reloaded.certificate == certificate
    assert reloaded.consortium == "northern-health"


def test_organization_key_files_are_created_0600(ca: CertificateAuthority, tmp_path: Path) -> None:
    """Every private key of an organization is mode 0600, even under a permissive umask."""
    previous = os.umask(0)
    try:
        issue_organization(ca, "st-mary", tmp_path / "st-mary")
    finally:
        os.umask(previous)
    for name in KEY_FILES_ORG:
        assert _mode(tmp_path / "st-mary" / name) == 0o600, name
    assert _mode(tmp_path / "st-mary") == 0o700


def test_organization_credentials_verify_and_match(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Loaded keys are the ones the CA certified: signatures and agreements check out."""
    issue_organization(ca, "st-mary", tmp_path / "st-mary")
    credentials = load_credentials(tmp_path / "st-mary")
    assert credentials.role is Role.ORGANIZATION
    assert (credentials.name, credentials.consortium) == ("st-mary", "northern-health")

    identity = verify_identity_certificate(
        credentials.identity_certificate, ca.certificate, "st-mary"
    )
    message = b"key advertisement"
    identity.verify(credentials.identity_key.sign(message), message)

    sealing = verify_sealing_certificate(credentials.sealing_certificate, ca.certificate, "st-mary")  # type: ignore[arg-type]
    peer = X25519PrivateKey.generate()
    assert credentials.sealing_key.exchange(peer.public_key()) == peer.exchange(sealing)

    assert verify_tls_client_certificate(credentials.tls_certificate, ca.certificate) == "st-mary"
    usage = credentials.tls_certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_server_credentials(ca: CertificateAuthority, tmp_path: Path) -> None:
    """A localhost server certificate names the host and 127.0.0.1, for serverAuth only."""
    credentials = issue_server(ca, "localhost", tmp_path / "server", ip_addresses=["10.1.2.3"])
    assert credentials.role is Role.SERVER
    names = credentials.tls_certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1", "10.1.2.3"} <= addresses
    assert verify_tls_server_certificate(credentials.tls_certificate, ca.certificate) == "localhost"
    receipt_key = verify_server_identity_certificate(
        credentials.identity_certificate, ca.certificate, "localhost"
    )
    receipt_key.verify(credentials.identity_key.sign(b"receipt"), b"receipt")
    for name in ("tls.key", "identity.key"):
        assert _mode(tmp_path / "server" / name) == 0o600
    assert not (tmp_path / "server" / "sealing.key").exists()
    with pytest.raises(CredentialsError, match="only organizations"):
        _ = credentials.sealing_key


def test_identity_certificate_for_another_organization_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """An identity certificate checked against another organization id raises."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary")
    with pytest.raises(CertificateVerificationError, match="not issued to 'harbour-bank'"):
        verify_identity_certificate(
            credentials.identity_certificate, ca.certificate, "harbour-bank"
        )


def test_identity_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A look-alike CA's certificate for the same organization does not verify."""
    forged = issue_organization(other_ca, "st-mary", tmp_path / "forged")
    with pytest.raises(CertificateVerificationError, match="not issued by the consortium CA"):
        verify_identity_certificate(forged.identity_certificate, ca.certificate, "st-mary")


@pytest.mark.parametrize("kind", ["tls", "sealing"])
def test_other_certificate_kinds_are_not_identity_certificates(
    ca: CertificateAuthority, tmp_path: Path, kind: str
) -> None:
    """A TLS or sealing certificate of the right organization is not an identity one."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary")
    certificate = credentials.tls_certificate if kind == "tls" else credentials.sealing_certificate
    assert certificate is not None
    with pytest.raises(CertificateVerificationError, match="not for identity use"):
        verify_identity_certificate(certificate, ca.certificate, "st-mary")


def test_identity_certificate_is_not_a_sealing_or_tls_certificate(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """An identity certificate is refused where a sealing or TLS certificate is due."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary")
    with pytest.raises(CertificateVerificationError):
        verify_sealing_certificate(credentials.identity_certificate, ca.certificate, "st-mary")
    with pytest.raises(CertificateVerificationError):
        verify_tls_client_certificate(credentials.identity_certificate, ca.certificate)


def test_expired_and_not_yet_valid_certificates_are_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Verification at a moment outside the validity period raises."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary", valid_days=30)
    certificate = credentials.identity_certificate
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for moment in (later, earlier):
        with pytest.raises(CertificateVerificationError, match="valid from"):
            verify_identity_certificate(certificate, ca.certificate, "st-mary", now=moment)


def test_tampered_certificate_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    """Flipping one bit of the signed part breaks the CA's signature."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary")
    der = bytearray(credentials.identity_certificate.public_bytes(serialization.Encoding.DER))
    # Byte 20 lies inside the to-be-signed serial number, so the result still parses.
    der[20] ^= 0x01
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert tampered.serial_number != credentials.identity_certificate.serial_number
    with pytest.raises(CertificateVerificationError, match="not issued by the consortium CA"):
        verify_identity_certificate(tampered, ca.certificate, "st-mary")


def test_repr_shows_no_key_material(ca: CertificateAuthority, tmp_path: Path) -> None:
    """`repr` of credentials and CA holds names and fingerprints, never a private key."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary")
    text = repr(credentials) + repr(ca) + str(credentials)
    assert "st-mary" in text
    raw_identity = credentials.identity_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    assert raw_identity.hex() not in text
    assert "PRIVATE KEY" not in text
    for name in KEY_FILES_ORG:
        body = (tmp_path / "st-mary" / name).read_text().splitlines()[1]
        assert body not in text


def test_credentials_are_never_overwritten(ca: CertificateAuthority, tmp_path: Path) -> None:
    """Issuing into a folder that already holds credentials raises and changes nothing."""
    issue_organization(ca, "st-mary", tmp_path / "st-mary")
    before = (tmp_path / "st-mary" / "identity.key").read_bytes()
    with pytest.raises(CredentialsError, match="never overwritten"):
        issue_organization(ca, "st-mary", tmp_path / "st-mary")
    assert (tmp_path / "st-mary" / "identity.key").read_bytes() == before
    with pytest.raises(CredentialsError, match="never overwritten"):
        init_ca("northern-health", ca.directory)


def test_group_readable_key_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    """A key file readable by group or others is refused on load, naming the fix."""
    issue_organization(ca, "st-mary", tmp_path / "st-mary")
    (tmp_path / "st-mary" / "tls.key").chmod(0o640)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_credentials(tmp_path / "st-mary")


def test_mismatched_key_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    """A folder whose identity key does not belong to its certificate is refused."""
    issue_organization(ca, "st-mary", tmp_path / "st-mary")
    issue_organization(ca, "glen-clinic", tmp_path / "glen-clinic")
    target = tmp_path / "st-mary" / "identity.key"
    target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write((tmp_path / "glen-clinic" / "identity.key").read_bytes())
    with pytest.raises(CredentialsError, match="does not match its certificate"):
        load_credentials(tmp_path / "st-mary")


def test_folder_mixing_two_cas_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A credentials folder whose ca.crt did not issue its certificates is refused."""
    issue_organization(ca, "st-mary", tmp_path / "st-mary")
    (tmp_path / "st-mary" / "ca.crt").write_bytes((other_ca.directory / "ca.crt").read_bytes())
    with pytest.raises(CertificateVerificationError):
        load_credentials(tmp_path / "st-mary")


@pytest.mark.parametrize("bad", ["St-Mary", "", "-x", "a" * 64, "st mary", "st/mary"])
def test_bad_organization_ids_are_refused(
    ca: CertificateAuthority, tmp_path: Path, bad: str
) -> None:
    """Organization ids follow the policy files' identifier rule."""
    with pytest.raises(CredentialsError, match="organization"):
        issue_organization(ca, bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("hostname", "ips"), [("bad_host!", []), ("ok.example", ["1.2.3"])])
def test_bad_server_names_are_refused(
    ca: CertificateAuthority, tmp_path: Path, hostname: str, ips: list[str]
) -> None:
    """Server host names must be DNS names and `--ip` values IP addresses."""
    with pytest.raises(CredentialsError):
        issue_server(ca, hostname, tmp_path / "server", ip_addresses=ips)


def test_missing_folder_is_a_credentials_error(tmp_path: Path) -> None:
    """Loading from a folder without credentials raises a typed error naming the file."""
    with pytest.raises(CredentialsError, match=r"ca\.crt"):
        load_credentials(tmp_path / "nothing-here")


def test_identity_key_type(ca: CertificateAuthority, tmp_path: Path) -> None:
    """The identity key is Ed25519 and the TLS key P-256, as the protocol expects."""
    credentials = issue_organization(ca, "st-mary", tmp_path / "st-mary")
    assert isinstance(credentials.identity_public_key, Ed25519PublicKey)
    tls_key = serialization.load_pem_private_key(credentials.tls_private_key_pem(), None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    assert tls_key.curve.name == "secp256r1"
