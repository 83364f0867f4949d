"""Complete cryptographic recipes for the masking protocol, all built on `cryptography`.

Implemented here, and nowhere else in fedhft.protocol:

- X25519 key agreement (RFC 7748) with low-order points rejected;
- HKDF-SHA256 (RFC 5869), always domain-separated by a purpose and the session id;
- ChaCha20-Poly1305 (RFC 8439 §2.8) sealing of Shamir shares with a fresh random nonce
  and caller-supplied associated data;
- the ChaCha20 keystream (RFC 8439 §2.4) as the mask PRG, written straight into numpy
  buffers and added to (or subtracted from) a vector of uint32/uint64 words;
- Ed25519 signatures over domain-tagged canonical bytes.

Notes:
    Callers never choose a nonce. Share encryption uses a 96-bit random nonce with a key
    that is used for one message per direction. The mask PRG (:class:`MaskStream`) uses a
    256-bit key derived with HKDF for one (pair or self-mask seed, session, purpose) and
    the all-zero nonce; a mask over a block is the slice of that one keystream at the
    block's byte offset in the session's layout (every block laid end to end), started
    with ChaCha20's 32-bit block counter. Blocks occupy disjoint byte ranges, so no two
    masks under one key share a keystream byte; the layout is at most 2^32 ChaCha20
    blocks (256 GiB), so the counter never wraps. A mask PRG seeded with anything
    shorter than 256 bits (Flower issue #7522 seeds numpy with 32 bits) would let the
    server brute-force the masks.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from .errors import DecryptionError, ForgedMessageError

KEY_BYTES = 32
"""Bytes of every symmetric key, X25519 key and derived seed."""

AEAD_NONCE_BYTES = 12
AEAD_TAG_BYTES = 16
SIGNATURE_BYTES = 64

MaskWords = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def frame(parts: Iterable[bytes]) -> bytes:
    """Concatenate byte strings, each prefixed by its 4-byte big-endian length.

    Framing makes every concatenation unambiguous, so no two different tuples of parts
    hash, sign or derive to the same input.
    """
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


# --------------------------------------------------------------------------- HKDF


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 extract-and-expand (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_key(
    secret: bytes, *, purpose: bytes, sid: bytes, context: Iterable[bytes] = ()
) -> bytes:
    """A 32-byte key for one purpose in one session, from a shared secret or seed.

    Both the salt and the info bind the purpose and the session id; ``context`` adds
    what distinguishes keys of the same purpose (sender and recipient, block id).
    """
    salt = frame([purpose, sid])
    return hkdf_sha256(secret, salt=salt, info=frame([purpose, sid, *context]))


class KeyDerivation:
    """:func:`derive_key` of one secret, purpose and session for many contexts.

    HKDF's extract step depends only on the secret and the salt (purpose and session), so
    it runs once here and :meth:`key` runs only the expand step: one HMAC per key
    instead of three, with the very keys :func:`derive_key` gives. ``repr`` hides the
    secret.
    """

    __slots__ = ("_prk", "_salt")

    def __init__(self, secret: bytes, *, purpose: bytes, sid: bytes) -> None:
        self._salt = frame([purpose, sid])
        self._prk = HKDF.extract(_SHA256, self._salt, secret)

    def key(self, framed_context: bytes) -> bytes:
        """The key of ``derive_key(secret, ..., context=context)``, given
        ``frame(context)`` (callers keep those bytes rather than framing them per seed)."""
        # frame([purpose, sid, *context]) is frame([purpose, sid]) followed by frame(context).
        info = self._salt + framed_context
        return HKDFExpand(algorithm=_SHA256, length=KEY_BYTES, info=info).derive(self._prk)

    def __repr__(self) -> str:
        return "KeyDerivation(<hidden>)"


_SHA256 = hashes.SHA256()


# --------------------------------------------------------------------------- X25519


def generate_agreement_key() -> X25519PrivateKey:
    """A fresh X25519 private key for one session."""
    return X25519PrivateKey.generate()


def agreement_public_bytes(private_key: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``private_key``."""
    return private_key.public_key().public_bytes_raw()


