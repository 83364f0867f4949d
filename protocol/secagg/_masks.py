"""Key and mask derivations both halves of the masking protocol must compute identically.

Every derivation is HKDF-SHA256 with the purpose and the session id in salt and info
(:func:`fedhft.protocol._crypto.derive_key`). Every mask is a slice of a ChaCha20
keystream under a key specific to one pair (or one owner's support group), read at the
block's byte offset in the session's layout (:attr:`SessionParams.mask_offsets`).

- Share encryption key, per ordered pair: ``HKDF(X25519(c_sk_u, c_pk_v); sender, recipient)``.
- Pairwise mask seed, per unordered pair: ``HKDF(X25519(s_sk_u, s_pk_v); min, max)``.
- Pairwise mask of block b: ``ChaCha20(HKDF(seed))`` at b's offset, added by the smaller
  id of the pair and subtracted by the larger, so it cancels in the sum (Bonawitz et al.
  2017).
- Self mask of block b: ``ChaCha20(HKDF(b_{u,g}; u))`` at b's offset, with ``g`` the
  block's support group.

Notes:
    Why one key per pair (and per self-mask seed) is as safe as one per block: the
    pairwise and self-mask keys come from independent secrets (an X25519 agreement and
    a fresh random seed) under distinct HKDF purposes, and each carries the session id,
    so no two (session, pair or seed, purpose) ever share a key; the share-encryption
    keys, one per ordered pair, have their own purpose and are never a mask key. Under
    one key, block b's mask is the keystream bytes ``[offset_b, offset_b + len_b)`` and
    the blocks' ranges are disjoint, so no keystream byte masks two blocks or serves two
    purposes; to anyone without the key each block's mask is an independent uniform
    word vector, which is what the per-block keys gave. Client and server read the same
    bytes because both take the offsets from the agreed :class:`SessionParams`.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._crypto import MaskStream, derive_key, frame, x25519_agree

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


def pairwise_mask_key(seed: bytes, *, sid: bytes) -> bytes:
    """The ChaCha20 key of a pair's masks on every block the pair shares."""
    return derive_key(seed, purpose=_PAIR_MASK, sid=sid)


def self_mask_key(seed: bytes, *, sid: bytes, owner: str) -> bytes:
    """The ChaCha20 key of ``owner``'s self masks on the blocks of one support group
    (``seed`` is that group's self-mask seed)."""
    return derive_key(seed, purpose=_SELF_MASK, sid=sid, context=[owner.encode()])


def pairwise_mask(seed: bytes, *, sid: bytes) -> MaskStream:
    """The keystream of a pair's masks, read at each block's :attr:`mask_offsets`."""
    return MaskStream(pairwise_mask_key(seed, sid=sid))


def self_mask(seed: bytes, *, sid: bytes, owner: str) -> MaskStream:
    """The keystream of ``owner``'s self masks on one support group's blocks."""
    return MaskStream(self_mask_key(seed, sid=sid, owner=owner))


def subtracts_pairwise_mask(owner: str, peer: str) -> bool:
    """Whether ``owner`` subtracts (rather than adds) the mask it shares with ``peer``."""
    return owner > peer
