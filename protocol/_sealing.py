"""Sealing a payload to one organization's X25519 key, so that only that organization opens it.

The recipe is an ECIES-style sealed box built only from `cryptography` primitives, in the
spirit of HPKE's base mode (RFC 9180): a fresh ephemeral X25519 key pair agrees a secret
with the recipient's static "sealing" public key; HKDF-SHA256 (RFC 5869) derives a one-time
ChaCha20-Poly1305 key (RFC 8439) from it, with the ephemeral and recipient public keys as
salt and ``purpose ‖ consortium ‖ organization`` as ``info``; the same context is the
AEAD's associated data. The key ceremony of the CKKS mode uses it to hand every
organization the consortium's secret context.

Assumption: the sender obtained the recipient's sealing public key authentically (from
its enrollment record or certificate), otherwise anyone could substitute their own key.

Notes:
    Each sealing uses a fresh ephemeral key, so the derived AEAD key is used exactly
    once; the all-zero nonce is therefore safe and saves twelve bytes.
    Binding purpose, consortium and organization into both ``info`` and the associated
    data means a box sealed for one purpose or one organization never opens as another,
    even if the same sealing key were reused across consortia.
    Every failure to open (truncated box, wrong key, flipped bit, other context) raises
    the same :class:`~fedhft.protocol.errors.DecryptionError` with the same message, so a
    caller learns nothing about which check failed.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import DecryptionError

_MAGIC = b"FHSB\x01"  # fedhft sealed box, format version 1
_KEY_BYTES = 32
_NONCE = bytes(12)
_TAG_BYTES = 16
_OPAQUE = "sealed payload could not be opened"


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _context(purpose: str, consortium: str, organization: str) -> bytes:
    """Length-prefixed ``purpose ‖ consortium ‖ organization``, so no two contexts collide."""
    parts = [_MAGIC]
    for field in (purpose, consortium, organization):
        encoded = field.encode("utf-8")
        parts.append(struct.pack(">H", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def _aead_key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_BYTES,
        salt=ephemeral + recipient,
        info=context,
    ).derive(shared)


def _check_fields(purpose: str, consortium: str, organization: str) -> None:
    for name, field in (
        ("purpose", purpose),
        ("consortium", consortium),
        ("organization", organization),
    ):
        if not isinstance(field, str) or not field or len(field.encode("utf-8")) > 0xFFFF:
            raise ValueError(f"`{name}` must be a non-empty string of at most 65535 bytes")


def seal_to(
    recipient: X25519PublicKey,
    payload: bytes,
    *,
    purpose: str,
    consortium: str,
    organization: str,
) -> bytes:
    """Seal ``payload`` so that only the holder of ``recipient``'s private key opens it.

    ``purpose``, ``consortium`` and ``organization`` must be given again, identically, to
    :func:`open_sealed`. The box is ``len(payload) + 53`` bytes long.
    """
    _check_fields(purpose, consortium, organization)
    context = _context(purpose, consortium, organization)
    ephemeral_key = X25519PrivateKey.generate()
    ephemeral = _raw(ephemeral_key.public_key())
    recipient_raw = _raw(recipient)
    # `exchange` raises ValueError for a low-order recipient point (all-zero secret).
    shared = ephemeral_key.exchange(recipient)
    key = _aead_key(shared, ephemeral, recipient_raw, context)
    sealed = ChaCha20Poly1305(key).encrypt(_NONCE, bytes(payload), context + ephemeral)
    return _MAGIC + ephemeral + sealed


def open_sealed(
    private_key: X25519PrivateKey,
    sealed: bytes,
    *,
    purpose: str,
    consortium: str,
    organization: str,
) -> bytes:
    """Open a box made by :func:`seal_to`; any failure raises one opaque `DecryptionError`."""
    _check_fields(purpose, consortium, organization)
    header = len(_MAGIC) + _KEY_BYTES
    if (
        not isinstance(sealed, bytes | bytearray | memoryview)
        or len(sealed) < header + _TAG_BYTES
        or bytes(sealed[: len(_MAGIC)]) != _MAGIC
    ):
        raise DecryptionError(_OPAQUE)
    sealed = bytes(sealed)
    ephemeral = sealed[len(_MAGIC) : header]
    context = _context(purpose, consortium, organization)
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        key = _aead_key(shared, ephemeral, _raw(private_key.public_key()), context)
        return ChaCha20Poly1305(key).decrypt(_NONCE, sealed[header:], context + ephemeral)
    except (InvalidTag, ValueError):
        # ValueError: a low-order ephemeral point gives an all-zero shared secret.
        raise DecryptionError(_OPAQUE) from None
