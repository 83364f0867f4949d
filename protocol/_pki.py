"""Consortium PKI: the CA, the credentials it issues, and loading them back.

The consortium operator runs a small offline certificate authority (ARCHITECTURE.md §1). It
issues, with `cryptography`'s X.509 builder:

- to each organization: a TLS client certificate (ECDSA P-256, `clientAuth`), an
  Ed25519 *identity* certificate (the key that signs secure-aggregation key
  advertisements and audit records), and an X25519 *sealing* certificate (the key the
  CKKS key ceremony seals the shared secret key to);
- to the aggregation server: a TLS server certificate (`serverAuth`, DNS and IP SANs) and
  an Ed25519 identity certificate (the key that signs upload receipts).

Every certificate names its holder by a URI SAN, ``fedhft://org/<id>`` or
``fedhft://server/<hostname>``, and says what it is for by its extended key usage, so
one kind of certificate can never stand in for another.

Notes:
    The CA and TLS keys are ECDSA P-256 because that is what gRPC's TLS stack (BoringSSL)
    accepts everywhere; Ed25519 and X25519 are only used by fedhft's own protocol, which
    verifies their certificates itself (`fedhft.protocol._certificates`).

    Private keys are written once, created with mode 0600 (never widened and narrowed
    afterwards, so no other user can open them in between), never overwritten, never
    printed, and refused on load when group or others can read them. They are stored
    unencrypted; protect the folders with the operating system (or a secrets manager
    that mounts them with mode 0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._certificates import (
    HOSTNAME,
    IDENTIFIER,
    IDENTITY_KEY_USAGE,
    SEALING_KEY_USAGE,
    Role,
    certificate_fingerprint,
    certificate_holder,
    holder_uri,
    now_utc,
    verify_identity_certificate,
    verify_sealing_certificate,
    verify_server_identity_certificate,
    verify_tls_client_certificate,
    verify_tls_server_certificate,
)
from .errors import CertificateVerificationError, CredentialsError

CA_CERTIFICATE_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
TLS_CERTIFICATE_FILE: Final = "tls.crt"
TLS_KEY_FILE: Final = "tls.key"
IDENTITY_CERTIFICATE_FILE: Final = "identity.crt"
IDENTITY_KEY_FILE: Final = "identity.key"
SEALING_CERTIFICATE_FILE: Final = "sealing.crt"
SEALING_KEY_FILE: Final = "sealing.key"

_SERVER_FILES: Final = [
    CA_CERTIFICATE_FILE,
    TLS_CERTIFICATE_FILE,
    TLS_KEY_FILE,
    IDENTITY_CERTIFICATE_FILE,
    IDENTITY_KEY_FILE,
]
_ORGANIZATION_FILES: Final = [*_SERVER_FILES, SEALING_CERTIFICATE_FILE, SEALING_KEY_FILE]

_PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey

# What each kind of certificate may be used for: its key usage and extended key usage.
_PURPOSES: Final[dict[str, tuple[dict[str, bool], x509.ObjectIdentifier]]] = {
    "tls-client": ({"digital_signature": True}, ExtendedKeyUsageOID.CLIENT_AUTH),
    "tls-server": ({"digital_signature": True}, ExtendedKeyUsageOID.SERVER_AUTH),
    "identity": ({"digital_signature": True, "content_commitment": True}, IDENTITY_KEY_USAGE),
    "sealing": ({"key_agreement": True}, SEALING_KEY_USAGE),
}

DEFAULT_CA_DAYS: Final = 3650
DEFAULT_LEAF_DAYS: Final = 825
# Certificates start a few minutes in the past so a peer whose clock runs slightly behind
# does not reject a certificate issued just now.
_CLOCK_SKEW: Final = dt.timedelta(minutes=5)


# --------------------------------------------------------------------------- key objects


class CertificateAuthority:
    """The consortium CA: its certificate and (hidden) signing key."""

    __slots__ = ("_key", "certificate", "consortium", "directory")

    def __init__(
        self,
        *,
        consortium: str,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        directory: Path,
    ) -> None:
        self.consortium = consortium
        self.certificate = certificate
        self.directory = directory
        self._key = key

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(consortium={self.consortium!r}, "
            f"fingerprint={certificate_fingerprint(self.certificate)!r})"
        )


class Credentials:
    """A party's certificates and private keys, loaded from its credentials folder.

    The private keys are reachable only through explicit accessors and never appear in
    ``repr``; pass the object, not the keys, to the transport and protocol layers.
    """

    __slots__ = (
        "_identity_key",
        "_sealing_key",
        "_tls_key",
        "ca_certificate",
        "consortium",
        "directory",
        "identity_certificate",
        "name",
        "role",
        "sealing_certificate",
        "tls_certificate",
    )

    def __init__(
        self,
        *,
        role: Role,
        name: str,
        consortium: str,
        directory: Path,
        ca_certificate: x509.Certificate,
        tls_certificate: x509.Certificate,
        tls_key: ec.EllipticCurvePrivateKey,
        identity_certificate: x509.Certificate,
        identity_key: Ed25519PrivateKey,
        sealing_certificate: x509.Certificate | None,
        sealing_key: X25519PrivateKey | None,
    ) -> None:
        self.role = role
        self.name = name
        self.consortium = consortium
        self.directory = directory
        self.ca_certificate = ca_certificate
        self.tls_certificate = tls_certificate
        self.identity_certificate = identity_certificate
        self.sealing_certificate = sealing_certificate
        self._tls_key = tls_key
        self._identity_key = identity_key
        self._sealing_key = sealing_key

    def __repr__(self) -> str:
        return (
            f"Credentials(role={self.role.value!r}, name={self.name!r}, "
            f"consortium={self.consortium!r}, "
            f"tls={certificate_fingerprint(self.tls_certificate)[:16]!r})"
        )

    @property
    def identity_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs key advertisements, audit records or receipts."""
        return self._identity_key

    @property
    def identity_public_key(self) -> Ed25519PublicKey:
        """The public half of `identity_key`, as certified by the CA."""
        return self._identity_key.public_key()

    @property
    def sealing_key(self) -> X25519PrivateKey:
        """The X25519 key the CKKS secret key is sealed to (organizations only)."""
        if self._sealing_key is None:
            raise CredentialsError(
                f"credentials of {self.role.value} {self.name!r} have no sealing key; "
                "only organizations hold one"
            )
        return self._sealing_key

    def tls_private_key_pem(self) -> bytes:
        """The TLS private key as PKCS#8 PEM, for gRPC's credential constructors only."""
        return self._tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def tls_certificate_pem(self) -> bytes:
        """The TLS certificate as PEM."""
        return self.tls_certificate.public_bytes(serialization.Encoding.PEM)

    def ca_certificate_pem(self) -> bytes:
        """The consortium CA certificate as PEM (the only trusted root)."""
        return self.ca_certificate.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- issuing


