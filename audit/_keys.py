"""Public keys that verify audit records and receipts: loading, fingerprints, lookup.

Parties sign with Ed25519 identity keys certified by the consortium CA (ARCHITECTURE.md §1,
`fedhft.protocol` PKI): an organization's identity certificate names it by the URI
``fedhft://org/<id>``, the server's by ``fedhft://server/<host>``, and both carry the
identity extended key usage. An auditor gets a folder (``--certs DIR``) holding:

- ``ca.crt`` (or ``ca.pem``): the consortium CA, obtained from a trusted channel;
- per party, ``<party>.crt`` / ``<party>.pem``, or the party's credentials folder
  ``<party>/identity.crt`` as `fedhft ca issue` writes it.

With the CA present, a party's certificate is accepted only if the CA issued it as an
identity certificate to that very party and it was valid at the times its records were
signed (`fedhft.protocol.verify_identity_certificate`); the server's key is found by its
``fedhft://server/`` name, so no organization's certificate can pass for the server's.
Without a CA, bare PEM public keys or certificates are taken as given (the caller is
told: `PartyKey.ca_checked` is false).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.protocol import SERVER_URI_PREFIX, server_in_certificate
from fedhft.protocol.errors import CertificateVerificationError

from .errors import KeyLoadError

CA_FILE_NAMES = ("ca.crt", "ca.pem")
SERVER_FILE_STEMS = ("server", "aggregator")


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PartyKey:
    """A public key, where it came from, and whether the consortium CA vouched for it."""

    public_key: Ed25519PublicKey
    source: Path
    certificate: x509.Certificate | None = None
    ca_checked: bool = False

    @property
    def fingerprint(self) -> str:
        """`key_fingerprint` of the key."""
        return key_fingerprint(self.public_key)


def _certificate_from(data: bytes) -> x509.Certificate | None:
    for loader in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return loader(data)
        except ValueError:
            continue
    return None


def load_party_key(path: str | Path) -> PartyKey:
    """Load an Ed25519 public key from a PEM/DER public key or X.509 certificate file.

    Raises `KeyLoadError` naming the file when it holds something else (an RSA key, a
    private key, garbage). The file's content is never echoed.
    """
    key_path = Path(path)
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise KeyLoadError(f"cannot read key file {key_path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise KeyLoadError(
            f"{key_path} holds a private key; give the auditor the public key or the "
            "certificate, and keep the private key where it is"
        )
    certificate = _certificate_from(data)
    if certificate is not None:
        public_key: object = certificate.public_key()
    else:
        public_key = None
        for loader in (serialization.load_pem_public_key, serialization.load_der_public_key):
            try:
                public_key = loader(data)
                break
            except ValueError:
                continue
        if public_key is None:
            raise KeyLoadError(
                f"{key_path} is neither a PEM/DER public key nor an X.509 certificate"
            )
    if not isinstance(public_key, Ed25519PublicKey):
        raise KeyLoadError(
            f"{key_path} holds a {type(public_key).__name__}; audit records are signed "
            "with Ed25519 identity keys"
        )
    return PartyKey(public_key=public_key, source=key_path, certificate=certificate)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key of a PEM/DER public-key or certificate file."""
    return load_party_key(path).public_key


def _candidates(folder: Path, name: str) -> list[Path]:
    paths = [folder / f"{name}.crt", folder / f"{name}.pem", folder / name / "identity.crt"]
    return [path for path in paths if path.is_file()]


def _ca_certificate(folder: Path) -> x509.Certificate | None:
    for name in CA_FILE_NAMES:
        path = folder / name
        if path.is_file():
            certificate = _certificate_from(path.read_bytes())
            if certificate is None:
                raise KeyLoadError(f"{path} is not an X.509 certificate")
            return certificate
    return None


def _server_named(certificate: x509.Certificate | None) -> str | None:
    """The host a certificate names as the server (`fedhft.protocol.certificate_holder`),
    or None when it names anything else or nothing."""
    if certificate is None:
        return None
    try:
        return server_in_certificate(certificate)
    except CertificateVerificationError:
        return None