def agreement_private_bytes(private_key: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key (it is secret-shared, never sent in the clear)."""
    return private_key.private_bytes_raw()


def load_agreement_key(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from its 32 raw bytes."""
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_agree(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret with a peer's 32-byte public key.

    Raises:
        ForgedMessageError: the public key is malformed or a low-order point, which
            would make the shared secret predictable.
    """
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise ForgedMessageError(
            "a peer's X25519 public key is malformed or of low order"
        ) from None


# --------------------------------------------------------------------------- AEAD


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305 ciphertext followed by its 16-byte tag (RFC 8439 §2.8)."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; any failure is one opaque :class:`DecryptionError`."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, associated_data)
    except (InvalidTag, ValueError):
        raise DecryptionError("an encrypted share failed to decrypt") from None


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt under a fresh random nonce; returns ``nonce ‖ ciphertext ‖ tag``."""
    nonce = os.urandom(AEAD_NONCE_BYTES)
    return nonce + aead_encrypt(key, nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Decrypt the output of :func:`seal`; raises :class:`DecryptionError` on any failure."""
    if len(sealed) < AEAD_NONCE_BYTES + AEAD_TAG_BYTES:
        raise DecryptionError("an encrypted share failed to decrypt")
    nonce, ciphertext = sealed[:AEAD_NONCE_BYTES], sealed[AEAD_NONCE_BYTES:]
    return aead_decrypt(key, nonce, ciphertext, associated_data)


def sealed_length(plaintext_length: int) -> int:
    """Length of :func:`seal`'s output for a plaintext of ``plaintext_length`` bytes."""
    return AEAD_NONCE_BYTES + plaintext_length + AEAD_TAG_BYTES


# --------------------------------------------------------------------------- ChaCha20 PRG


def chacha20_keystream(
    key: bytes, *, length: int, nonce: bytes = bytes(12), counter: int = 0
) -> bytes:
    """``length`` bytes of the RFC 8439 ChaCha20 keystream from block ``counter``.

    `cryptography` takes a 16-byte nonce: the 4-byte little-endian block counter followed
    by the 12-byte RFC 8439 nonce.
    """
    full_nonce = struct.pack("<I", counter) + nonce
    encryptor = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
    return encryptor.update(_zeros(length))


def apply_mask(
    accumulator: MaskWords,
    key: bytes,
    *,
    negate: bool = False,
    scratch: MaskWords | None = None,
) -> None:
    """Add (or subtract) the ChaCha20 keystream under ``key`` to ``accumulator`` in place.

    The keystream is read as little-endian words of the accumulator's width, so the
    arithmetic is modulo 2^32 or 2^64 and identical on every host. ``scratch`` (same
    dtype and length) avoids an allocation when many masks are applied to one block.
    """
    if scratch is None:
        scratch = np.empty_like(accumulator)
    _fill_keystream(scratch, key)
    if negate:
        np.subtract(accumulator, scratch, out=accumulator)
    else:
        np.add(accumulator, scratch, out=accumulator)


class MaskStream:
    """The ChaCha20 keystream under one mask key, read at any byte offset.

    :meth:`fill` continues the running keystream when asked for the bytes right after
    the last ones it gave, so a party that masks a run of adjacent blocks with one key
    sets the cipher up once for the run; any other offset starts the stream afresh at
    that offset (ChaCha20 block ``offset // 64``, skipping ``offset % 64`` bytes).
    ``repr`` hides the key.
    """

    __slots__ = ("_encryptor", "_key", "_position")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._encryptor: Any = None
        self._position = -1

    def fill(self, words: MaskWords, offset: int) -> None:
        """Overwrite ``words`` with the keystream bytes ``[offset, offset + nbytes)``,
        read as little-endian words."""
        view = words.data.cast("B")
        if offset != self._position or self._encryptor is None:
            self._encryptor = _start_keystream(self._key, offset)
        self._encryptor.update_into(_zeros(view.nbytes), view)
        self._position = offset + view.nbytes
        if not np.little_endian:  # pragma: no cover - big-endian hosts only
            words.byteswap(inplace=True)

    def __repr__(self) -> str:
        return "MaskStream(<hidden>)"


MAX_KEYSTREAM_BYTES = 64 * 2**32
"""The longest layout one mask key covers: ChaCha20's 32-bit counter of 64-byte blocks."""


def _start_keystream(key: bytes, offset: int) -> Any:
    if not 0 <= offset < MAX_KEYSTREAM_BYTES:
        raise ValueError(f"a keystream offset lies in [0, {MAX_KEYSTREAM_BYTES}), got {offset}")
    counter, skip = divmod(offset, 64)
    nonce = struct.pack("<I", counter) + bytes(12)
    started = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    if skip:
        started.update(_zeros(skip))
    return started


def apply_masks(
    accumulator: MaskWords, masks: Sequence[tuple[MaskStream, bool]], *, offset: int
) -> None:
    """Add (or subtract, where ``negate``) each ``(stream, negate)`` of ``masks``, read at
    byte ``offset``, to ``accumulator`` in place.

    Keystreams are generated a few at a time into the rows of one scratch matrix and
    added (or subtracted) as one column sum, so the per-mask cost is the keystream
    itself rather than one numpy call per mask; the sums are modulo 2^32 or 2^64, so the
    order of the masks does not change the result.
    """
    rows = min(len(masks), _MASK_ROWS)
    if not rows:
        return
    scratch = cast(MaskWords, np.empty((rows, accumulator.size), dtype=accumulator.dtype))
    column = np.empty_like(accumulator)
    for negate, operation in ((False, np.add), (True, np.subtract)):
        streams = [stream for stream, negated in masks if negated is negate]
        for start in range(0, len(streams), rows):
            chunk = streams[start : start + rows]
            for row, stream in zip(scratch, chunk, strict=False):
                stream.fill(row, offset)
            np.add.reduce(scratch[: len(chunk)], axis=0, out=column)
            operation(accumulator, column, out=accumulator)


_MASK_ROWS = 16
"""Keystreams summed at once by :func:`apply_masks` (16 rows of a 4096-word block fit
in a core's L2 cache)."""


def mask_words(key: bytes, length: int, width_bits: int) -> MaskWords:
    """The mask under ``key`` as ``length`` words of ``width_bits`` (32 or 64) bits."""
    words = cast(MaskWords, np.empty(length, dtype=_word_dtype(width_bits)))
    _fill_keystream(words, key)
    return words


def _fill_keystream(words: MaskWords, key: bytes) -> None:
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    view = words.data.cast("B")
    encryptor.update_into(_zeros(view.nbytes), view)
    if not np.little_endian:  # pragma: no cover - big-endian hosts only
        # The keystream is defined as little-endian words on every host.
        words.byteswap(inplace=True)


def _word_dtype(width_bits: int) -> type[np.uint32] | type[np.uint64]:
    if width_bits == 32:
        return np.uint32
    if width_bits == 64:
        return np.uint64
    raise ValueError(f"mask words are 32 or 64 bits wide, got {width_bits}")


@functools.lru_cache(maxsize=8)
def _zeros(nbytes: int) -> bytes:
    return bytes(nbytes)


# --------------------------------------------------------------------------- Ed25519


def sign(identity_key: Ed25519PrivateKey, domain: bytes, payload: bytes) -> bytes:
    """Ed25519 signature over ``frame([domain, payload])``."""
    return identity_key.sign(frame([domain, payload]))


def verify_signature(
    public_key: Ed25519PublicKey, signature: bytes, domain: bytes, payload: bytes, *, signer: str
) -> None:
    """Verify an Ed25519 signature made by :func:`sign`.

    Raises:
        ForgedMessageError: the signature does not verify under ``signer``'s key.
    """
    try:
        public_key.verify(signature, frame([domain, payload]))
    except InvalidSignature:
        raise ForgedMessageError(
            f"signature by {signer!r} does not verify under its identity key"
        ) from None