def init_ca(
    consortium: str, out_dir: str | os.PathLike[str], *, valid_days: int = DEFAULT_CA_DAYS
) -> CertificateAuthority:
    """Create the consortium CA in `out_dir`: ``ca.crt`` and ``ca.key`` (mode 0600).

    Raises `CredentialsError` when `consortium` is not an identifier or when either file
    already exists (a CA is never overwritten).
    """
    _check_identifier(consortium, "consortium")
    _check_days(valid_days)
    directory = Path(out_dir)
    _refuse_existing(directory, [CA_CERTIFICATE_FILE, CA_KEY_FILE])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} fedhft CA"),
        ]
    )
    now = now_utc()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _make_private_dir(directory)
    _write_private_key(directory / CA_KEY_FILE, key)
    _write_certificate(directory / CA_CERTIFICATE_FILE, certificate)
    return CertificateAuthority(
        consortium=consortium, certificate=certificate, key=key, directory=directory
    )


def load_ca(ca_dir: str | os.PathLike[str]) -> CertificateAuthority:
    """Load the CA written by `init_ca`; refuse an unsafe or inconsistent folder."""
    directory = Path(ca_dir)
    certificate = _read_certificate(directory / CA_CERTIFICATE_FILE)
    key = _read_private_key(directory / CA_KEY_FILE)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{directory / CA_KEY_FILE} is not an ECDSA key")
    _check_key_matches(key.public_key(), certificate, directory / CA_KEY_FILE)
    _check_ca_certificate(certificate)
    return CertificateAuthority(
        consortium=_consortium_of(certificate),
        certificate=certificate,
        key=key,
        directory=directory,
    )


