"""Strict parsing of the holder names in consortium certificates (`_certificates.py`).

A certificate names its holder by exactly one URI SAN; these tests forge CA-signed
certificates carrying no name, two names, a foreign name or a malformed one, and check
that every reader refuses them rather than picking one of the names.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhft.protocol import (
    Role,
    certificate_holder,
    holder_uri,
    organization_in_certificate,
    server_in_certificate,
    verify_tls_client_certificate,
    verify_tls_server_certificate,
)
from fedhft.protocol.errors import CertificateVerificationError

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test consortium CA")])
CA = (
    x509.CertificateBuilder()
    .subject_name(_CA_NAME)
    .issuer_name(_CA_NAME)
    .public_key(_CA_KEY.public_key())
    .serial_number(1)
    .not_valid_before(NOW - dt.timedelta(days=1))
    .not_valid_after(NOW + dt.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .sign(_CA_KEY, hashes.SHA256())
)


def _leaf(uris: list[str], usage: x509.ObjectIdentifier) -> x509.Certificate:
    """A CA-issued TLS certificate whose SAN holds exactly ``uris`` (and a DNS name)."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.UniformResourceIdentifier(uri) for uri in uris]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(_CA_NAME)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(2)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(_CA_KEY, hashes.SHA256())
    )


CLIENT, SERVER = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH


def test_well_formed_names_are_read() -> None:
    """One URI SAN naming an organization or a server is read as that holder."""
    organization = _leaf([holder_uri(Role.ORGANIZATION, "st-mary")], CLIENT)
    server = _leaf([holder_uri(Role.SERVER, "agg.example.org")], SERVER)
    assert certificate_holder(organization) == (Role.ORGANIZATION, "st-mary")
    assert verify_tls_client_certificate(organization, CA, now=NOW) == "st-mary"
    assert organization_in_certificate(organization) == "st-mary"
    assert certificate_holder(server) == (Role.SERVER, "agg.example.org")
    assert verify_tls_server_certificate(server, CA, now=NOW) == "agg.example.org"
    assert server_in_certificate(server) == "agg.example.org"


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param(["fedhft://org/st-mary", "https://evil.example/"], id="foreign-uri"),
        pytest.param(["fedhft://org/st-mary", "fedhft://server/agg"], id="org-and-server"),
        pytest.param(["fedhft://org/st-mary", "fedhft://org/st-mary"], id="duplicate"),
        pytest.param(["fedhft://org/st-mary", "fedhft://org/other"], id="two-orgs"),
        pytest.param([], id="none"),
        pytest.param(["fedhft://org/St-Mary"], id="upper-case"),
        pytest.param(["fedhft://org/st-mary/x"], id="path"),
        pytest.param(["fedhft://org/"], id="empty"),
        pytest.param(["FEDHFT://org/st-mary"], id="scheme-case"),
        pytest.param(["fedhft://organization/st-mary"], id="unknown-kind"),
    ],
)
def test_organization_names_that_are_not_exactly_one_valid_name_are_refused(
    uris: list[str],
) -> None:
    """A client certificate with no name, two names, a foreign or malformed name is
    refused by the TLS check and by the name reader alike."""
    certificate = _leaf(uris, CLIENT)
    with pytest.raises(CertificateVerificationError):
        verify_tls_client_certificate(certificate, CA, now=NOW)
    with pytest.raises(CertificateVerificationError):
        organization_in_certificate(certificate)


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param(["fedhft://server/agg", "https://evil.example/"], id="foreign-uri"),
        pytest.param(["fedhft://server/agg", "fedhft://org/st-mary"], id="server-and-org"),
        pytest.param(["fedhft://server/agg", "fedhft://server/other"], id="two-servers"),
        pytest.param(["fedhft://server/"], id="empty"),
        pytest.param(["fedhft://server/Agg.Example"], id="upper-case"),
        pytest.param(["fedhft://server/agg/x"], id="path"),
        pytest.param(["fedhft://org/st-mary"], id="organization"),
    ],
)
def test_server_names_that_are_not_exactly_one_valid_name_are_refused(uris: list[str]) -> None:
    """A server certificate must name exactly one well-formed server host."""
    certificate = _leaf(uris, SERVER)
    with pytest.raises(CertificateVerificationError):
        verify_tls_server_certificate(certificate, CA, now=NOW)
    with pytest.raises(CertificateVerificationError):
        server_in_certificate(certificate)
