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

This module is the one place that spells and parses those names (`certificate_holder`);
the PKI that writes them, the transport, the SDK and the audit's key lookup all use it.

Notes:
    A certificate names its holder by exactly one URI SAN, and nothing else is
    accepted: a second name (another organization, the server, a foreign URI) could let
    one certificate pass for two holders, depending on which name a reader picks. The
    consortium CA never writes more than one, so strictness costs nothing legitimate.

    The identity and sealing purposes are private extended key usages (UUID-based OIDs,
    ITU-T X.667). Because BoringSSL enforces extended key usage during the TLS handshake,
    an identity or sealing certificate cannot be used for TLS, and a TLS certificate is
    refused where an identity or sealing certificate is due.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from enum import StrEnum
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
HOSTNAME: Final = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
"""Server host names as the CA writes them: lower-case DNS labels."""


class Role(StrEnum):
    """Who holds a credentials folder."""

    ORGANIZATION = "organization"
    SERVER = "server"


_URI_PREFIXES: Final = {Role.ORGANIZATION: ORGANIZATION_URI_PREFIX, Role.SERVER: SERVER_URI_PREFIX}
_NAME_GRAMMARS: Final = {Role.ORGANIZATION: IDENTIFIER, Role.SERVER: HOSTNAME}


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
    _require_holder(certificate, Role.ORGANIZATION, organization, "identity")
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
    _require_holder(certificate, Role.SERVER, server.lower(), "identity")
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
    _require_holder(certificate, Role.ORGANIZATION, organization, "sealing")
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
    return server_in_certificate(certificate)


def holder_uri(role: Role, name: str) -> str:
    """The URI SAN naming ``name`` as a ``role`` (``fedhft://org/<id>``, ...)."""
    return _URI_PREFIXES[role] + name


def certificate_holder(certificate: x509.Certificate) -> tuple[Role, str]:
    """Who a certificate names: its single URI SAN, parsed strictly.

    The certificate must carry exactly one URI SAN, ``fedhft://org/<id>`` with an
    organization id or ``fedhft://server/<host>`` with a lower-case host name; anything
    else (none, several, a foreign URI, a malformed name) is
    `CertificateVerificationError`. This only reads the name; it verifies nothing.
    """
    uris = uris_of(certificate)
    if len(uris) != 1:
        raise CertificateVerificationError(
            f"certificate has {len(uris)} URI SANs; a consortium certificate names its holder "
            f"by exactly one, {ORGANIZATION_URI_PREFIX}<id> or {SERVER_URI_PREFIX}<host>"
        )
    for role, prefix in _URI_PREFIXES.items():
        name = uris[0].removeprefix(prefix)
        if name != uris[0] and _NAME_GRAMMARS[role].fullmatch(name):
            return role, name
    raise CertificateVerificationError(
        f"certificate URI SAN {uris[0]!r:.120} is neither {ORGANIZATION_URI_PREFIX}<id> "
        f"(lower-case letters, digits, '-', '_') nor {SERVER_URI_PREFIX}<lower-case host>"
    )


def organization_in_certificate(certificate: x509.Certificate) -> str:
    """The organization id in a certificate's ``fedhft://org/<id>`` URI SAN.

    This only reads the name (strictly: `certificate_holder`); it does not verify the
    certificate. Use it on a peer certificate the TLS layer has already verified
    against the consortium CA.
    """
    return _named(certificate, Role.ORGANIZATION)


def server_in_certificate(certificate: x509.Certificate) -> str:
    """The host name in a certificate's ``fedhft://server/<host>`` URI SAN.

    Like `organization_in_certificate`, this only reads the name.
    """
    return _named(certificate, Role.SERVER)


def _named(certificate: x509.Certificate, role: Role) -> str:
    holder_role, name = certificate_holder(certificate)
    if holder_role is not role:
        raise CertificateVerificationError(
            f"certificate names a {holder_role.value}, not a single {role.value} "
            f"(expected one URI SAN {_URI_PREFIXES[role]}<name>)"
        )
    return name


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


def _require_holder(certificate: x509.Certificate, role: Role, name: str, kind: str) -> None:
    if uris_of(certificate) != [holder_uri(role, name)]:
        raise CertificateVerificationError(f"{kind} certificate is not issued to {name!r}")


def uris_of(certificate: x509.Certificate) -> list[str]:
    """The URI SANs of a certificate (empty when it has none)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(names.value.get_values_for_type(x509.UniformResourceIdentifier))