def issue_organization(
    ca: CertificateAuthority,
    organization: str,
    out_dir: str | os.PathLike[str],
    *,
    valid_days: int = DEFAULT_LEAF_DAYS,
) -> Credentials:
    """Issue an organization's TLS, identity and sealing credentials into `out_dir`.

    Writes ``ca.crt``, ``tls.crt``/``tls.key``, ``identity.crt``/``identity.key`` and
    ``sealing.crt``/``sealing.key`` (keys with mode 0600) and returns them loaded.
    """
    _check_identifier(organization, "organization")
    _check_days(valid_days)
    directory = Path(out_dir)
    _refuse_existing(directory, _ORGANIZATION_FILES)
    uri: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(holder_uri(Role.ORGANIZATION, organization))
    ]
    tls_key = ec.generate_private_key(ec.SECP256R1())
    identity_key = Ed25519PrivateKey.generate()
    sealing_key = X25519PrivateKey.generate()
    org, days = organization, valid_days
    issued: list[tuple[str, _PrivateKey, x509.Certificate]] = [
        (TLS_KEY_FILE, tls_key, _leaf(ca, org, "tls-client", tls_key, uri, days)),
        (IDENTITY_KEY_FILE, identity_key, _leaf(ca, org, "identity", identity_key, uri, days)),
        (SEALING_KEY_FILE, sealing_key, _leaf(ca, org, "sealing", sealing_key, uri, days)),
    ]
    _write_credentials(directory, ca, issued)
    return load_credentials(directory)


def issue_server(
    ca: CertificateAuthority,
    hostname: str,
    out_dir: str | os.PathLike[str],
    *,
    ip_addresses: Sequence[str] = (),
    valid_days: int = DEFAULT_LEAF_DAYS,
) -> Credentials:
    """Issue the aggregation server's TLS and identity credentials into `out_dir`.

    The TLS certificate names `hostname` as a DNS SAN, every address of `ip_addresses`
    as an IP SAN, and also 127.0.0.1 and ::1 when `hostname` is ``localhost``.
    """
    hostname = hostname.lower()
    if not HOSTNAME.fullmatch(hostname):
        raise CredentialsError(
            f"`--server` must be a DNS host name (letters, digits, '-' and '.'), got {hostname!r}"
        )
    _check_days(valid_days)
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in ip_addresses:
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            raise CredentialsError(f"`--ip` must be an IP address, got {text!r}") from None
    if hostname == "localhost":
        addresses += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    directory = Path(out_dir)
    _refuse_existing(directory, _SERVER_FILES)
    uri: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(holder_uri(Role.SERVER, hostname))
    ]
    names: list[x509.GeneralName] = [x509.DNSName(hostname), *uri]
    names += [x509.IPAddress(address) for address in dict.fromkeys(addresses)]
    tls_key = ec.generate_private_key(ec.SECP256R1())
    identity_key = Ed25519PrivateKey.generate()
    host, days = hostname, valid_days
    issued: list[tuple[str, _PrivateKey, x509.Certificate]] = [
        (TLS_KEY_FILE, tls_key, _leaf(ca, host, "tls-server", tls_key, names, days)),
        (IDENTITY_KEY_FILE, identity_key, _leaf(ca, host, "identity", identity_key, uri, days)),
    ]
    _write_credentials(directory, ca, issued)
    return load_credentials(directory)


