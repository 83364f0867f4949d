"""Verifying consortium certificates: issuer, validity, holder, purpose and key type.

Each function checks one kind of certificate the consortium CA issues (`_pki.py`) and
returns what a caller needs from it: the certified public key, or the holder's name.
They raise `CertificateVerificationError` and never return a bool (pyca's rule).

A certificate is accepted only when all of these hold: it is signed by the consortium CA;
the moment of use lies inside both its and the CA's validity period; it is not a CA
certificate; its extended key usage is exactly the expected purpose (TLS client, TLS
server, fedhft identity, fedhft sealing); its URI SAN names exactly the expected holder
(``fedhft://org/<id>`` or ``fedhft://server/<hostname>``); and its key has the expected
type (P-256 for TLS, Ed25519 for identity, X25519 for sealing).

Notes:
    The identity and sealing purposes are private extended key usages (UUID-based OIDs,
    ITU-T X.667). Because BoringSSL enforces extended key usage during the TLS handshake,
    an identity or sealing certificate cannot be used for TLS, and a TLS certificate is
    refused where an identity or sealing certificate is due.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import CertificateVerificationError

ORGANIZATION_URI_PREFIX: Final = "fedhft://org/"
SERVER_URI_PREFIX: Final = "fedhft://server/"
IDENTITY_KEY_USAGE: Final = x509.ObjectIdentifier("2.25.257698673283577611293341150070326186102")
"""Extended key usage of Ed25519 identity certificates."""
SEALING_KEY_USAGE: Final = x509.ObjectIdentifier("2.25.48356485428442118622092600907503256649")
"""Extended key usage of X25519 sealing certificates."""
IDENTIFIER: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Organization and consortium ids, as in `fedhft.policies`."""


def now_utc() -> dt.datetime:
    """The current time, timezone-aware (what validity periods are compared with)."""
    return dt.datetime.now(dt.UTC)


def verify_identity_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    organization: str,
    *,
    now: dt.datetime | None = None,
) -> Ed25519PublicKey:
    """Check that `certificate` certifies `organization`'s Ed25519 identity key.

    Returns the certified public key (what secure aggregation and audit verify
    signatures with); raises `CertificateVerificationError` when the certificate is not
    issued by `ca_certificate`, is outside its validity period, names another holder, is
    not an identity certificate, or holds another kind of key.
    """
    _verify_leaf(certificate, ca_certificate, IDENTITY_KEY_USAGE, "identity", now)
    _require_uri(certificate, ORGANIZATION_URI_PREFIX + organization, "identity")
    key = certificate.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateVerificationError("identity certificate does not hold an Ed25519 key")
    return key


def verify_server_identity_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    server: str,
    *,
    now: dt.datetime | None = None,
) -> Ed25519PublicKey:
    """Like `verify_identity_certificate`, for the server `server` (it signs receipts)."""
    _verify_leaf(certificate, ca_certificate, IDENTITY_KEY_USAGE, "identity", now)
    _require_uri(certificate, SERVER_URI_PREFIX + server.lower(), "identity")
    key = certificate.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateVerificationError("identity certificate does not hold an Ed25519 key")
    return key


def verify_sealing_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    organization: str,
    *,
    now: dt.datetime | None = None,
) -> X25519PublicKey:
    """Check that `certificate` certifies `organization`'s X25519 sealing key; return it."""
    _verify_leaf(certificate, ca_certificate, SEALING_KEY_USAGE, "sealing", now)
    _require_uri(certificate, ORGANIZATION_URI_PREFIX + organization, "sealing")
    key = certificate.public_key()
    if not isinstance(key, X25519PublicKey):
        raise CertificateVerificationError("sealing certificate does not hold an X25519 key")
    return key


def verify_tls_client_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    *,
    now: dt.datetime | None = None,
) -> str:
    """Check an organization's TLS client certificate; return the organization id."""
    _verify_leaf(certificate, ca_certificate, ExtendedKeyUsageOID.CLIENT_AUTH, "TLS client", now)
    if not isinstance(certificate.public_key(), ec.EllipticCurvePublicKey):
        raise CertificateVerificationError("TLS client certificate does not hold an ECDSA key")
    return organization_in_certificate(certificate)


def verify_tls_server_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    *,
    now: dt.datetime | None = None,
) -> str:
    """Check the server's TLS certificate; return the host name it is issued to."""
    _verify_leaf(certificate, ca_certificate, ExtendedKeyUsageOID.SERVER_AUTH, "TLS server", now)
    uris = uris_of(certificate)
    servers = [uri[len(SERVER_URI_PREFIX) :] for uri in uris if uri.startswith(SERVER_URI_PREFIX)]
    if len(servers) != 1:
        raise CertificateVerificationError("TLS server certificate names no single fedhft server")
    return servers[0]


def organization_in_certificate(certificate: x509.Certificate) -> str:
    """The organization id in a certificate's ``fedhft://org/<id>`` URI SAN.

    This only reads the name; it does not verify the certificate. Use it on a peer
    certificate the TLS layer has already verified against the consortium CA.
    """
    uris = uris_of(certificate)
    organizations = [
        uri[len(ORGANIZATION_URI_PREFIX) :]
        for uri in uris
        if uri.startswith(ORGANIZATION_URI_PREFIX)
    ]
    if len(organizations) != 1 or not IDENTIFIER.fullmatch(organizations[0]):
        raise CertificateVerificationError(
            "certificate names no single organization (expected one URI SAN "
            f"{ORGANIZATION_URI_PREFIX}<id>)"
        )
    return organizations[0]


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, in hex (what operators compare)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _verify_leaf(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    usage: x509.ObjectIdentifier,
    kind: str,
    now: dt.datetime | None,
) -> None:
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateVerificationError(
            f"{kind} certificate is not issued by the consortium CA "
            f"(CA fingerprint {certificate_fingerprint(ca_certificate)[:16]})"
        ) from None
    moment = now or now_utc()
    for checked, label in ((ca_certificate, "CA"), (certificate, kind)):
        if not checked.not_valid_before_utc <= moment <= checked.not_valid_after_utc:
            raise CertificateVerificationError(
                f"{label} certificate is valid from {checked.not_valid_before_utc:%Y-%m-%d} "
                f"to {checked.not_valid_after_utc:%Y-%m-%d}, not at {moment:%Y-%m-%d %H:%M}Z"
            )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise CertificateVerificationError(
            f"{kind} certificate lacks basic constraints or extended key usage"
        ) from None
    if constraints.value.ca:
        raise CertificateVerificationError(f"{kind} certificate must not be a CA certificate")
    if list(usages.value) != [usage]:
        raise CertificateVerificationError(
            f"certificate is not for {kind} use (wrong extended key usage)"
        )


def _require_uri(certificate: x509.Certificate, expected: str, kind: str) -> None:
    uris = uris_of(certificate)
    if uris != [expected]:
        holder = expected.rsplit("/", 1)[-1]
        raise CertificateVerificationError(f"{kind} certificate is not issued to {holder!r}")


def uris_of(certificate: x509.Certificate) -> list[str]:
    """The URI SANs of a certificate (empty when it has none)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(names.value.get_values_for_type(x509.UniformResourceIdentifier))
