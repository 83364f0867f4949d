"""Key and mask derivations both halves of the masking protocol must compute identically.

Every derivation is HKDF-SHA256 with the purpose and the session id in salt and info
(:func:`fedhft.protocol._crypto.derive_key`); every mask is a ChaCha20 keystream under a
key specific to one (pair or owner, block).

- Share encryption key, per ordered pair: ``HKDF(X25519(c_sk_u, c_pk_v); sender, recipient)``.
- Pairwise mask seed, per unordered pair: ``HKDF(X25519(s_sk_u, s_pk_v); min, max)``.
- Pairwise mask of block b: ``ChaCha20(HKDF(seed; b))``, added by the smaller id of the
  pair and subtracted by the larger, so it cancels in the sum (Bonawitz et al. 2017).
- Self mask of block b: ``ChaCha20(HKDF(b_{u,g}; u, b))`` with ``g`` the block's support
  group.
"""

from __future__ import annotations

import functools
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._crypto import KeyDerivation, derive_key, frame, x25519_agree

_SHARE_KEY = b"fedhft/secagg/v1/share-encryption"
_SHARE_AD = b"fedhft/secagg/v1/share-associated-data"
_PAIR_SEED = b"fedhft/secagg/v1/pairwise-seed"
_PAIR_MASK = b"fedhft/secagg/v1/pairwise-mask"
_SELF_MASK = b"fedhft/secagg/v1/self-mask"


def share_encryption_key(
    private_key: X25519PrivateKey, peer_public: bytes, *, sid: bytes, sender: str, recipient: str
) -> bytes:
    """The ChaCha20-Poly1305 key for shares sent from ``sender`` to ``recipient``."""
    shared = x25519_agree(private_key, peer_public)
    return derive_key(
        shared, purpose=_SHARE_KEY, sid=sid, context=[sender.encode(), recipient.encode()]
    )


def share_associated_data(
    *, sid: bytes, round: int, cluster: int, sender: str, recipient: str
) -> bytes:
    """Associated data of one sealed share bundle: session, round, cluster and both ends."""
    return frame(
        [_SHARE_AD, sid, struct.pack(">QI", round, cluster), sender.encode(), recipient.encode()]
    )


def pairwise_seed(
    private_key: X25519PrivateKey, peer_public: bytes, *, sid: bytes, owner: str, peer: str
) -> bytes:
    """The seed both ends of a pair derive for their cancelling masks."""
    shared = x25519_agree(private_key, peer_public)
    low, high = sorted((owner, peer))
    return derive_key(shared, purpose=_PAIR_SEED, sid=sid, context=[low.encode(), high.encode()])


def pairwise_mask_key(seed: bytes, *, sid: bytes, block: str) -> bytes:
    """The ChaCha20 key of a pair's mask on one block."""
    return derive_key(seed, purpose=_PAIR_MASK, sid=sid, context=[block.encode()])


def self_mask_key(seed: bytes, *, sid: bytes, owner: str, block: str) -> bytes:
    """The ChaCha20 key of ``owner``'s self mask on one block."""
    return derive_key(seed, purpose=_SELF_MASK, sid=sid, context=[owner.encode(), block.encode()])


class MaskKeys:
    """The per-block mask keys of one seed (:func:`pairwise_mask_key` or
    :func:`self_mask_key`), with one HKDF extract for all blocks; ``repr`` hides them."""

    __slots__ = ("_derivation", "_owner")

    def __init__(self, derivation: KeyDerivation, owner: bytes) -> None:
        self._derivation = derivation
        self._owner = owner

    @classmethod
    def pairwise(cls, seed: bytes, *, sid: bytes) -> MaskKeys:
        """The keys of a pair's masks, from its :func:`pairwise_seed`."""
        return cls(KeyDerivation(seed, purpose=_PAIR_MASK, sid=sid), b"")

    @classmethod
    def self_mask(cls, seed: bytes, *, sid: bytes, owner: str) -> MaskKeys:
        """The keys of ``owner``'s self masks, from its self-mask seed."""
        return cls(KeyDerivation(seed, purpose=_SELF_MASK, sid=sid), _framed(owner))

    def of(self, block: str) -> bytes:
        """The ChaCha20 key of the mask on ``block``."""
        return self._derivation.key(self._owner + _framed(block))

    def __repr__(self) -> str:
        return "MaskKeys(<hidden>)"


@functools.lru_cache(maxsize=4096)
def _framed(name: str) -> bytes:
    """``frame([name])``: block ids and organizations recur in every seed's derivation."""
    return frame([name.encode()])


def subtracts_pairwise_mask(owner: str, peer: str) -> bool:
    """Whether ``owner`` subtracts (rather than adds) the mask it shares with ``peer``."""
    return owner > peer
