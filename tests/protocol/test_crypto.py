"""Known-answer and must-fail vectors for the cryptographic recipes in `_crypto.py`.

Each vector is taken verbatim from the RFC named beside it and run through our own
wrappers, so a wrong nonce layout, key order or framing shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.protocol._crypto import (
    aead_decrypt,
    aead_encrypt,
    agreement_public_bytes,
    apply_mask,
    chacha20_keystream,
    derive_key,
    hkdf_sha256,
    load_agreement_key,
    mask_words,
    open_sealed,
    seal,
    sign,
    verify_signature,
    x25519_agree,
)
from fedhft.protocol.errors import DecryptionError, ForgedMessageError

h = bytes.fromhex

# RFC 7748 §6.1 (X25519 Diffie-Hellman).
ALICE_PRIVATE = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_SECRET = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 8439 §2.8.2 (ChaCha20-Poly1305 AEAD) and §2.4.2 (ChaCha20 encryption).
SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
AEAD_KEY = bytes(range(0x80, 0xA0))
AEAD_NONCE = h("070000004041424344454647")
AEAD_AAD = h("50515253c0c1c2c3c4c5c6c7")
AEAD_CIPHERTEXT = h(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb"
    "69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad6"
    "75945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"
)
AEAD_TAG = h("1ae10b594f09e26a7e902ecbd0600691")
CHACHA_KEY = bytes(range(32))
CHACHA_NONCE = h("000000000000004a00000000")
CHACHA_CIPHERTEXT = h(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593d"
    "abcd62b3571639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16cc"
    "f806818ce91ab77937365af90bbf74a35be6b40b8eedf2785e42874d"
)

# RFC 5869 Appendix A.1 (HKDF-SHA256, test case 1).
HKDF_IKM = h("0b" * 22)
HKDF_SALT = h("000102030405060708090a0b0c")
HKDF_INFO = h("f0f1f2f3f4f5f6f7f8f9")
HKDF_OKM = h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_x25519_rfc7748_public_keys() -> None:
    """Our X25519 wrapper derives the RFC 7748 §6.1 public keys from the private keys."""
    assert agreement_public_bytes(load_agreement_key(ALICE_PRIVATE)) == ALICE_PUBLIC
    assert agreement_public_bytes(load_agreement_key(BOB_PRIVATE)) == BOB_PUBLIC


def test_x25519_rfc7748_shared_secret_both_ways() -> None:
    """Both ends of the RFC 7748 §6.1 exchange compute the published shared secret."""
    assert x25519_agree(load_agreement_key(ALICE_PRIVATE), BOB_PUBLIC) == SHARED_SECRET
    assert x25519_agree(load_agreement_key(BOB_PRIVATE), ALICE_PUBLIC) == SHARED_SECRET


@pytest.mark.parametrize(
    "public",
    [bytes(32), (1).to_bytes(32, "little"), b"\x01" * 31],
    ids=["zero-point", "order-one-point", "short"],
)
def test_x25519_rejects_low_order_or_malformed_points(public: bytes) -> None:
    """A low-order or malformed peer key is a forged message, not a predictable secret."""
    with pytest.raises(ForgedMessageError):
        x25519_agree(load_agreement_key(ALICE_PRIVATE), public)


def test_hkdf_rfc5869_test_case_1() -> None:
    """HKDF-SHA256 reproduces RFC 5869 test case 1 (42 bytes of output)."""
    assert hkdf_sha256(HKDF_IKM, salt=HKDF_SALT, info=HKDF_INFO, length=42) == HKDF_OKM


def test_hkdf_wrong_info_does_not_match() -> None:
    """Changing one byte of info gives a different key (the vector must fail)."""
    assert hkdf_sha256(HKDF_IKM, salt=HKDF_SALT, info=HKDF_INFO[:-1] + b"\x00", length=42) != (
        HKDF_OKM
    )


def test_derive_key_separates_purpose_session_and_context() -> None:
    """Keys differ when the purpose, the session id or the context differs."""
    secret = b"\x07" * 32
    sid = b"\x01" * 32
    base = derive_key(secret, purpose=b"a", sid=sid, context=[b"x"])
    assert len(base) == 32
    assert derive_key(secret, purpose=b"b", sid=sid, context=[b"x"]) != base
    assert derive_key(secret, purpose=b"a", sid=b"\x02" * 32, context=[b"x"]) != base
    assert derive_key(secret, purpose=b"a", sid=sid, context=[b"y"]) != base
    # Framing keeps ("ab", "c") and ("a", "bc") apart.
    assert derive_key(secret, purpose=b"a", sid=sid, context=[b"ab", b"c"]) != derive_key(
        secret, purpose=b"a", sid=sid, context=[b"a", b"bc"]
    )


def test_chacha20_poly1305_rfc8439_vector() -> None:
    """Encryption reproduces RFC 8439 §2.8.2 ciphertext and tag; decryption inverts it."""
    sealed = aead_encrypt(AEAD_KEY, AEAD_NONCE, SUNSCREEN, AEAD_AAD)
    assert sealed == AEAD_CIPHERTEXT + AEAD_TAG
    assert aead_decrypt(AEAD_KEY, AEAD_NONCE, sealed, AEAD_AAD) == SUNSCREEN


@pytest.mark.parametrize("position", [0, 57, len(AEAD_CIPHERTEXT), len(AEAD_CIPHERTEXT) + 15])
def test_chacha20_poly1305_rfc8439_flipped_bit_fails(position: int) -> None:
    """A flipped bit in the ciphertext or the tag of the RFC vector is a DecryptionError."""
    sealed = bytearray(AEAD_CIPHERTEXT + AEAD_TAG)
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionError):
        aead_decrypt(AEAD_KEY, AEAD_NONCE, bytes(sealed), AEAD_AAD)


def test_chacha20_poly1305_wrong_associated_data_fails() -> None:
    """The RFC vector does not open under other associated data (e.g. another session)."""
    with pytest.raises(DecryptionError):
        aead_decrypt(AEAD_KEY, AEAD_NONCE, AEAD_CIPHERTEXT + AEAD_TAG, AEAD_AAD[:-1] + b"\x00")


def test_seal_round_trip_uses_fresh_nonces() -> None:
    """seal/open_sealed round-trip, and two seals of one plaintext differ (random nonce)."""
    first = seal(AEAD_KEY, b"share", b"ad")
    second = seal(AEAD_KEY, b"share", b"ad")
    assert first != second
    assert open_sealed(AEAD_KEY, first, b"ad") == b"share"


@pytest.mark.parametrize("sealed", [b"", b"\x00" * 27], ids=["empty", "shorter-than-nonce+tag"])
def test_open_sealed_rejects_truncated_input(sealed: bytes) -> None:
    """Inputs too short to hold a nonce and a tag fail with the same opaque error."""
    with pytest.raises(DecryptionError, match="failed to decrypt"):
        open_sealed(AEAD_KEY, sealed, b"ad")


def test_chacha20_keystream_rfc8439_section_2_4_2() -> None:
    """Keystream from counter 1 XOR the plaintext gives the RFC 8439 §2.4.2 ciphertext.

    This pins the nonce layout: `cryptography` takes a 16-byte nonce made of the 4-byte
    little-endian block counter followed by the 12-byte RFC nonce.
    """
    stream = chacha20_keystream(CHACHA_KEY, length=len(SUNSCREEN), nonce=CHACHA_NONCE, counter=1)
    assert bytes(a ^ b for a, b in zip(stream, SUNSCREEN, strict=True)) == CHACHA_CIPHERTEXT


def test_chacha20_keystream_wrong_counter_does_not_match() -> None:
    """Starting at counter 0 instead of 1 does not reproduce the vector (must fail)."""
    stream = chacha20_keystream(CHACHA_KEY, length=len(SUNSCREEN), nonce=CHACHA_NONCE, counter=0)
    assert bytes(a ^ b for a, b in zip(stream, SUNSCREEN, strict=True)) != CHACHA_CIPHERTEXT


@pytest.mark.parametrize("bits", [32, 64])
def test_mask_words_are_the_little_endian_keystream(bits: int) -> None:
    """Mask words are the ChaCha20 keystream (zero nonce) read as little-endian words."""
    key = b"\x42" * 32
    words = mask_words(key, 37, bits)
    stream = chacha20_keystream(key, length=37 * bits // 8)
    assert words.tobytes() == np.frombuffer(stream, dtype=f"<u{bits // 8}").tobytes()


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_apply_mask_add_then_subtract_is_identity(dtype: type[np.unsignedinteger]) -> None:
    """Adding and then subtracting one mask restores the vector exactly (mod 2^bits)."""
    rng = np.random.default_rng(1)
    original = rng.integers(0, np.iinfo(dtype).max, size=1001, dtype=dtype, endpoint=True)
    vector = original.copy()
    apply_mask(vector, b"\x01" * 32)
    assert not np.array_equal(vector, original)
    apply_mask(vector, b"\x01" * 32, negate=True)
    np.testing.assert_array_equal(vector, original)


def test_ed25519_sign_and_verify() -> None:
    """A signature verifies under the signer's key with the same domain and payload."""
    key = Ed25519PrivateKey.generate()
    signature = sign(key, b"domain", b"payload")
    verify_signature(key.public_key(), signature, b"domain", b"payload", signer="org-a")


@pytest.mark.parametrize(
    ("domain", "payload", "other_key"),
    [
        (b"other-domain", b"payload", False),
        (b"domain", b"payloae", False),
        (b"domain", b"payload", True),
    ],
    ids=["domain", "payload", "key"],
)
def test_ed25519_rejects_wrong_domain_payload_or_key(
    domain: bytes, payload: bytes, other_key: bool
) -> None:
    """A signature checked under another domain, payload or key is a ForgedMessageError."""
    key = Ed25519PrivateKey.generate()
    signature = sign(key, b"domain", b"payload")
    public = Ed25519PrivateKey.generate().public_key() if other_key else key.public_key()
    with pytest.raises(ForgedMessageError, match="org-a"):
        verify_signature(public, signature, domain, payload, signer="org-a")