def _check_with_ca(
    party_key: PartyKey,
    ca_certificate: x509.Certificate,
    *,
    name: str,
    server: bool,
    at: Sequence[datetime],
) -> PartyKey:
    from fedhft.protocol import verify_identity_certificate, verify_server_identity_certificate
    from fedhft.protocol.errors import ProtocolError

    if party_key.certificate is None:
        raise KeyLoadError(
            f"{party_key.source} is a bare public key, but the folder has the consortium CA; "
            f"give the identity certificate the CA issued to `{name}`"
        )
    verify = verify_server_identity_certificate if server else verify_identity_certificate
    for moment in at or (None,):
        try:
            verify(party_key.certificate, ca_certificate, name, now=moment)
        except ProtocolError as exc:
            when = f" at {moment:%Y-%m-%dT%H:%M:%SZ}" if moment is not None else ""
            raise KeyLoadError(f"{party_key.source}{when}: {exc}") from None
    return PartyKey(
        public_key=party_key.public_key,
        source=party_key.source,
        certificate=party_key.certificate,
        ca_checked=True,
    )


def find_party_key(certs_dir: str | Path, party: str, *, at: Sequence[datetime] = ()) -> PartyKey:
    """The identity key of ``party`` (an organization, or the server by host name).

    Looks for `<party>.crt`, `<party>.pem` or `<party>/identity.crt`. When the folder
    holds the CA, the certificate must be the CA-issued identity certificate of
    ``party``, valid at each time in ``at`` (the times the records were signed; now
    when empty). Raises `KeyLoadError` otherwise.
    """
    folder = Path(certs_dir)
    if not folder.is_dir():
        raise KeyLoadError(f"certificate folder {folder} does not exist")
    found = _candidates(folder, party)
    if not found:
        raise KeyLoadError(
            f"no certificate or public key for `{party}` in {folder} (looked for "
            f"{party}.crt, {party}.pem and {party}/identity.crt)"
        )
    party_key = load_party_key(found[0])
    ca_certificate = _ca_certificate(folder)
    if ca_certificate is None:
        return party_key
    # The server keeps a log too; its certificate names it fedhft://server/<host>.
    is_server = _server_named(party_key.certificate) == party
    return _check_with_ca(party_key, ca_certificate, name=party, server=is_server, at=at)


def _certificate_files(folder: Path) -> Iterable[Path]:
    for pattern in ("*.crt", "*.pem", "*/identity.crt"):
        for path in sorted(folder.glob(pattern)):
            if path.name not in CA_FILE_NAMES and path.is_file():
                yield path


def find_server_key(
    certs_dir: str | Path, server: str | None = None, *, at: Sequence[datetime] = ()
) -> PartyKey:
    """The aggregation server's identity key in a certificate folder.

    ``server`` names the server (its host name, as its log's `party`); without it the
    folder must hold exactly one certificate naming a ``fedhft://server/`` holder, or
    else a key file called `server` or `aggregator`. With the CA present, the
    certificate must be the CA-issued server identity certificate. Organization
    certificates never count: a receipt is only as good as the server's signature.
    """
    folder = Path(certs_dir)
    if not folder.is_dir():
        raise KeyLoadError(f"certificate folder {folder} does not exist")
    ca_certificate = _ca_certificate(folder)
    chosen: PartyKey | None = None
    name = server
    if server is not None and _candidates(folder, server):
        chosen = load_party_key(_candidates(folder, server)[0])
    else:
        servers: list[tuple[str, PartyKey]] = []
        for path in _certificate_files(folder):
            certificate = _certificate_from(path.read_bytes())
            if certificate is None:
                continue
            host = _server_named(certificate)
            if host is not None and (server is None or host == server.lower()):
                servers.append((host, load_party_key(path)))
        if len(servers) > 1:
            raise KeyLoadError(
                f"{folder} holds several server certificates "
                f"({', '.join(sorted({host for host, _ in servers}))}); name the server"
            )
        if servers:
            name, chosen = servers[0]
        elif ca_certificate is None:
            stems = (server,) if server else SERVER_FILE_STEMS
            for stem in stems:
                if stem and _candidates(folder, stem):
                    chosen = load_party_key(_candidates(folder, stem)[0])
                    break
    if chosen is None:
        raise KeyLoadError(
            f"no certificate of the aggregation server in {folder} (a certificate naming "
            f"{SERVER_URI_PREFIX}<host>, or server.crt / aggregator.crt)"
        )
    if ca_certificate is None:
        return chosen
    if name is None:
        name = _server_named(chosen.certificate) or "server"
    return _check_with_ca(chosen, ca_certificate, name=name, server=True, at=at)
