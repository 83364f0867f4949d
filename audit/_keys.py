"""Public keys that verify audit records and receipts: loading, fingerprints, lookup.

Parties sign with Ed25519 identity keys certified by the consortium CA (DESIGN §1). An
auditor is given either bare public keys (PEM `PUBLIC KEY`) or X.509 certificates whose
subject key is Ed25519, typically a folder with `<party>.pem` or `<party>.crt` per party
and optionally the CA certificate as `ca.pem` / `ca.crt`. When the CA is present, a
party certificate is accepted only if the CA signed it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import KeyLoadError

CA_FILE_NAMES = ("ca.pem", "ca.crt")
SERVER_FILE_STEMS = ("server", "aggregator")


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PartyKey:
    """A public key and where it came from."""

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


def find_party_key(certs_dir: str | Path, party: str) -> PartyKey:
    """The key of ``party`` in a certificate folder (`<party>.pem` or `<party>.crt`).

    When the folder holds the consortium CA (`ca.pem` / `ca.crt`), the party's file must
    be a certificate the CA signed. Raises `KeyLoadError` otherwise.
    """
    folder = Path(certs_dir)
    if not folder.is_dir():
        raise KeyLoadError(f"certificate folder {folder} does not exist")
    candidates = [folder / f"{party}{suffix}" for suffix in (".pem", ".crt")]
    found = [candidate for candidate in candidates if candidate.is_file()]
    if not found:
        raise KeyLoadError(
            f"no certificate or public key for `{party}` in {folder} "
            f"(looked for {', '.join(c.name for c in candidates)})"
        )
    party_key = load_party_key(found[0])
    ca_path = next((folder / name for name in CA_FILE_NAMES if (folder / name).is_file()), None)
    if ca_path is None:
        return party_key
    ca_certificate = _certificate_from(ca_path.read_bytes())
    if ca_certificate is None:
        raise KeyLoadError(f"{ca_path} is not an X.509 certificate")
    if party_key.certificate is None:
        raise KeyLoadError(
            f"{party_key.source} is a bare public key, but {folder} has a CA certificate; "
            f"give the certificate the CA issued to `{party}`"
        )
    try:
        party_key.certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise KeyLoadError(
            f"{party_key.source} was not issued by the consortium CA {ca_path}"
        ) from None
    return PartyKey(
        public_key=party_key.public_key,
        source=party_key.source,
        certificate=party_key.certificate,
        ca_checked=True,
    )


def find_server_key(certs_dir: str | Path, server_party: str | None = None) -> PartyKey:
    """The aggregation server's key in a certificate folder.

    Looks for ``server_party``'s file when the server's log names it, else for
    `server.pem|crt` or `aggregator.pem|crt`. Organization certificates are never used
    for receipts: a receipt counts only when the consortium's server signed it.
    """
    stems = (server_party,) if server_party else SERVER_FILE_STEMS
    problems: list[str] = []
    for stem in stems:
        assert stem is not None
        try:
            return find_party_key(certs_dir, stem)
        except KeyLoadError as exc:
            problems.append(str(exc))
    raise KeyLoadError("; ".join(problems))