def _leaf(
    ca: CertificateAuthority,
    holder: str,
    purpose: str,
    key: _PrivateKey,
    names: list[x509.GeneralName],
    valid_days: int,
) -> x509.Certificate:
    """A certificate for `key`'s public half, issued to `holder` for `purpose` only."""
    usages, extended_usage = _PURPOSES[purpose]
    key_usage = x509.KeyUsage(
        digital_signature=usages.get("digital_signature", False),
        content_commitment=usages.get("content_commitment", False),
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=usages.get("key_agreement", False),
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    public_key = key.public_key()
    now = now_utc()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.consortium),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, purpose),
            x509.NameAttribute(NameOID.COMMON_NAME, holder),
        ]
    )
    not_after = min(now + dt.timedelta(days=valid_days), ca.certificate.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([extended_usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca._key.public_key()),
            critical=False,
        )
        .sign(ca._key, hashes.SHA256())
    )


def _write_credentials(
    directory: Path,
    ca: CertificateAuthority,
    issued: list[tuple[str, _PrivateKey, x509.Certificate]],
) -> None:
    """Write ``ca.crt`` and each key (0600) with its certificate (``x.key`` → ``x.crt``)."""
    _make_private_dir(directory)
    _write_certificate(directory / CA_CERTIFICATE_FILE, ca.certificate)
    for key_file, key, certificate in issued:
        _write_private_key(directory / key_file, key)
        _write_certificate(directory / key_file.replace(".key", ".crt"), certificate)


# --------------------------------------------------------------------------- loading


def load_credentials(directory: str | os.PathLike[str]) -> Credentials:
    """Load and check a credentials folder written by `issue_organization`/`issue_server`.

    Every certificate must be issued by the folder's ``ca.crt`` for the same holder, and
    every key must match its certificate; key files must not be readable by group or
    others. Raises `CredentialsError` (or `CertificateVerificationError`) otherwise.
    """
    folder = Path(directory)
    ca_certificate = _read_certificate(folder / CA_CERTIFICATE_FILE)
    _check_ca_certificate(ca_certificate)
    identity_certificate = _read_certificate(folder / IDENTITY_CERTIFICATE_FILE)
    role, name = _holder_of(identity_certificate, folder / IDENTITY_CERTIFICATE_FILE)
    if role is Role.ORGANIZATION:
        verify_identity_certificate(identity_certificate, ca_certificate, name)
    else:
        verify_server_identity_certificate(identity_certificate, ca_certificate, name)
    identity_key = _read_private_key(folder / IDENTITY_KEY_FILE)
    if not isinstance(identity_key, Ed25519PrivateKey):
        raise CredentialsError(f"{folder / IDENTITY_KEY_FILE} is not an Ed25519 key")
    _check_key_matches(identity_key.public_key(), identity_certificate, folder / IDENTITY_KEY_FILE)

    tls_certificate = _read_certificate(folder / TLS_CERTIFICATE_FILE)
    if role is Role.ORGANIZATION:
        tls_name = verify_tls_client_certificate(tls_certificate, ca_certificate)
    else:
        tls_name = verify_tls_server_certificate(tls_certificate, ca_certificate)
    if tls_name != name:
        raise CredentialsError(
            f"{folder / TLS_CERTIFICATE_FILE} names {tls_name!r} but "
            f"{folder / IDENTITY_CERTIFICATE_FILE} names {name!r}"
        )
    tls_key = _read_private_key(folder / TLS_KEY_FILE)
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{folder / TLS_KEY_FILE} is not an ECDSA key")
    _check_key_matches(tls_key.public_key(), tls_certificate, folder / TLS_KEY_FILE)

    sealing_certificate: x509.Certificate | None = None
    sealing_key: X25519PrivateKey | None = None
    if role is Role.ORGANIZATION:
        sealing_certificate = _read_certificate(folder / SEALING_CERTIFICATE_FILE)
        verify_sealing_certificate(sealing_certificate, ca_certificate, name)
        loaded = _read_private_key(folder / SEALING_KEY_FILE)
        if not isinstance(loaded, X25519PrivateKey):
            raise CredentialsError(f"{folder / SEALING_KEY_FILE} is not an X25519 key")
        _check_key_matches(loaded.public_key(), sealing_certificate, folder / SEALING_KEY_FILE)
        sealing_key = loaded
    return Credentials(
        role=role,
        name=name,
        consortium=_consortium_of(ca_certificate),
        directory=folder,
        ca_certificate=ca_certificate,
        tls_certificate=tls_certificate,
        tls_key=tls_key,
        identity_certificate=identity_certificate,
        identity_key=identity_key,
        sealing_certificate=sealing_certificate,
        sealing_key=sealing_key,
    )


def _holder_of(certificate: x509.Certificate, path: Path) -> tuple[Role, str]:
    try:
        return certificate_holder(certificate)
    except CertificateVerificationError as error:
        raise CredentialsError(f"{path} names no fedhft organization or server: {error}") from None


def _check_ca_certificate(certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        certificate.verify_directly_issued_by(certificate)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        raise CredentialsError("ca.crt is not a self-signed CA certificate") from None
    if not constraints.value.ca:
        raise CredentialsError("ca.crt is not a CA certificate (basic constraints)")
    if not isinstance(certificate.public_key(), ec.EllipticCurvePublicKey):
        raise CredentialsError("ca.crt does not hold an ECDSA key")


def _consortium_of(ca_certificate: x509.Certificate) -> str:
    values = ca_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    consortium = str(values[0].value) if len(values) == 1 else ""
    if not IDENTIFIER.fullmatch(consortium):
        raise CredentialsError("ca.crt names no consortium (subject O)")
    return consortium


def _check_key_matches(
    public_key: ec.EllipticCurvePublicKey | Ed25519PublicKey | X25519PublicKey,
    certificate: x509.Certificate,
    key_path: Path,
) -> None:
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if public_key.public_bytes(*raw) != certificate.public_key().public_bytes(*raw):
        raise CredentialsError(f"{key_path} does not match its certificate")


# --------------------------------------------------------------------------- files


def _check_identifier(value: str, field: str) -> None:
    if not IDENTIFIER.fullmatch(value):
        raise CredentialsError(
            f"`{field}` must be lower-case letters, digits, '-' and '_' (at most 63, "
            f"starting with a letter or digit), got {value!r}"
        )


def _check_days(valid_days: int) -> None:
    if not 1 <= valid_days <= 36_500:
        raise CredentialsError(f"validity must be 1 to 36500 days, got {valid_days}")


def _refuse_existing(directory: Path, names: list[str]) -> None:
    existing = [name for name in names if (directory / name).exists()]
    if existing:
        raise CredentialsError(
            f"{directory} already holds {', '.join(existing)}; credentials are never "
            "overwritten, choose a new folder"
        )


def _make_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private_key(path: Path, key: _PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(path, pem, mode=0o600)


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    _write_new(path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_new(path: Path, content: bytes, *, mode: int) -> None:
    # O_EXCL: never follow a planted symlink or truncate an existing file; the mode is
    # applied at creation, so the file is never readable by others, not even briefly.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, mode)
    except FileExistsError:
        raise CredentialsError(
            f"{path} already exists; credentials are never overwritten"
        ) from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CredentialsError(f"{path} is not a PEM certificate") from None


def _read_private_key(
    path: Path,
) -> ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    if os.name == "posix" and mode & 0o077:
        raise CredentialsError(
            f"{path} is readable by group or others (mode {mode & 0o777:04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The loader's own message could quote the file; say only what is wrong.
        raise CredentialsError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey):
        raise CredentialsError(f"{path} holds an unsupported key type")
    return key
